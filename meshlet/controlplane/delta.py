"""Incremental (delta) ADS for one stream (pure).

The stream tracks the version of every resource the client holds, seeded from
`initial_resource_versions` on reconnect, and sends only what differs: changed
resources, and the names of those that went away or never existed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest

from meshlet.controlplane.cache import Resource, Snapshot
from meshlet.controlplane.stream_state import (
    WILDCARD,
    Push,
    StreamState,
    TypeWatch,
    error_message,
)
from meshlet.xds import wire


class DeltaStream(StreamState):
    def on_request(
        self, request: DeltaDiscoveryRequest, snapshot: Snapshot | None
    ) -> tuple[list[Push], bool]:
        """Handles one request; returns the responses to write and whether it was a NACK."""
        self.note_node(request.node.id, request.node.cluster)
        type_url = request.type_url
        if not self.serves(type_url):
            return [], False
        watch, first = self.watch_for(type_url)
        if first:
            watch.known = {sys.intern(n): v for n, v in request.initial_resource_versions.items()}
        nack = False
        # An ACK of an older response still moves subscriptions; only the
        # latest one says what the client holds now.
        if request.response_nonce and request.response_nonce == watch.nonce:
            nack = self.record_ack(watch, "", error_message(request))
        asked = self._subscribe(
            watch, request.resource_names_subscribe, request.resource_names_unsubscribe, first
        )
        if snapshot is None or not (first or asked or request.resource_names_unsubscribe):
            return [], nack  # a plain ACK: the snapshot watch covers what comes next
        push = self.compute(type_url, watch, snapshot, None, asked)
        return ([push] if push else []), nack

    @staticmethod
    def _subscribe(
        watch: TypeWatch, subscribe: Iterable[str], unsubscribe: Iterable[str], first: bool
    ) -> set[str]:
        """Applies a subscription change; returns the names newly asked for."""
        added = {sys.intern(n) for n in subscribe}
        removed = set(unsubscribe)
        wildcard = watch.wildcard
        if (first and not added) or WILDCARD in added:
            wildcard = True
        if WILDCARD in removed:
            wildcard = False
        added.discard(WILDCARD)
        removed.discard(WILDCARD)
        if not first:
            # Asked again: the client dropped it, so send it again.
            for name in added:
                watch.known.pop(name, None)
        watch.subscribe(wildcard, added - removed, removed)
        for name in removed:
            watch.known.pop(name, None)
        return added

    def compute(
        self,
        type_url: str,
        watch: TypeWatch,
        snapshot: Snapshot,
        changed: frozenset[str] | None,
        asked: frozenset[str] | set[str] = frozenset(),
    ) -> Push | None:
        resources = snapshot.of_type(type_url)
        if changed is None:
            everything = resources.keys() if watch.wildcard else watch.names
            candidates = set(everything) | watch.known.keys() | asked
        else:
            candidates = set(changed)
        chosen: list[Resource] = []
        removed: list[str] = []
        for name in sorted(candidates):
            resource = resources.get(name)
            if resource is not None and watch.wants(resource):
                if watch.known.get(name) != resource.version:
                    watch.known[name] = resource.version
                    chosen.append(resource)
            elif name in watch.known or (name in asked and resource is None):
                # Gone, or asked for and not there: say so rather than let the
                # client wait out its fetch timeout.
                watch.known.pop(name, None)
                removed.append(name)
        if not chosen and not removed and (watch.responded or not watch.wildcard):
            return None
        version = snapshot.type_versions.get(type_url, "")
        watch.nonce = self.next_nonce()
        watch.version_sent = version
        payload = wire.delta_response(
            version, type_url, watch.nonce, [r.delta_field for r in chosen], removed
        )
        return Push(type_url, payload, snapshot.built_at, tuple(r.name for r in chosen))
