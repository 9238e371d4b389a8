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
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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
# " at 0x7f..." in an object's repr: it changes with every retry, the problem does not.
_ADDRESS_IN_MEMORY = re.compile(r" at 0x[0-9a-f]+")


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
    events: int = 0  # object events told to the registry
    lists: int = 0
    relists: int = 0  # lists after 410 Gone
    watches: int = 0
    failures: int = 0  # lists or watches that failed (a watch broken off too)
    # When the API server was last heard from (a list, a watch batch or bookmark), on
    # time.monotonic(); 0 before the first list.
    heard_at: float = 0.0
    problem: str = ""

    def describe(self) -> str:
        return f"{self.resource} ({self.namespace or 'all namespaces'})"


# A watch that ends this soon with nothing in it is treated as a failure (backoff),
# as client-go does: a server or proxy that closes every watch at once must not
# get a tight loop of requests.
_SHORT_WATCH_SECONDS = 1.0


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
        # On this thread: the last resourceVersion told to the registry ("" = list
        # next), and whether a first list has been posted.
        self._version = ""
        self._listed = False
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
            if self._response is not None:
                # Unblocks the thread's read of a watch now, not at its read timeout.
                # The stream may end (and its connection go back to the pool) at the
                # same moment; then there is nothing left to unblock.
                with contextlib.suppress(Exception):
                    self._response.shutdown()

    def join(self, timeout: float) -> None:
        self._thread.join(max(timeout, 0.0))

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # --- the thread -------------------------------------------------------------

    def _run(self) -> None:
        failures = Backoff(self._options.backoff)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if not self._version:
                    self._list()
                    failures.attempt = 0
                if self._watch(failures):
                    continue  # ended by the server after a while: watch again at once
                delay = failures.next_delay(0.0, random.random())
            except Gone as exc:
                if self._stop.is_set():
                    return
                log.info(
                    "kubernetes: %s: resourceVersion %s is gone (%s); listing again",
                    self.status.describe(),
                    self._version or "of the list",
                    str(exc)[:_MESSAGE_CHARS],
                )
                self.status.relists += 1
                self._version = ""
                continue
            except _StreamBroken as exc:
                log.debug("kubernetes: %s: watch broke off (%s)", self.status.describe(), exc)
                self.status.failures += 1
                delay = failures.next_delay(time.monotonic() - started, random.random())
            except Exception as exc:
                if self._stop.is_set():
                    return
                self.status.failures += 1
                self._report(self, describe_failure(exc, self._client.server))
                delay = failures.next_delay(0.0, random.random())
            self._stop.wait(delay)

    def _list(self) -> None:
        """A complete list, page by page; posts its differences."""
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
        self._version = version
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

    def _watch(self, failures: Backoff) -> bool:
        """One watch from the last version told, until it ends; False when it ended at
        once with nothing in it (back off before the next). Every batch read is posted,
        and its version kept, before anything that goes wrong after it is raised."""
        options = self._options
        timeout = random.randint(options.min_watch_seconds, 2 * options.min_watch_seconds - 1)
        started = time.monotonic()
        try:
            response = self.resource.call(
                self._client.api,
                self.namespace,
                watch=True,
                resource_version=self._version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                _request_timeout=(options.connect_timeout, options.read_timeout),
            )
        except k8s.ApiException as exc:
            if exc.status == 410:
                raise Gone(exc.reason or "410") from None
            raise
        with self._lock:
            self._response = response
            if self._stop.is_set():  # stopped while the request was on its way
                response.release_conn()
                self._response = None
                return True
        self.status.watches += 1
        failures.attempt = 0
        self._report(self, "")
        seen = False
        try:
            for lines in _batches(response):
                seen = True
                events: list[ObjectEvent] = []
                version = self._version
                try:
                    for line in lines:
                        step = self._store.watch_event(json.loads(line), version)
                        version = step.resource_version
                        events += step.events
                finally:
                    # What the store took in is told, whatever a later line says.
                    self._version = version
                    self._post(self, Step(tuple(events), version), False)
        except (Gone, WatchFailed):
            raise
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise _StreamBroken(str(exc)) from None
        finally:
            with self._lock:
                self._response = None
            response.release_conn()
        return seen or time.monotonic() - started >= _SHORT_WATCH_SECONDS


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


def describe_failure(exc: Exception, server: str) -> str:
    """What went wrong, in words that stay the same from one retry to the next."""
    if isinstance(exc, k8s.ApiException):
        message = exc.reason or ""
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(exc.body or "{}").get("message") or message
        return f"HTTP {exc.status}: {message}"[:_MESSAGE_CHARS]
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, urllib3.exceptions.SSLError):
        text = f"TLS with {server} failed: {exc}"
    elif isinstance(exc, urllib3.exceptions.NewConnectionError):
        text = f"cannot reach {server}: {str(exc).split(': ', 1)[-1]}"
    elif isinstance(exc, urllib3.exceptions.TimeoutError):
        # Its arguments are the connection (with its address in memory) and the words.
        words = [a for a in exc.args if isinstance(a, str)]
        text = f"cannot reach {server}: {words[-1] if words else 'timed out'}"
    elif isinstance(exc, OSError):
        text = f"cannot reach {server}: {exc.strerror or exc}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return _ADDRESS_IN_MEMORY.sub("", text)[:_MESSAGE_CHARS]


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
        # A thread still in a request (a list, a connect) is a daemon and tells nothing
        # once stopped: waiting for it is a courtesy, bounded as a whole.
        deadline = time.monotonic() + 2.0
        for reflector in self._reflectors:
            reflector.join(deadline - time.monotonic())

    # Called on reflector threads: hand over to the loop, unless stopped (the loop
    # may be closing or closed by then).

    def _call_soon(self, reflector: _Reflector, callback: Callable[..., None], *args: Any) -> None:
        if reflector.stopped or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed just now
            self._loop.call_soon_threadsafe(callback, reflector, *args)

    def _post(self, reflector: _Reflector, step: Step, first: bool) -> None:
        self._call_soon(reflector, self._on_step, step, first)

    def _report(self, reflector: _Reflector, problem: str) -> None:
        self._call_soon(reflector, self._on_problem, problem)

    # On the loop.

    def _on_step(self, reflector: _Reflector, step: Step, first: bool) -> None:
        status = reflector.status
        status.resource_version = step.resource_version
        status.objects = reflector.object_count()
        status.heard_at = time.monotonic()
        if step.events:
            status.events += len(step.events)
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
