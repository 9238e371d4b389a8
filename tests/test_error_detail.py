"""Bounds on NACK text: what the sidecar quotes and sends, and what the control plane keeps."""

from __future__ import annotations

from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest
from google.rpc.status_pb2 import Status

from meshlet.controlplane.stream_state import error_message
from meshlet.xds.error_detail import MAX_DETAIL_BYTES, bounded, quoted


def test_quoted_keeps_a_real_name_whole_and_cuts_a_long_one() -> None:
    name = "outbound|65535||" + ".".join(["a" * 63] * 3) + ".cluster.local"
    assert quoted(name) == name
    assert quoted("x" * 1000, limit=10) == "x" * 9 + "…"


def test_quoted_shows_control_characters_escaped() -> None:
    assert quoted("web\nWARNING forged line") == "web\\nWARNING forged line"
    assert quoted("\x00" * 100, limit=10) == "\\x00\\x00\\…"


def test_bounded_cuts_on_a_character_boundary() -> None:
    assert bounded("short") == "short"
    cut = bounded("é" * 10_000)
    assert len(cut.encode()) <= MAX_DETAIL_BYTES
    assert cut.endswith("…") and set(cut[:-1]) == {"é"}


def test_the_control_plane_keeps_a_bounded_nack_whatever_the_client_sent() -> None:
    huge = Status(code=3, message="n" * 8_000_000)
    for request in (DiscoveryRequest(error_detail=huge), DeltaDiscoveryRequest(error_detail=huge)):
        kept = error_message(request)
        assert kept is not None and len(kept.encode()) <= MAX_DETAIL_BYTES
        assert kept.startswith("nnn") and kept.endswith("…")
    assert error_message(DiscoveryRequest(error_detail=Status(code=3, message="no"))) == "no"
    assert error_message(DiscoveryRequest()) is None
