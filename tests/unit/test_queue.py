"""The work queue: dedup, one worker per key, per-key backoff (with a clock the test moves)."""

from __future__ import annotations

import threading

from kubekit.queue import WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_waiting_key_is_queued_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for key in ("a", "b", "a", "a"):
        queue.add(key)
    assert [queue.get(0), queue.get(0), queue.get(0)] == ["a", "b", None]


def test_a_key_is_never_handed_out_twice_at_once_and_no_add_is_lost() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    assert queue.get(0) == "a"
    queue.add("a")  # a change arrives while "a" is worked on
    assert queue.get(0) is None  # not handed to a second worker
    queue.done("a")
    assert queue.get(0) == "a"  # ... but worked on again afterwards
    queue.done("a")
    assert queue.get(0) is None


def test_retry_backs_off_exponentially_per_key_with_a_cap() -> None:
    clock = Clock()
    queue: WorkQueue[str] = WorkQueue(base_delay=1, max_delay=5, clock=clock)
    delays = []
    for _ in range(5):
        delays.append(queue.retry("a"))
    assert delays == [1, 2, 4, 5, 5]
    assert queue.retry("b") == 1  # per key
    queue.forget("a")
    assert queue.failures("a") == 0


def test_delayed_keys_come_due_with_the_clock() -> None:
    clock = Clock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add_after("late", 10)
    assert queue.get(0) is None
    clock.now = 10
    assert queue.get(0) == "late"


def test_close_wakes_waiting_workers() -> None:
    queue: WorkQueue[str] = WorkQueue()
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(queue.get()))
    worker.start()
    queue.close()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert got == [None]


def test_a_blocked_worker_gets_a_key_added_later() -> None:
    queue: WorkQueue[str] = WorkQueue()
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(queue.get(timeout=10)))
    worker.start()
    queue.add("a")
    worker.join(timeout=10)
    assert got == ["a"]


def test_a_key_waits_once_for_the_earliest_time_asked() -> None:
    """A burst of failures (or a retry and a requeue) does not bring a key back once per call:
    it waits in one place, the earliest."""
    clock = Clock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add_after("a", 8)
    queue.add_after("a", 2)  # sooner: moves it
    queue.add_after("a", 5)  # later than it waits for already: nothing
    assert len(queue) == 1
    clock.now = 2.0
    assert queue.get(0) == "a"
    queue.done("a")
    clock.now = 9.0  # past the stale 5 and 8: nothing more comes
    assert queue.get(0) is None
    assert len(queue) == 0


def test_retries_in_a_burst_are_one_retry() -> None:
    clock = Clock()
    queue: WorkQueue[str] = WorkQueue(base_delay=1, clock=clock)
    for _ in range(9):
        queue.retry("a")  # the backoff grows, the key waits once, for the first delay
    clock.now = 1.0
    assert queue.get(0) == "a"
    queue.done("a")
    clock.now = 1000.0
    assert queue.get(0) is None
