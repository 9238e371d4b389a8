"""What the DNS server tells its observers about each answered query."""

from __future__ import annotations

from typing import Literal, Protocol

from meshlet.sidecar.dns import wire
from meshlet.sidecar.dns.answer import query_type

Source = Literal["local", "forwarded"]
Proto = Literal["udp", "tcp"]


class OnQuery(Protocol):
    """Called once per answered query; keep it cheap (it runs on the hot path)."""

    def __call__(
        self, qtype: str, rcode: str, source: Source, proto: Proto, upstream_seconds: float | None
    ) -> None: ...


class OnAnswered(Protocol):
    """How long local answers took in the server, from the query read to the answer
    sent: `answers` of them at once (a batch on the batched UDP path)."""

    def __call__(self, proto: Proto, seconds: float, answers: int = 1) -> None: ...


def labels(query: bytes, response: bytes) -> tuple[str, str]:
    """The query's type and the response's rcode, as the observer is told them."""
    return wire.qtype_name(query_type(query)), wire.RCODE_NAMES[response[3] & 0xF]


def proto_of(max_udp: int | None) -> Proto:
    """The server's handlers take `max_udp` None for a query that came over TCP."""
    return "tcp" if max_udp is None else "udp"
