"""Handing freed memory back to the kernel."""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    result: Callable[[int], int] = trim
    return result


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hands memory freed after a big burst back to the kernel, so RSS (what a pod's
    memory limit counts) falls back; glibc keeps it for reuse otherwise. A few
    milliseconds at a sidecar's size."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
