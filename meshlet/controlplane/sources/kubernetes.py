"""The Kubernetes source: Services and EndpointSlices listed and watched, as informers do.

One reflector per kind (and per namespace with `--watch-namespace`), each on a
thread of its own with the `kubernetes` client, so a slow API server or a big
list never blocks the event loop. What they read goes through `ReflectorStore`
(pure) and reaches the registry on the loop:

- list, paged; then watch from the list's resourceVersion, with bookmarks, a
  server-side timeout and a client read timeout (a dead connection is noticed);
- a watch that ends or breaks resumes from the last resourceVersion; 410 Gone
  lists again, and only real differences reach the registry;
- a failing request (API server unreachable, RBAC refusing) is retried with
  backoff and jitter; it is logged once per change of state and is a source
  problem until it works again, while the last good state keeps being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client as k8s

from meshlet.backoff import Backoff, BackoffPolicy
from meshlet.controlplane.sources.base import Kind, ObjectEvent, Sink
from meshlet.controlplane.sources.kube_client import KubeClient
from meshlet.controlplane.sources.reflector import Gone, ReflectorStore, Step, WatchFailed

log = logging.getLogger(__name__)

SOURCE = "kubernetes"
# Longest message kept of an API error: its body may be anything.
_MESSAGE_CHARS = 300


_BACKOFF = BackoffPolicy(base_seconds=0.5, cap_seconds=30.0, reset_after_seconds=10.0)


@dataclass(frozen=True)
class WatchOptions:
    page_size: int = 500
    # The server ends each watch after a random time in [min, 2 * min), as client-go.
    min_watch_seconds: int = 300
    # No byte (not even a bookmark) for this long: the connection is dead; resume.
    read_timeout: float = 90.0
    connect_timeout: float = 10.0
    backoff: BackoffPolicy = _BACKOFF


@dataclass(frozen=True)
class _Resource:
    kind: Kind
    plural: str

    def call(self, api: k8s.ApiClient, namespace: str | None, **params: Any) -> Any:
        """The raw HTTP response of a list or watch (no model objects are built)."""
        params.update(_preload_content=False)
        if self.kind is Kind.SERVICE:
            core = k8s.CoreV1Api(api)
            if namespace is None:
                return core.list_service_for_all_namespaces(**params)
            return core.list_namespaced_service(namespace, **params)
        discovery = k8s.DiscoveryV1Api(api)
        if namespace is None:
            return discovery.list_endpoint_slice_for_all_namespaces(**params)
        return discovery.list_namespaced_endpoint_slice(namespace, **params)


RESOURCES = (_Resource(Kind.SERVICE, "services"), _Resource(Kind.ENDPOINT_SLICE, "endpointslices"))

# All the RBAC the source needs (least privilege): read what it watches, nothing more.
RBAC_RULES = (
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": ["discovery.k8s.io"],
        "resources": ["endpointslices"],
        "verbs": ["get", "list", "watch"],
    },
)


class _StreamBroken(Exception):
    """A watch that had started broke off: resume, it is not a problem yet."""


@dataclass
class ReflectorStatus:
    resource: str
    namespace: str  # "" for all
    synced: bool = False
    resource_version: str = ""
    objects: int = 0
    lists: int = 0
    relists: int = 0  # lists after 410 Gone
    watches: int = 0
    problem: str = ""
    last_sync: float = field(default=0.0, repr=False)  # monotonic

    def describe(self) -> str:
        return f"{self.resource} ({self.namespace or 'all namespaces'})"


class _Reflector:
    def __init__(
        self,
        resource: _Resource,
        namespace: str | None,
        client: KubeClient,
        options: WatchOptions,
        post: Callable[[_Reflector, Step, bool], None],
        report: Callable[[_Reflector, str], None],
    ) -> None:
        self.resource = resource
        self.namespace = namespace
        self.status = ReflectorStatus(resource.plural, namespace or "")
        self._client = client
        self._options = options
        self._post = post
        self._report = report
        self._store = ReflectorStore(resource.kind)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None
        self._listed = False  # on this thread: has a first list been posted?
        self._thread = threading.Thread(
            target=self._run, name=f"kube-{resource.plural}-{namespace or 'all'}", daemon=True
        )

    def object_count(self) -> int:
        return len(self._store)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            response = self._response
        if response is not None:
            # Unblocks the thread's read of a watch now, not at its read timeout.
            shutdown = getattr(response, "shutdown", response.close)
            shutdown()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # --- the thread -------------------------------------------------------------

    def _run(self) -> None:
        failures = Backoff(self._options.backoff)
        resource_version = ""
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if not resource_version:
                    resource_version = self._list()
                resource_version = self._watch(resource_version)
                continue
            except Gone as exc:
                if self._stop.is_set():
                    return
                log.info(
                    "kubernetes: %s: resourceVersion %s is gone (%s); listing again",
                    self.status.describe(),
                    resource_version or "of the list",
                    str(exc)[:_MESSAGE_CHARS],
                )
                self.status.relists += 1
                resource_version = ""
                continue
            except _StreamBroken as exc:
                log.debug("kubernetes: %s: watch broke off (%s)", self.status.describe(), exc)
            except Exception as exc:
                if self._stop.is_set():
                    return
                self._report(self, _describe(exc, self._client.server))
            delay = failures.next_delay(time.monotonic() - started, random.random())
            self._stop.wait(delay)

    def _list(self) -> str:
        """A complete list, page by page; posts its differences and returns its version."""
        items: list[Any] = []
        token = ""
        while True:
            params: dict[str, Any] = {
                "limit": self._options.page_size,
                "_request_timeout": (
                    self._options.connect_timeout,
                    self._options.read_timeout,
                ),
            }
            if token:
                params["_continue"] = token
            try:
                response = self.resource.call(self._client.api, self.namespace, **params)
            except k8s.ApiException as exc:
                if exc.status == 410 and token:
                    # The continue token expired mid-list: start the list over.
                    items, token = [], ""
                    continue
                raise
            body = json.loads(response.data)
            response.release_conn()
            items += body.get("items") or []
            meta = body.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                break
        version = str(meta.get("resourceVersion", ""))
        step = self._store.replace(items, version)
        self.status.lists += 1
        first, self._listed = not self._listed, True
        self._report(self, "")
        self._post(self, step, first)
        if first:
            log.info(
                "kubernetes: listed %d %s at resourceVersion %s",
                len(items),
                self.status.describe(),
                version,
            )
        elif step.events:
            log.info(
                "kubernetes: %s listed again: %d changed", self.status.describe(), len(step.events)
            )
        return version

    def _watch(self, resource_version: str) -> str:
        """One watch until the server ends it; returns the last resourceVersion seen."""
        options = self._options
        timeout = random.randint(options.min_watch_seconds, 2 * options.min_watch_seconds - 1)
        response = self.resource.call(
            self._client.api,
            self.namespace,
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=(options.connect_timeout, options.read_timeout),
        )
        self.status.watches += 1
        self._report(self, "")
        with self._lock:
            self._response = response
        try:
            for lines in _batches(response):
                events: list[ObjectEvent] = []
                for line in lines:
                    step = self._store.watch_event(json.loads(line), resource_version)
                    resource_version = step.resource_version
                    events += step.events
                self._post(self, Step(tuple(events), resource_version), False)
        except (Gone, WatchFailed):
            raise
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise _StreamBroken(str(exc)) from None
        finally:
            with self._lock:
                self._response = None
            response.release_conn()
        return resource_version


def _batches(response: Any) -> Iterator[list[bytes]]:
    """The watch's lines, a chunk's worth at a time (one post per chunk, not per line)."""
    buffer = b""
    for chunk in response.stream(1 << 16, decode_content=True):
        buffer += chunk
        if b"\n" not in buffer:
            continue
        *lines, buffer = buffer.split(b"\n")
        batch = [line for line in lines if line.strip()]
        if batch:
            yield batch


def _describe(exc: Exception, server: str) -> str:
    if isinstance(exc, k8s.ApiException):
        message = exc.reason or ""
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(exc.body or "{}").get("message") or message
        return f"HTTP {exc.status}: {message}"[:_MESSAGE_CHARS]
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, urllib3.exceptions.SSLError):
        return f"TLS with {server} failed: {exc}"[:_MESSAGE_CHARS]
    if isinstance(exc, urllib3.exceptions.NewConnectionError | OSError):
        text = str(exc).split(": ", 1)[-1]
        return f"cannot reach {server}: {text}"[:_MESSAGE_CHARS]
    return f"{type(exc).__name__}: {exc}"[:_MESSAGE_CHARS]


class KubernetesSource:
    """Every reflector of the watch, reporting to one sink on the event loop."""

    def __init__(
        self,
        client: KubeClient,
        sink: Sink,
        namespaces: Sequence[str] = (),
        options: WatchOptions | None = None,
    ) -> None:
        self.client = client
        self._sink = sink
        self._options = options or WatchOptions()
        self._namespaces: tuple[str | None, ...] = tuple(dict.fromkeys(namespaces)) or (None,)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reflectors: list[_Reflector] = []
        self._unsynced = 0

    def status(self) -> list[ReflectorStatus]:
        return [r.status for r in self._reflectors]

    async def run(self) -> None:
        """List and watch until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._reflectors = [
            _Reflector(resource, ns, self.client, self._options, self._post, self._report)
            for resource in RESOURCES
            for ns in self._namespaces
        ]
        self._unsynced = len(self._reflectors)
        log.info(
            "kubernetes: watching %s in %s at %s (%s)",
            " and ".join(r.plural for r in RESOURCES),
            ", ".join(ns for ns in self._namespaces if ns) or "all namespaces",
            self.client.server,
            self.client.origin,
        )
        for reflector in self._reflectors:
            reflector.start()
        try:
            await asyncio.Event().wait()
        finally:
            for reflector in self._reflectors:
                reflector.stop()
            await asyncio.to_thread(self._join)

    def _join(self) -> None:
        for reflector in self._reflectors:
            reflector.join(timeout=2.0)

    # Called on reflector threads: hand over to the loop.

    def _post(self, reflector: _Reflector, step: Step, first: bool) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_step, reflector, step, first)

    def _report(self, reflector: _Reflector, problem: str) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_problem, reflector, problem)

    # On the loop.

    def _on_step(self, reflector: _Reflector, step: Step, first: bool) -> None:
        status = reflector.status
        status.resource_version = step.resource_version
        status.objects = reflector.object_count()
        status.last_sync = time.monotonic()
        if step.events:
            self._sink.apply(step.events)
        if first:
            status.synced = True
            self._unsynced -= 1
            if self._unsynced == 0:
                log.info("kubernetes: first complete list of every resource: serving")
                self._sink.synced()

    def _on_problem(self, reflector: _Reflector, problem: str) -> None:
        status = reflector.status
        if problem == status.problem:
            return
        # A new problem is logged where every problem is (the control plane's report).
        if not problem:
            log.info("kubernetes: %s: working again", status.describe())
        status.problem = problem
        self._sink.source_problems(
            SOURCE,  # retried with backoff meanwhile
            [
                f"kubernetes: {r.status.describe()}: {r.status.problem}"
                for r in self._reflectors
                if r.status.problem
            ],
        )
