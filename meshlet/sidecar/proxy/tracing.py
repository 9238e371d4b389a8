"""A span per proxied HTTP request, when traces are sent somewhere (W3C trace context).

Off unless an OTLP endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT, or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) and OTEL_TRACES_EXPORTER is not `none`: then
the handlers hold no tracer, a request's `traceparent` passes on untouched, and
nothing is done per request. On, each request gets a client span, the child of
its `traceparent` (a new trace without one), and the header is rewritten to name
the proxy's span as the endpoint's parent, as Envoy does. Sampling follows the
incoming flag; a request without one is sampled at OTEL_TRACES_SAMPLER's rate
(the SDK reads it; by default here 1%, Istio's and Envoy's default).
"""

from __future__ import annotations

import logging
import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from meshlet import otlp_protos

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_RATIO = 0.01
TRACEPARENT = b"traceparent"


def tracing_enabled() -> bool:
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


class RequestTracer:
    """Starts and ends the spans of proxied requests."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("meshlet.proxy")
        self._propagator = TraceContextTextMapPropagator()

    def start(self, method: bytes, authority: bytes, path: bytes, traceparent: bytes) -> Span:
        """The request's span, a child of its `traceparent` when it came with one."""
        context = None
        if traceparent:
            context = self._propagator.extract({"traceparent": traceparent.decode("latin-1")})
        name = method.decode("latin-1")
        attributes = {
            "http.request.method": name,
            "server.address": authority.decode("latin-1"),
            "url.path": path.decode("latin-1").split("?", 1)[0],
        }
        return self._tracer.start_span(
            name, context=context, kind=SpanKind.CLIENT, attributes=attributes
        )

    def traceparent(self, span: Span) -> bytes:
        """What the endpoint is sent: the proxy's span as its parent."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        return carrier.get("traceparent", "").encode()

    @staticmethod
    def end(span: Span, status: int, cluster: str, endpoint: str) -> None:
        """`status` 0: the client went before an answer."""
        if span.is_recording():
            span.set_attribute("meshlet.cluster", cluster)
            if endpoint:
                span.set_attribute("server.endpoint", endpoint)
            if status:
                span.set_attribute("http.response.status_code", status)
            if status >= 500 or not status:
                span.set_status(Status(StatusCode.ERROR))
        span.end()

    def shutdown(self) -> None:
        self.provider.shutdown()


def tracer_from_env(service_name: str) -> RequestTracer | None:
    """The tracer the environment asks for; None when traces go nowhere."""
    if not tracing_enabled():
        return None
    otlp_protos.make_importable()
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except (ImportError, AttributeError) as exc:
        log.error("tracing is off: %s; repair the install: %s", exc, otlp_protos.FIX)
        return None
    sampler = None
    if not os.environ.get("OTEL_TRACES_SAMPLER"):
        sampler = ParentBased(TraceIdRatioBased(DEFAULT_SAMPLE_RATIO))
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}), sampler=sampler
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return RequestTracer(provider)
