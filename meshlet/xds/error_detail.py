"""Bounds on a NACK's error_detail text: for the side that writes it, and the one that keeps it.

A peer decides what a resource is called and what a NACK says, so neither a
name echoed in a message nor a message a client sent may be of any size: the
sidecar shortens what it quotes, and both sides clip whole messages before they
send, log or keep them.
"""

from __future__ import annotations

# A quoted name or value: room for any name meshlet makes (a DNS name is at most
# 253 characters, a cluster name adds "outbound|<port>||"), and not much more.
MAX_QUOTED_CHARS = 300
# A whole message, in UTF-8 bytes: enough to say what and where, small enough to keep.
MAX_DETAIL_BYTES = 4096
ELLIPSIS = "…"


def _printable(text: str) -> str:
    # A control character in a quoted value could forge a line of someone's log.
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def quoted(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """`text` as a message may quote it: printable, and at most `limit` characters."""
    if len(text) > limit:
        text = text[: limit - 1] + ELLIPSIS
    shown = _printable(text)
    return shown if len(shown) <= limit else shown[: limit - 1] + ELLIPSIS


def bounded(message: str, limit: int = MAX_DETAIL_BYTES) -> str:
    """`message` clipped to at most `limit` bytes of UTF-8, marked with an ellipsis."""
    if len(message) * 4 <= limit:
        return message  # no character takes more than 4 bytes
    raw = message.encode("utf-8", "replace")
    if len(raw) <= limit:
        return message
    cut = raw[: limit - len(ELLIPSIS.encode())].decode("utf-8", "ignore")
    return cut + ELLIPSIS
