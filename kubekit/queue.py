"""A work queue of VmGroup keys, as client-go's rate-limited workqueue is.

- A key waiting is queued once, however often it is added (events only say *which* group).
- A key is never handed to two workers at once; added while being worked on, it is queued
  again when that work is done, so no change is lost.
- A failed key comes back after a per-key exponential backoff with a cap; a success forgets
  its failures.
- A key waits for a later time at most once, for the earliest time asked: failures that come
  in a burst do not each bring it back; added now, it no longer waits for the later time.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, *, base_delay: float = 0.5, max_delay: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._base, self._max, self._clock = base_delay, max_delay, clock
        self._cond = threading.Condition()
        self._ready: list[K] = []  # FIFO of keys to hand out
        self._queued: set[K] = set()  # in _ready
        self._active: set[K] = set()  # handed out, not yet done
        self._again: set[K] = set()  # added while active: requeue when done
        self._later: list[tuple[float, int, K]] = []  # (due, seq, key) heap; may hold stale
        self._due: dict[K, float] = {}  # the one time each waiting key is due
        self._seq = 0
        self._failures: dict[K, int] = {}
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._ready) + len(self._due)

    def _offer(self, key: K) -> None:
        """Queue `key` once; if a worker has it now, queue it again when that work is done.
        The caller holds the lock."""
        if key in self._active:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.append(key)
            self._cond.notify()

    def add(self, key: K) -> None:
        with self._cond:
            # Work from now on covers whatever a later time was asked for (a reconcile looks at
            # everything afresh), so that time is dropped rather than bringing it back again.
            self._due.pop(key, None)
            self._offer(key)

    def add_after(self, key: K, delay: float) -> None:
        """Queue `key` in `delay` seconds, unless it is due sooner already."""
        with self._cond:
            due = self._clock() + delay
            if self._due.get(key, float("inf")) <= due:
                return
            self._due[key] = due  # an earlier entry for the key in the heap is now stale
            self._seq += 1
            heapq.heappush(self._later, (due, self._seq, key))
            self._cond.notify()

    def retry(self, key: K) -> float:
        """Queue `key` again after its backoff (base * 2^failures, capped); return the delay."""
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        delay = float(min(self._base * 2 ** failures, self._max))
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    def _promote_due(self) -> float | None:
        """Move due delayed keys to ready; return seconds until the next one, if any."""
        now = self._clock()
        while self._later and self._later[0][0] <= now:
            due, _, key = heapq.heappop(self._later)
            if self._due.get(key) == due:  # else a stale entry: the key was moved earlier
                del self._due[key]
                self._offer(key)
        while self._later and self._due.get(self._later[0][2]) != self._later[0][0]:
            heapq.heappop(self._later)  # drop stale heads, so the wait below is right
        return self._later[0][0] - now if self._later else None

    def get(self, timeout: float | None = None) -> K | None:
        """The next key to work on (marked active), or None on timeout or close."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                wait = self._promote_due()
                if self._ready:
                    key = self._ready.pop(0)
                    self._queued.discard(key)
                    self._active.add(key)
                    return key
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - self._clock()
                if remaining is not None and remaining <= 0:
                    return None
                waits = [w for w in (wait, remaining) if w is not None]
                self._cond.wait(min(waits) if waits else None)

    def done(self, key: K) -> None:
        with self._cond:
            self._active.discard(key)
            if key in self._again:
                self._again.discard(key)
                self._offer(key)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
