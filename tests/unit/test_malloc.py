"""controller.malloc on this machine's glibc: found, told, and giving memory back."""

from __future__ import annotations

import resource

from controller import malloc


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_glibc_is_found_here() -> None:
    assert malloc._LIBC is not None  # the machine and the image run glibc
    malloc.few_arenas()  # too late to matter in a running test process, but accepted


def test_freed_memory_is_given_back() -> None:
    # 64 MB in blocks of 8 KB: above pymalloc's limit, so glibc's heap holds them, and small
    # enough to stay below its mmap threshold (which would give them back on free anyway).
    blocks = [bytearray(8192) for _ in range(8192)]
    held = _rss_kb()
    del blocks[1:]  # all but the first: the heap's top stays, so free() alone cannot shrink it
    malloc.give_back()
    assert held - _rss_kb() > 32 * 1024, (held, _rss_kb(), resource.getpagesize())
