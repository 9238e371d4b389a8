"""A listening address that cannot be had: one line naming it and what it is for."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from meshlet.flags import grpc_address


class ListenError(OSError):
    """`cannot listen for ROLE on HOST:PORT: REASON` (the errno of the cause is kept)."""

    def __init__(self, role: str, host: str, port: int, reason: str, errno: int | None = None):
        super().__init__(f"cannot listen for {role} on {grpc_address(host, port)}: {reason}")
        self.errno = errno
        self.role = role
        self.address = (host, port)


def reason_of(exc: OSError) -> str:
    """Why, in words ("address already in use"), without the library's own wording."""
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc)


@contextlib.contextmanager
def listening(role: str, host: str, port: int) -> Iterator[None]:
    """An OSError in the block becomes a ListenError for `role` on HOST:PORT."""
    try:
        yield
    except ListenError:
        raise
    except OSError as exc:
        raise ListenError(role, host, port, reason_of(exc), exc.errno) from None
