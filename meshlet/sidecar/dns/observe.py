"""What the DNS server tells its observer about each answered query."""

from __future__ import annotations

from typing import Literal, Protocol

from meshlet.sidecar.dns import wire
from meshlet.sidecar.dns.answer import query_type

Source = Literal["local", "forwarded"]


class OnQuery(Protocol):
    """Called once per answered query; keep it cheap (it runs on the hot path)."""

    def __call__(
        self, qtype: str, rcode: str, source: Source, upstream_seconds: float | None
    ) -> None: ...


def labels(query: bytes, response: bytes) -> tuple[str, str]:
    """The query's type and the response's rcode, as the observer is told them."""
    return wire.qtype_name(query_type(query)), wire.RCODE_NAMES[response[3] & 0xF]
