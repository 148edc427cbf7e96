"""glibc's allocator, told what suits a process whose threads mostly wait. Elsewhere than glibc
(musl, macOS) there is nothing to tell, and nothing is done.

- Two arenas: glibc gives threads that allocate at once arenas of their own (up to 8 per core),
  each keeping the memory its thread freed. The same as MALLOC_ARENA_MAX=2, without relying on
  the environment; it must be set before any thread starts.
- Freed memory given back while idle: after a burst (a relist, thousands of reconciles) the
  heaps keep the pages that held it; malloc_trim returns them to the system.
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Any

M_ARENA_MAX = -8  # <malloc.h>


def _libc() -> Any | None:
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL(None)  # the process's own symbols: its C library
        if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim"):
            return libc
    return None


_LIBC = _libc()


def few_arenas(arenas: int = 2) -> None:
    if _LIBC is not None:
        _LIBC.mallopt(M_ARENA_MAX, arenas)


def give_back() -> None:
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
