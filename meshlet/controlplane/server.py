"""The ADS gRPC servicer: a thin loop around the pure SotW and delta stream cores."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest

from meshlet import defaults
from meshlet.controlplane.cache import SnapshotCache
from meshlet.controlplane.delta import DeltaStream
from meshlet.controlplane.metrics import ControlPlaneMetrics
from meshlet.controlplane.sotw import SotwStream
from meshlet.controlplane.stream_state import Push
from meshlet.listen import reason_of

log = logging.getLogger(__name__)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def _passthrough(payload: bytes) -> bytes:
    # Responses are assembled from pre-serialized resources (see xds/wire.py).
    return payload


class AdsServer:
    def __init__(self, cache: SnapshotCache, metrics: ControlPlaneMetrics) -> None:
        self._cache = cache
        self._metrics = metrics
        self.streams: dict[int, SotwStream | DeltaStream] = {}

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._stream_sotw,
                    request_deserializer=DiscoveryRequest.FromString,
                    response_serializer=_passthrough,
                ),
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._stream_delta,
                    request_deserializer=DeltaDiscoveryRequest.FromString,
                    response_serializer=_passthrough,
                ),
            },
        )

    async def _stream_sotw(
        self, requests: AsyncIterator[DiscoveryRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await self._serve(SotwStream(), "sotw", requests, context)

    async def _stream_delta(
        self,
        requests: AsyncIterator[DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        await self._serve(DeltaStream(), "delta", requests, context)

    async def _serve(
        self,
        stream: SotwStream | DeltaStream,
        protocol: str,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        # Requests are handled in the task that reads them; snapshots in this one.
        # The lock keeps each stream's responses in the order they were computed.
        wake = asyncio.Event()
        write_lock = asyncio.Lock()
        closed = False
        peer = context.peer() or "an unknown peer"

        async def write(pushes: list[Push], from_change: bool) -> None:
            async with write_lock:
                for push in pushes:
                    await context.write(push.payload)
                    self._metrics.pushed(push, from_change)

        async def read() -> None:
            nonlocal closed
            try:
                async for request in requests:
                    pushes = self._on_request(stream, request, protocol, peer)
                    interests.apply(wake.set, stream.interest())
                    if pushes:
                        await write(pushes, False)
            except grpc.aio.AioRpcError:
                pass  # the client went away; the stream ends below
            finally:
                closed = True
                wake.set()

        current = self._cache.snapshot
        stream.generation = current.generation if current else 0
        interests = self._cache.interests
        reader = asyncio.create_task(read())
        self.streams[id(stream)] = stream
        self._metrics.connected(protocol, 1)
        opened = time.monotonic()
        try:
            while True:
                await wake.wait()
                wake.clear()
                if closed:
                    break
                snapshot = self._cache.snapshot
                pushes = stream.on_snapshot(snapshot) if snapshot else []
                if pushes:
                    await write(pushes, True)
            await reader  # surfaces a failure in request handling as this RPC's error
        finally:
            interests.forget(wake.set, {t: w.names for t, w in stream.watches.items()})
            reader.cancel()
            del self.streams[id(stream)]
            self._metrics.connected(protocol, -1)
            if stream.node_id:  # it said who it is: it was logged as connected
                log.info(
                    "client gone: node %r (%s) after %.0fs",
                    stream.node_id,
                    protocol,
                    time.monotonic() - opened,
                    extra={"node": stream.node_id, "protocol": protocol},
                )

    def _on_request(
        self, stream: SotwStream | DeltaStream, request: Any, protocol: str, peer: str
    ) -> list[Push]:
        known = bool(stream.node_id)
        pushes, nacked = stream.on_request(request, self._cache.snapshot)
        if not known and stream.node_id:
            log.info(
                "client connected: node %r (%s) from %s",
                stream.node_id,
                protocol,
                peer,
                extra={"node": stream.node_id, "protocol": protocol, "peer": peer},
            )
        if nacked:
            self._metrics.nacked(request.type_url)
            log.warning(
                "node %r rejected %s: %s",
                stream.node_id,
                request.type_url,
                stream.watches[request.type_url].last_nack,
            )
        return pushes

    def clients(self) -> list[dict[str, object]]:
        snapshot = self._cache.snapshot
        return [s.status(snapshot) | {"protocol": _protocol(s)} for s in self.streams.values()]


def _protocol(stream: SotwStream | DeltaStream) -> str:
    return "delta" if isinstance(stream, DeltaStream) else "sotw"


# After the GOAWAY of a connection past its age (defaults.XDS_MAX_STREAM_AGE_SECONDS),
# how long a stream may still run before it is closed.
STREAM_AGE_GRACE_SECONDS = 10.0


async def start_server(
    ads: AdsServer,
    address: str,
    max_streams: int = 100_000,
    max_stream_age: float = defaults.XDS_MAX_STREAM_AGE_SECONDS,
) -> tuple[grpc.aio.Server, int]:
    """Starts the gRPC server; returns it and the port it bound (for address ...:0).
    `max_stream_age` 0: a connection lives as long as its client keeps it."""
    options: list[tuple[str, int]] = [
        ("grpc.max_concurrent_streams", max_streams),
        # Sidecars keep their stream open for days; let them keep it alive.
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.so_reuseport", 0),
    ]
    if max_stream_age > 0:
        options += [
            ("grpc.max_connection_age_ms", int(max_stream_age * 1000)),
            ("grpc.max_connection_age_grace_ms", int(STREAM_AGE_GRACE_SECONDS * 1000)),
        ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers([ads.handler()])
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(
            f"cannot listen for xDS on {address}: {_why_not_bound(address, exc)}"
        ) from None
    if port == 0:
        raise OSError(f"cannot listen for xDS on {address}")
    await server.start()
    return server, port


def _why_not_bound(address: str, exc: RuntimeError) -> str:
    """grpcio says only that it failed to bind: binding HOST:PORT here says why (taken,
    not an address of this host), or grpcio's words when that works."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, int(port)))
    except OSError as error:
        return reason_of(error)
    except ValueError:
        pass
    return str(exc)
