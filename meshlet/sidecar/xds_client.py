"""The sidecar's ADS client: delta (default) or state-of-the-world xDS over grpc.aio.

One stream at a time. Every response goes through `validate.apply_update`:
accepted, it becomes a new SidecarState handed to `on_state` and is ACKed;
rejected, it is NACKed with the ValidationError's message and the last good
state stays. When the stream breaks the client keeps that state, waits
(exponential backoff, full jitter) and opens a new stream that resumes from what
it holds: delta sends `initial_resource_versions`, SotW the last accepted
`version_info` of every type.

Subscriptions: Clusters, Listeners and NameTables by wildcard; by name, the
ClusterLoadAssignments of the EDS clusters it holds and the RouteConfigurations
its HTTP listeners name (changed as clusters and listeners come and go).

Ready: once (and from then on) the first CDS, LDS and NameTable responses were
accepted, every EDS cluster held has had its load assignment (or word that it
has none) and every route configuration a listener names has come. A stream that
breaks later does not make the client unready: it still serves its last good
state. A sidecar restarted while the control plane is away starts from the
config an earlier run saved (`restore`): ready at once if that config is whole,
and `stale` until the control plane's first accepted response.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import grpc
from envoy.config.core.v3.base_pb2 import Locality, Node
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from google.protobuf import struct_pb2
from google.rpc.status_pb2 import Status

from meshlet.backoff import Backoff, BackoffPolicy
from meshlet.memory import release_freed_memory
from meshlet.sidecar.state import SidecarState
from meshlet.sidecar.validate import Received, Update, ValidationError, apply_update
from meshlet.sidecar.xds_outage import OutageLog
from meshlet.xds import types
from meshlet.xds.error_detail import bounded, quoted

log = logging.getLogger(__name__)

XdsProtocol = Literal["delta", "sotw"]

INVALID_ARGUMENT = 3  # google.rpc.Code
WILDCARD = "*"
# The types the sidecar asks for, in the order it first asks (make before break).
SUBSCRIBED_TYPES = (types.CLUSTER, types.ENDPOINT, types.LISTENER, types.ROUTE, types.NAME_TABLE)
# The types asked for by name: a cluster's load assignment, an HTTP listener's routes.
_BY_NAME = (types.ENDPOINT, types.ROUTE)
# What the first config needs besides the load assignments of its EDS clusters.
_READY_TYPES = (types.CLUSTER, types.LISTENER, types.NAME_TABLE)
# Resources in a response after which freed memory is handed back (release_freed_memory).
_BIG_RESPONSE = 1000


def _size(response: Any) -> int:
    """Resources a response carries or (delta) removes."""
    removed = getattr(response, "removed_resources", ())
    return len(response.resources) + len(removed)


_CHANNEL_OPTIONS = [
    # A control plane that vanished without closing the connection is noticed
    # within keepalive time + timeout (the server permits pings every 5 s).
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # The NameTable of a large mesh is one big resource.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


# --- status, for the admin page and metrics -----------------------------------


@dataclass(frozen=True)
class TypeStatus:
    """What happened to one resource type's responses."""

    accepted_version: str = ""
    rejected_version: str = ""
    last_error: str = ""
    accepted: int = 0  # responses accepted
    rejected: int = 0  # responses rejected
    last_accepted_at: float | None = None  # wall clock (time.time())
    resources: int = 0  # resources held now
    # The size of the last response (resources in it, names removed): shows
    # whether a resumed delta stream got only what changed.
    last_received: int = 0
    last_removed: int = 0


@dataclass(frozen=True)
class XdsStatus:
    address: str
    protocol: XdsProtocol
    node_id: str
    ready: bool = False
    connected: bool = False  # a stream is open and has had a response
    stream_attempts: int = 0  # streams opened, successful or not
    stream_failures: int = 0  # streams that ended or could not be opened
    streams_connected: int = 0  # streams that got at least one response
    last_stream_error: str = ""
    next_retry_seconds: float | None = None
    # Serving a config saved by an earlier run (`restored_from`, the file) that no
    # response from the control plane has confirmed yet.
    stale: bool = False
    restored_from: str = ""
    # By type URL, for every type the client subscribes to (and only those: a
    # control plane chooses type URLs, so others are only counted).
    types: Mapping[str, TypeStatus] = field(default_factory=dict)
    rejected_other_types: int = 0  # responses of a type never subscribed to

    def config_age(self, now: float) -> float | None:
        """Seconds since the last accepted update of any type (`now` from time.time())."""
        times = [t.last_accepted_at for t in self.types.values() if t.last_accepted_at]
        return now - max(times) if times else None

    def as_dict(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        out["types"] = {types.short_name(t): dataclasses.asdict(s) for t, s in self.types.items()}
        return out


def is_complete(state: SidecarState) -> bool:
    """Whether `state` is a whole first config (see the module docstring)."""
    return (
        all(t in state.type_versions for t in _READY_TYPES)
        and all(name in state.endpoints for name in _wanted(types.ENDPOINT, state))
        and all(name in state.routes for name in _wanted(types.ROUTE, state))
    )


def _wanted(type_url: str, state: SidecarState) -> list[str]:
    """The names of `type_url` (EDS or RDS) that `state` needs."""
    if type_url == types.ENDPOINT:
        return sorted(n for n, c in state.clusters.items() if not c.original_destination)
    names = {lis.http.route_config for lis in state.listeners.values() if lis.http is not None}
    return sorted(names)


def _error(message: str) -> Status:
    return Status(code=INVALID_ARGUMENT, message=message)


# --- one stream's protocol bookkeeping (no I/O) -------------------------------


class _Session(Protocol):
    def opening(self, state: SidecarState) -> list[Any]: ...
    def update_of(self, response: Any) -> Update: ...
    def ack(self, response: Any, state: SidecarState) -> Any: ...
    def nack(self, response: Any, state: SidecarState, error: str) -> Any: ...
    def resubscribe(self, state: SidecarState) -> list[Any]: ...


class DeltaSession:
    """Incremental xDS: subscriptions as changes, ACKs by nonce alone."""

    def __init__(self, node: Node) -> None:
        self._node: Node | None = node
        # By type, the names asked for on this stream; None before the first ask,
        # which must name something (a first request naming none means wildcard).
        self._named: dict[str, set[str] | None] = dict.fromkeys(_BY_NAME)

    def _request(self, type_url: str, **fields: Any) -> DeltaDiscoveryRequest:
        request = DeltaDiscoveryRequest(type_url=type_url, **fields)
        if self._node is not None:  # only the stream's first request carries it
            request.node.CopyFrom(self._node)
            self._node = None
        return request

    def _first(self, type_url: str, state: SidecarState, names: list[str]) -> DeltaDiscoveryRequest:
        held = state.accepted.get(type_url, {})
        versions = {n: r.version for n, r in held.items() if WILDCARD in names or n in names}
        return self._request(
            type_url, resource_names_subscribe=names, initial_resource_versions=versions
        )

    def opening(self, state: SidecarState) -> list[DeltaDiscoveryRequest]:
        requests = [self._first(types.CLUSTER, state, [WILDCARD])]
        requests += self._resubscribe(types.ENDPOINT, state)
        requests.append(self._first(types.LISTENER, state, [WILDCARD]))
        requests += self._resubscribe(types.ROUTE, state)
        requests.append(self._first(types.NAME_TABLE, state, [WILDCARD]))
        return requests

    def update_of(self, response: DeltaDiscoveryResponse) -> Update:
        return Update(
            type_url=response.type_url,
            version=response.system_version_info,
            resources=[Received(r.name, r.version, r.resource) for r in response.resources],
            removed=list(response.removed_resources),
        )

    def ack(self, response: DeltaDiscoveryResponse, state: SidecarState) -> DeltaDiscoveryRequest:
        return self._request(response.type_url, response_nonce=response.nonce)

    def nack(
        self, response: DeltaDiscoveryResponse, state: SidecarState, error: str
    ) -> DeltaDiscoveryRequest:
        return self._request(
            response.type_url, response_nonce=response.nonce, error_detail=_error(error)
        )

    def resubscribe(self, state: SidecarState) -> list[DeltaDiscoveryRequest]:
        return [r for t in _BY_NAME for r in self._resubscribe(t, state)]

    def _resubscribe(self, type_url: str, state: SidecarState) -> list[DeltaDiscoveryRequest]:
        wanted = _wanted(type_url, state)
        asked = self._named[type_url]
        if asked is None:
            if not wanted:
                return []
            self._named[type_url] = set(wanted)
            return [self._first(type_url, state, wanted)]
        subscribe = sorted(set(wanted) - asked)
        unsubscribe = sorted(asked - set(wanted))
        if not subscribe and not unsubscribe:
            return []
        self._named[type_url] = set(wanted)
        return [
            self._request(
                type_url,
                resource_names_subscribe=subscribe,
                resource_names_unsubscribe=unsubscribe,
            )
        ]


class SotwSession:
    """State of the world: every request restates the subscription, the version and the nonce."""

    def __init__(self, node: Node) -> None:
        self._node: Node | None = node
        self._nonces: dict[str, str] = {}
        self._named: dict[str, list[str] | None] = dict.fromkeys(_BY_NAME)

    def _names(self, type_url: str) -> list[str]:
        # CDS, LDS and NameTables: no names is the wildcard in SotW.
        return list(self._named.get(type_url) or ())

    def _request(
        self, type_url: str, state: SidecarState, error: Status | None = None
    ) -> DiscoveryRequest:
        request = DiscoveryRequest(
            type_url=type_url,
            version_info=state.type_versions.get(type_url, ""),
            resource_names=self._names(type_url),
            response_nonce=self._nonces.get(type_url, ""),
            error_detail=error,
        )
        if self._node is not None:
            request.node.CopyFrom(self._node)
            self._node = None
        return request

    def opening(self, state: SidecarState) -> list[DiscoveryRequest]:
        requests = [self._request(types.CLUSTER, state)]
        requests += self._resubscribe(types.ENDPOINT, state)
        requests.append(self._request(types.LISTENER, state))
        requests += self._resubscribe(types.ROUTE, state)
        requests.append(self._request(types.NAME_TABLE, state))
        return requests

    def update_of(self, response: DiscoveryResponse) -> Update:
        # Every later request of this type must carry this nonce, or the server
        # takes it for a stale one and ignores it. (Only types asked for get here.)
        self._nonces[response.type_url] = response.nonce
        return Update(
            type_url=response.type_url,
            version=response.version_info,
            resources=[Received(None, response.version_info, r) for r in response.resources],
            full_state=response.type_url in types.FULL_STATE_TYPES,
        )

    def ack(self, response: DiscoveryResponse, state: SidecarState) -> DiscoveryRequest:
        return self._request(response.type_url, state)

    def nack(
        self, response: DiscoveryResponse, state: SidecarState, error: str
    ) -> DiscoveryRequest:
        request = self._request(response.type_url, state, _error(error))
        request.response_nonce = response.nonce
        return request

    def resubscribe(self, state: SidecarState) -> list[DiscoveryRequest]:
        return [r for t in _BY_NAME for r in self._resubscribe(t, state)]

    def _resubscribe(self, type_url: str, state: SidecarState) -> list[DiscoveryRequest]:
        wanted = _wanted(type_url, state)
        asked = self._named[type_url]
        # The first request naming nothing would mean "everything": wait for a name.
        if wanted == asked or (asked is None and not wanted):
            return []
        self._named[type_url] = wanted
        return [self._request(type_url, state)]


# --- the client ---------------------------------------------------------------


class XdsClient:
    """The sidecar's view of the control plane.

    `run()` keeps a stream open until cancelled. `on_state` is called in the
    event loop with every newly accepted SidecarState (keep it quick: swap a
    reference). Fields an update did not touch keep their identity, so a reader
    can skip work with `new.name_tables is old.name_tables`. `status()` and
    `ready` are for the admin page and metrics.
    """

    def __init__(
        self,
        address: str,
        node_id: str,
        namespace: str,
        zone: str,
        cluster_domain: str,
        protocol: XdsProtocol,
        on_state: Callable[[SidecarState], None],
        *,
        node_cluster: str = "meshlet-sidecar",
        backoff: BackoffPolicy | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if protocol not in ("delta", "sotw"):
            raise ValueError(f"xDS protocol must be delta or sotw, not {protocol!r}")
        self._address = address
        self._protocol: XdsProtocol = protocol
        self._domain = cluster_domain.rstrip(".").lower()
        self._on_state = on_state
        self._backoff = Backoff(backoff or BackoffPolicy())
        self._outage = OutageLog()
        self._clock = clock
        self._rng = rng or random.Random()
        self._node = Node(
            id=node_id,
            cluster=node_cluster,
            locality=Locality(zone=zone),
            user_agent_name="meshlet",
            metadata=struct_pb2.Struct(
                fields={"namespace": struct_pb2.Value(string_value=namespace)}
            ),
        )
        self._state = SidecarState()
        self._status = XdsStatus(
            address, protocol, node_id, types={t: TypeStatus() for t in SUBSCRIBED_TYPES}
        )

    @property
    def state(self) -> SidecarState:
        """The last accepted state (empty before the first)."""
        return self._state

    @property
    def ready(self) -> bool:
        return self._status.ready

    def status(self) -> XdsStatus:
        return self._status

    def restore(self, state: SidecarState, origin: str) -> None:
        """Serve `state` (saved by an earlier run) until the control plane answers.

        Called before `run()`. The next stream resumes from it: delta names the
        versions held, so the control plane sends only what changed since.
        """
        self._state = state
        for type_url in SUBSCRIBED_TYPES:
            if type_url in state.type_versions:
                self._set_type(
                    type_url,
                    accepted_version=state.type_versions[type_url],
                    resources=len(state.accepted.get(type_url, {})),
                )
        self._status = dataclasses.replace(
            self._status, ready=is_complete(state), stale=True, restored_from=origin
        )
        self._on_state(state)

    # --- the pure-ish core: one response in, requests out --------------------

    def handle(self, session: _Session, response: Any) -> list[Any]:
        """Validates and applies one response; returns the requests to send back."""
        if response.type_url not in SUBSCRIBED_TYPES:
            # The control plane chooses type URLs: counted, never kept by name.
            others = self._status.rejected_other_types + 1
            self._status = dataclasses.replace(self._status, rejected_other_types=others)
            error = f"type {quoted(response.type_url)} is not one the sidecar asked for"
            log.warning("rejected a response: %s", error)
            return [session.nack(response, self._state, error)]
        update = session.update_of(response)
        try:
            state = apply_update(self._state, update, self._domain)
        except ValidationError as exc:
            return self._nack(session, response, update, str(exc))
        except Exception as exc:  # a bug here must still be a NACK, not a dropped stream
            log.exception("validating %s failed", quoted(update.type_url))
            error = f"the sidecar failed on this response ({type(exc).__name__}: {exc})"
            return self._nack(session, response, update, error)
        self._state = state
        self._accepted(update, state)
        try:
            self._on_state(state)
        except Exception:
            log.exception("on_state failed for a new xDS state; the client carries on")
        return [session.ack(response, state), *session.resubscribe(state)]

    def _nack(self, session: _Session, response: Any, update: Update, error: str) -> list[Any]:
        error = bounded(error)
        self._rejected(update, error)
        return [session.nack(response, self._state, error)]

    def _set_type(self, type_url: str, **changes: Any) -> None:
        for key in ("accepted_version", "rejected_version"):
            if key in changes:  # chosen by the control plane: kept to a readable size
                changes[key] = quoted(changes[key])
        current = self._status.types.get(type_url, TypeStatus())
        by_type = {**self._status.types, type_url: dataclasses.replace(current, **changes)}
        self._status = dataclasses.replace(self._status, types=by_type)

    def _accepted(self, update: Update, state: SidecarState) -> None:
        now = self._clock()
        # Removed clusters take their load assignments with them, listeners their routes.
        follower = {types.CLUSTER: types.ENDPOINT, types.LISTENER: types.ROUTE}.get(update.type_url)
        if follower is not None:
            self._set_type(follower, resources=len(state.accepted.get(follower, {})))
        current = self._status.types.get(update.type_url, TypeStatus())
        log.info(
            "accepted %s version %s: %d resources (%d received, %d removed)",
            types.short_name(update.type_url),
            quoted(update.version),
            len(state.accepted.get(update.type_url, {})),
            len(update.resources),
            len(update.removed),
        )
        self._set_type(
            update.type_url,
            accepted_version=update.version,
            accepted=current.accepted + 1,
            last_accepted_at=now,
            resources=len(state.accepted.get(update.type_url, {})),
            last_received=len(update.resources),
            last_removed=len(update.removed),
        )
        if self._status.stale:
            self._status = dataclasses.replace(self._status, stale=False)
            log.info("config from %s again: no longer only the saved one", self._address)
        if not self._status.ready and is_complete(state):
            self._status = dataclasses.replace(self._status, ready=True)
            log.info("first xDS config accepted from %s", self._address)

    def _rejected(self, update: Update, error: str) -> None:
        log.warning(
            "rejected %s version %s: %s", quoted(update.type_url), quoted(update.version), error
        )
        current = self._status.types.get(update.type_url, TypeStatus())
        self._set_type(
            update.type_url,
            rejected_version=update.version,
            last_error=error,
            rejected=current.rejected + 1,
            last_received=len(update.resources),
            last_removed=len(update.removed),
        )

    # --- I/O -------------------------------------------------------------------

    def _session(self) -> _Session:
        if self._protocol == "delta":
            return DeltaSession(self._node)
        return SotwSession(self._node)

    async def run(self) -> None:
        """Keeps a stream to the control plane open, reconnecting, until cancelled."""
        while True:
            started = time.monotonic()
            self._status = dataclasses.replace(
                self._status, stream_attempts=self._status.stream_attempts + 1
            )
            try:
                await self._stream()
                error = "the control plane ended the stream"
            except grpc.aio.AioRpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:  # a bug must not end the sidecar's config updates
                log.exception("xDS stream to %s failed", self._address)
                error = f"{type(exc).__name__}: {exc}"
            ended = time.monotonic()
            delay = self._backoff.next_delay(ended - started, self._rng.random())
            self._status = dataclasses.replace(
                self._status,
                connected=False,
                stream_failures=self._status.stream_failures + 1,
                last_stream_error=error,
                next_retry_seconds=delay,
            )
            # A control plane gone for good would otherwise be a WARNING every few seconds.
            verdict = self._outage.failed(ended, error)
            log.log(
                verdict.level,
                "xDS stream to %s ended after %.1fs (%s); retrying in %.2fs%s",
                self._address,
                ended - started,
                error,
                delay,
                verdict.note(),
            )
            await asyncio.sleep(delay)

    async def _stream(self) -> None:
        async with grpc.aio.insecure_channel(self._address, options=_CHANNEL_OPTIONS) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            if self._protocol == "delta":
                call = stub.DeltaAggregatedResources()
            else:
                call = stub.StreamAggregatedResources()
            try:
                session = self._session()
                for request in session.opening(self._state):
                    await call.write(request)
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        return
                    if not self._status.connected:
                        self._status = dataclasses.replace(
                            self._status,
                            connected=True,
                            streams_connected=self._status.streams_connected + 1,
                            next_retry_seconds=None,
                        )
                        again = self._status.streams_connected > 1
                        outage = self._outage.up(time.monotonic())
                        log.info(
                            "xDS stream to %s up%s (%s)%s",
                            self._address,
                            " again after a break" if again else "",
                            self._protocol,
                            "" if outage is None else outage.note(),
                        )
                    replies = self.handle(session, response)
                    big = _size(response) >= _BIG_RESPONSE
                    # Not held while the next one is awaited: a full-state response of
                    # 10,000 resources keeps megabytes of parsed protobuf alive.
                    del response
                    if big:
                        release_freed_memory()
                    for request in replies:
                        await call.write(request)
            finally:
                call.cancel()
