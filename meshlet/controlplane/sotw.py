"""State-of-the-world ADS for one stream (pure).

LDS and CDS responses carry every subscribed resource (one left out is deleted);
other types carry only what changed. A request whose nonce is not the latest
is stale and ignored, as the protocol says.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest

from meshlet.controlplane.cache import Resource, Snapshot
from meshlet.controlplane.stream_state import (
    WILDCARD,
    Push,
    StreamState,
    TypeWatch,
    error_message,
)
from meshlet.xds import types, wire


class SotwStream(StreamState):
    def on_request(
        self, request: DiscoveryRequest, snapshot: Snapshot | None
    ) -> tuple[list[Push], bool]:
        """Handles one request; returns the responses to write and whether it was a NACK."""
        self.note_node(request.node.id, request.node.cluster)
        type_url = request.type_url
        if not self.serves(type_url):
            return [], False
        watch, first = self.watch_for(type_url)
        nack = False
        if request.response_nonce and watch.nonce:
            # Stale: a newer response is on its way. (A nonce before we sent any is
            # left over from an earlier stream and ignored.)
            if request.response_nonce != watch.nonce:
                return [], False
            nack = self.record_ack(watch, request.version_info, error_message(request))
        moved = self._subscribe(watch, request.resource_names, type_url)
        if snapshot is None or not (first or moved):
            return [], nack  # a plain ACK: the snapshot watch covers what comes next
        push = self.compute(type_url, watch, snapshot, None)
        return ([push] if push else []), nack

    @staticmethod
    def _subscribe(watch: TypeWatch, resource_names: Iterable[str], type_url: str) -> bool:
        """Applies the request's subscription; returns whether it changed anything."""
        names = {sys.intern(n) for n in resource_names}
        explicit = names - {WILDCARD}
        wildcard = WILDCARD in names or (not names and watch.legacy_wildcard)
        if wildcard == watch.wildcard and explicit == watch.names:
            return False
        if names:  # once the client names anything, even "*", [] no longer means all
            watch.legacy_wildcard = False
        if not wildcard and type_url not in types.FULL_STATE_TYPES:
            # Forget what the client dropped, so asking again sends it again. (A
            # full-state type compares the whole set instead, removals included.)
            for dropped in watch.known.keys() - explicit:
                del watch.known[dropped]
        watch.subscribe(wildcard, explicit - watch.names, watch.names - explicit)
        return True

    def compute(
        self,
        type_url: str,
        watch: TypeWatch,
        snapshot: Snapshot,
        changed: frozenset[str] | None,
    ) -> Push | None:
        resources = snapshot.of_type(type_url)
        if type_url in types.FULL_STATE_TYPES:
            picked = self._full_state(watch, resources, changed)
        else:
            picked = self._changed_only(watch, resources, changed)
        if picked is None:
            return None
        chosen, updated = picked
        version = snapshot.type_versions.get(type_url, "")
        watch.nonce = self.next_nonce()
        watch.version_sent = version
        payload = wire.sotw_response(version, type_url, watch.nonce, [r.sotw_field for r in chosen])
        return Push(type_url, payload, snapshot.built_at, updated)

    @staticmethod
    def _full_state(
        watch: TypeWatch, resources: Mapping[str, Resource], changed: frozenset[str] | None
    ) -> tuple[list[Resource], tuple[str, ...]] | None:
        """Every subscribed resource, and which of them the client lacks."""
        if changed is not None and watch.responded:
            touched = any(
                n in watch.known or (n in resources and watch.wants(resources[n])) for n in changed
            )
            if not touched:
                return None
        chosen = [r for r in resources.values() if watch.wants(r)]
        versions = {r.name: r.version for r in chosen}
        # The first answer is always sent, empty or not: it tells the client what exists.
        if watch.responded and versions == watch.known:
            return None
        updated = tuple(r.name for r in chosen if watch.known.get(r.name) != r.version)
        watch.known = versions
        return chosen, updated

    @staticmethod
    def _changed_only(
        watch: TypeWatch, resources: Mapping[str, Resource], changed: frozenset[str] | None
    ) -> tuple[list[Resource], tuple[str, ...]] | None:
        """The subscribed resources the client lacks (twice: sent and updated are one)."""
        if changed is None:
            candidates: Iterable[str] = resources.keys() if watch.wildcard else watch.names
        else:
            candidates = changed
        chosen = []
        for name in sorted(candidates):
            resource = resources.get(name)
            if resource is None:
                watch.known.pop(name, None)
            elif watch.wants(resource) and watch.known.get(name) != resource.version:
                watch.known[name] = resource.version
                chosen.append(resource)
        return (chosen, tuple(r.name for r in chosen)) if chosen else None
