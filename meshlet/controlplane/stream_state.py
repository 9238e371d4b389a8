"""What one ADS stream has asked for and been sent, per type: shared by SotW and delta.

Pure: requests and snapshots in, response bytes out. The gRPC servicer is a thin
loop around these (see server.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest

from meshlet.controlplane.cache import Resource, Snapshot
from meshlet.controlplane.interests import Interest
from meshlet.xds import types
from meshlet.xds.error_detail import bounded, quoted

WILDCARD = "*"
# Subscribed names a stream's status lists (it counts them all).
MAX_NAMES_SHOWN = 100


@dataclass(frozen=True)
class Push:
    """One response to write, and what it carries (for metrics and status)."""

    type_url: str
    payload: bytes
    built_at: float
    # Names of the resources this response added or changed.
    updated: tuple[str, ...] = ()


@dataclass
class TypeWatch:
    wildcard: bool = False
    # The client never named a resource: an empty list still means "everything"
    # (the legacy wildcard of the xDS protocol).
    legacy_wildcard: bool = True
    names: set[str] = field(default_factory=set)
    # Name -> version the client has (or was last sent, if it NACKed).
    known: dict[str, str] = field(default_factory=dict)
    nonce: str = ""  # of the last response sent; empty before the first
    # The nonce the client last answered, and whether that answer was a NACK: the
    # latest response is answered when the two nonces are equal.
    nonce_answered: str = ""
    last_answer_nack: bool = False
    version_sent: str = ""
    version_acked: str = ""
    version_nacked: str = ""
    last_nack: str = ""
    nacks: int = 0
    # Subscription steps not yet told to the cache's index of interests.
    steps: list[tuple[bool | None, frozenset[str], frozenset[str]]] = field(default_factory=list)

    def subscribe(self, wildcard: bool, added: Iterable[str], removed: Iterable[str]) -> None:
        """The wildcard now, names added and removed; the step is kept for the index."""
        came = frozenset(n for n in added if n not in self.names)
        went = frozenset(n for n in removed if n in self.names)
        turned = wildcard if wildcard != self.wildcard else None
        if turned is not None or came or went:
            self.steps.append((turned, came, went))
        self.wildcard = wildcard
        self.names |= came
        self.names -= went

    @property
    def responded(self) -> bool:
        return bool(self.nonce)

    def wants(self, resource: Resource) -> bool:
        return (self.wildcard and not resource.on_demand) or resource.name in self.names

    def names_behind(self, resources: Mapping[str, Resource]) -> int:
        """Subscribed names whose resource, as served in `resources`, this client was not
        sent yet (or whose removal it was not told): what a push still owes a named
        subscription. Costs a look-up per subscribed name."""
        behind = 0
        for name in self.names:
            served = resources.get(name)
            if (served.version if served is not None else None) != self.known.get(name):
                behind += 1
        return behind

    @property
    def last_answer(self) -> str:
        """How the client last answered: "ack", "nack", or "" before it has."""
        if not self.nonce_answered:
            return ""
        return "nack" if self.last_answer_nack else "ack"

    def status(self) -> dict[str, object]:
        # A client chooses the names it subscribes to and the versions it ACKs: shown
        # short, and at most MAX_NAMES_SHOWN names (with the count of all).
        names = sorted(self.names)
        return {
            "wildcard": self.wildcard,
            "subscribed": [quoted(n) for n in names[:MAX_NAMES_SHOWN]],
            "subscribed_count": len(names),
            "resources": len(self.known),
            "nonce_sent": self.nonce,
            "nonce_answered": self.nonce_answered,
            "last_answer": self.last_answer,
            "version_sent": self.version_sent,
            "version_acked": quoted(self.version_acked),
            "version_nacked": self.version_nacked,
            "last_nack": self.last_nack,
            "nacks": self.nacks,
        }


class StreamState:
    """Per-stream bookkeeping common to both protocol variants."""

    def __init__(self) -> None:
        self.node_id = ""
        self.node_cluster = ""
        self.watches: dict[str, TypeWatch] = {}
        self.generation = 0  # the snapshot generation this stream has caught up with
        self._nonce = 0
        # Requests for a type this server never serves: counted, not watched (a
        # client chooses type URLs, so a watch each would grow without bound).
        self.unknown_type_requests = 0

    def note_node(self, node_id: str, cluster: str) -> None:
        # Only the first request must carry the node; later ones may leave it out.
        if node_id:
            self.node_id, self.node_cluster = quoted(node_id), quoted(cluster)

    def serves(self, type_url: str) -> bool:
        """Whether this server has resources of `type_url`; counts the requests for others."""
        if type_url in types.PUSH_ORDER:
            return True
        self.unknown_type_requests += 1
        return False

    def interest(self) -> list[Interest]:
        """Subscription steps since the last call, for the cache's index."""
        out = []
        for type_url, watch in self.watches.items():
            out += [Interest(type_url, *step) for step in watch.steps]
            watch.steps.clear()
        return out

    def next_nonce(self) -> str:
        self._nonce += 1
        return str(self._nonce)

    def watch_for(self, type_url: str) -> tuple[TypeWatch, bool]:
        """The type's watch, and whether this request is the type's first."""
        watch = self.watches.get(type_url)
        if watch is None:
            watch = self.watches[type_url] = TypeWatch()
            return watch, True
        return watch, False

    def record_ack(self, watch: TypeWatch, version: str, error: str | None) -> bool:
        """Records an ACK or NACK of the latest response; returns True for a NACK."""
        watch.nonce_answered = watch.nonce
        watch.last_answer_nack = error is not None
        if error is not None:
            watch.version_nacked = watch.version_sent
            watch.last_nack = error
            watch.nacks += 1
            return True
        watch.version_acked = version or watch.version_sent
        return False

    def on_snapshot(self, snapshot: Snapshot) -> list[Push]:
        """Everything a new snapshot means for this client, in make-before-break order."""
        if snapshot.generation <= self.generation:
            return []
        pushes = []
        rewarm: tuple[str, ...] = ()
        for type_url in push_order(self.watches):
            watch = self.watches[type_url]
            changed = self.changed_names(snapshot, type_url)
            if type_url == types.ENDPOINT and rewarm:
                # Envoy replaces a changed cluster and holds it warming until its
                # endpoints arrive again, even when they did not change.
                for name in rewarm:
                    watch.known.pop(name, None)
                if changed is not None:
                    changed = changed | frozenset(rewarm)
            push = self.compute(type_url, watch, snapshot, changed)
            if push:
                pushes.append(push)
                if type_url == types.CLUSTER:
                    rewarm = push.updated
        self.generation = snapshot.generation
        return pushes

    def compute(
        self,
        type_url: str,
        watch: TypeWatch,
        snapshot: Snapshot,
        changed: frozenset[str] | None,
    ) -> Push | None:
        """The response that brings the client up to date for one type, if any."""
        raise NotImplementedError

    def changed_names(self, snapshot: Snapshot, type_url: str) -> frozenset[str] | None:
        """Names that changed since this stream caught up, or None when it must look at all."""
        return snapshot.changed_since(self.generation, type_url)

    def status(self, snapshot: Snapshot | None = None) -> dict[str, object]:
        """With `snapshot` (the one served now), each named subscription also says how
        many of its names a push still owes it (`names_behind`)."""
        watches = {}
        for type_url, watch in sorted(self.watches.items()):
            shown = watch.status()
            if snapshot is not None and not watch.wildcard:
                shown["names_behind"] = watch.names_behind(snapshot.of_type(type_url))
            watches[types.short_name(type_url)] = shown
        return {
            "node": self.node_id,
            "cluster": self.node_cluster,
            # The snapshot this stream has caught up with: every push it meant is computed.
            "generation": self.generation,
            "types": watches,
            "unknown_type_requests": self.unknown_type_requests,
        }


def error_message(request: DiscoveryRequest | DeltaDiscoveryRequest) -> str | None:
    """The NACK text of a request's error_detail, or None when it is an ACK."""
    if not request.HasField("error_detail"):
        return None
    detail = request.error_detail
    # Any client can send any text: what is kept and shown of it is bounded.
    return bounded(detail.message) or f"rejected with code {detail.code} and no message"


_RANK = {t: i for i, t in enumerate(types.PUSH_ORDER)}


def push_order(type_urls: Iterable[str]) -> list[str]:
    """Make before break: clusters and endpoints, then listeners, then names."""
    return sorted(type_urls, key=lambda t: (_RANK.get(t, len(_RANK)), t))
