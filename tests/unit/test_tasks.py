"""VM actions in flight (controller.tasks): chains of tasks, slots, turns, and their ends.

The watch is a fake the test drives: it records every task followed with its callbacks, and the
test ends a task by calling them, as vsphere.TaskWatch would from its own thread. Tasks starts
steps and tells of ends on its own pool of threads, so every check after an action polls, with
a deadline, for the state it expects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from controller.tasks import PROGRESS_SECONDS, Chain, Step, Tasks
from hack.stack import poll


def _until(predicate: Callable[[], bool], timeout: float = 5, what: str = "") -> None:
    """Wait for `predicate` to hold, polling every 5 ms; fail after `timeout`."""
    poll(predicate, timeout=timeout, what=what or str(predicate), interval=0.005)


@dataclass
class Followed:
    task: Any
    ended: Callable[[Any, BaseException | None], None]
    silent: Callable[[BaseException], None]


class FakeWatch:
    """Records the tasks followed; the test ends them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._followed: list[Followed] = []

    def follow(self, task: Any, ended: Callable[[Any, BaseException | None], None],
               silent: Callable[[BaseException], None]) -> None:
        with self._lock:
            self._followed.append(Followed(task, ended, silent))

    def tasks(self) -> list[Any]:
        """Every task followed so far, in the order they were started."""
        with self._lock:
            return [f.task for f in self._followed]

    def get(self, task: Any) -> Followed:
        """The task once it is followed (waiting for it to be started)."""
        _until(lambda: task in self.tasks(), what=f"task {task!r} followed")
        with self._lock:
            return next(f for f in self._followed if f.task == task)

    def end(self, task: Any, result: Any = None) -> None:
        self.get(task).ended(result, None)

    def fail(self, task: Any, error: BaseException) -> None:
        self.get(task).ended(None, error)


@dataclass
class Calls:
    """What Tasks told its group queue and its reporter."""

    enqueued: list[str] = field(default_factory=list)
    after: list[tuple[str, float]] = field(default_factory=list)
    ended: list[tuple[str, str, Any, BaseException | None]] = field(default_factory=list)
    chains: list[Chain[str]] = field(default_factory=list)  # as told of their ends

    def enqueue(self, key: str) -> None:
        self.enqueued.append(key)

    def enqueue_after(self, key: str, seconds: float) -> None:
        self.after.append((key, seconds))

    def end(self, chain: Chain[str], error: BaseException | None) -> None:
        self.chains.append(chain)
        self.ended.append((chain.key, chain.vm, chain.action, error))


@dataclass
class Harness:
    tasks: Tasks[str]
    watch: FakeWatch
    calls: Calls


Make = Callable[..., Harness]


@pytest.fixture
def make() -> Iterator[Make]:
    made: list[Tasks[str]] = []

    def build(slots: int = 4,
              forgive: Callable[[BaseException], bool] = lambda _: False) -> Harness:
        watch, calls = FakeWatch(), Calls()
        tasks: Tasks[str] = Tasks(slots, watch, enqueue=calls.enqueue,
                                  enqueue_after=calls.enqueue_after, ended=calls.end,
                                  forgive=forgive)
        made.append(tasks)
        return Harness(tasks, watch, calls)

    yield build
    for tasks in made:
        tasks.stop()


def start(task: Any, seen: list[Any] | None = None) -> Step:
    """A step that starts `task`, noting the result it was given in `seen`."""

    def step(previous: Any) -> Any:
        if seen is not None:
            seen.append(previous)
        return task

    return step


def one(vm: str, action: Any = "act", task: Any = None) -> tuple[str, Any, list[Step]]:
    """A VM's action of one task (named after the VM unless told)."""
    return vm, action, [start(task if task is not None else f"{vm}-task")]


class Boom(Exception):
    pass


def test_want_starts_only_as_many_chains_as_slots_and_the_rest_oldest_first_as_slots_free(
        make: Make) -> None:
    h = make(slots=2)
    h.tasks.want("g1", [one("a"), one("b")])
    h.tasks.want("g2", [one("c")])
    h.tasks.want("g1", [one("a"), one("b"), one("d")])  # d asks after c: its turn is after c's
    assert len(h.tasks) == 2
    assert h.tasks.running("g1") == {"a", "b"}
    assert h.tasks.running("g2") == frozenset()
    _until(lambda: sorted(h.watch.tasks()) == ["a-task", "b-task"], what="a and b started")

    h.watch.end("a-task")  # a slot frees: the oldest waiting (g2's c) starts, not g1's d
    h.watch.get("c-task")
    _until(lambda: h.calls.after == [("g1", PROGRESS_SECONDS)], what="a's end told")
    assert h.tasks.running("g1") == {"b"}
    assert h.tasks.running("g2") == {"c"}
    assert len(h.tasks) == 2

    h.watch.end("b-task")
    h.watch.get("d-task")
    _until(lambda: len(h.calls.after) == 2, what="b's end told")
    assert h.tasks.running("g1") == {"d"}
    assert h.watch.tasks()[2:] == ["c-task", "d-task"]
    # nothing but the ends started them: no reconcile was asked for
    assert h.calls.enqueued == []
    assert h.calls.after == [("g1", PROGRESS_SECONDS), ("g1", PROGRESS_SECONDS)]


def test_steps_run_in_order_each_given_the_previous_result_and_none_skips_a_step(
        make: Make) -> None:
    h = make()
    seen: list[tuple[str, Any]] = []

    def step(name: str, task: Any) -> Step:
        def run(previous: Any) -> Any:
            seen.append((name, previous))
            return task
        return run

    steps = [step("first", "t1"), step("nothing", None), step("second", "t2"),
             step("nothing again", None)]
    h.tasks.want("g", [("vm", "clone", steps)])
    h.watch.get("t1")
    assert seen == [("first", None)]  # the next step waits for the task's end

    h.watch.end("t1", "r1")
    h.watch.get("t2")
    assert seen == [("first", None), ("nothing", "r1"), ("second", "r1")]
    assert h.calls.ended == []
    assert h.tasks.running("g") == {"vm"}

    h.watch.end("t2", "r2")
    _until(lambda: h.calls.enqueued == ["g"], what="the chain's end queued its group")
    assert seen == [("first", None), ("nothing", "r1"), ("second", "r1"),
                    ("nothing again", "r2")]
    assert h.calls.ended == [("g", "vm", "clone", None)]
    assert h.watch.tasks() == ["t1", "t2"]
    assert h.tasks.running("g") == frozenset()
    assert h.tasks.failures("g") == []


def test_the_end_of_a_groups_last_running_chain_enqueues_it_at_once_others_not_at_all(
        make: Make) -> None:
    h = make(slots=2)
    h.tasks.want("g", [one("a"), one("b")])
    h.watch.end("a-task")  # b still runs: they end about together, one reconcile will do
    _until(lambda: len(h.calls.ended) == 1, what="a's end told")
    assert h.calls.enqueued == []
    assert h.calls.after == []

    h.watch.end("b-task")  # the last one
    _until(lambda: h.calls.enqueued == ["g"], what="b's end queued the group")
    assert h.calls.after == []
    assert [(vm, error) for _, vm, _, error in h.calls.ended] == [("a", None), ("b", None)]


def test_the_end_of_a_chain_while_others_of_its_group_wait_enqueues_it_after_a_while(
        make: Make) -> None:
    h = make(slots=1)
    h.tasks.want("g", [one("a"), one("b")])
    h.watch.end("a-task")  # b waits for the slot a frees
    h.watch.get("b-task")
    _until(lambda: h.calls.after == [("g", PROGRESS_SECONDS)], what="a's end told")
    assert h.calls.enqueued == []

    h.watch.end("b-task")
    _until(lambda: h.calls.enqueued == ["g"], what="b's end queued the group")
    assert h.calls.after == [("g", PROGRESS_SECONDS)]


def test_a_failed_task_ends_its_chain_is_a_failure_told_once_and_enqueues_the_group_at_once(
        make: Make) -> None:
    h = make(slots=2)
    rest: list[Any] = []
    h.tasks.want("g", [("a", "clone", [start("a1"), start("a2", rest)]), one("b")])
    error = Boom("clone failed")
    h.watch.get("b-task")
    h.watch.fail("a1", error)
    # at once, although b still runs
    _until(lambda: h.calls.enqueued == ["g"], what="the failure queued the group")
    assert h.calls.after == []
    assert h.calls.ended == [("g", "a", "clone", error)]
    assert rest == []  # the chain's next step never ran
    assert h.tasks.running("g") == {"b"}
    assert len(h.tasks) == 1
    assert h.tasks.failures("g") == [error]
    assert h.tasks.failures("g") == []  # consumed
    assert sorted(h.watch.tasks()) == ["a1", "b-task"]


def test_a_forgiven_failure_ends_the_chain_as_a_success_without_its_remaining_steps(
        make: Make) -> None:
    asked: list[BaseException] = []

    def forgive(error: BaseException) -> bool:
        asked.append(error)
        return isinstance(error, Boom)

    h = make(forgive=forgive)
    rest: list[Any] = []
    h.tasks.want("g", [("a", "clone", [start("a1"), start("a2", rest), start("a3", rest)])])
    error = Boom("the VM exists already")
    h.watch.fail("a1", error)
    _until(lambda: h.calls.enqueued == ["g"], what="the chain's end queued the group")
    assert asked == [error]
    assert h.calls.ended == [("g", "a", "clone", None)]
    assert rest == []
    assert list(h.calls.chains[0].steps) == []  # its remaining steps are dropped, not run
    assert h.watch.tasks() == ["a1"]
    assert h.tasks.failures("g") == []
    assert not h.tasks.busy("g")


def test_a_step_that_raises_fails_its_chain_with_that_exception(make: Make) -> None:
    h = make()
    error = Boom("no such template")

    def broken(previous: Any) -> Any:
        raise error

    h.tasks.want("g", [("a", "clone", [start("a1"), broken, start("a3")])])
    h.watch.end("a1", "vm-a")
    _until(lambda: h.calls.enqueued == ["g"], what="the failure queued the group")
    assert h.calls.ended == [("g", "a", "clone", error)]
    assert h.tasks.failures("g") == [error]
    assert h.watch.tasks() == ["a1"]
    assert len(h.tasks) == 0
    assert not h.tasks.busy("g")


def test_want_again_drops_what_is_no_longer_asked_keeps_the_turn_of_the_rest_and_never_doubles(
        make: Make) -> None:
    h = make(slots=1)
    started: list[tuple[str, int]] = []

    def chain(vm: str, action: str, asked: int) -> tuple[str, Any, list[Step]]:
        def step(previous: Any) -> Any:
            started.append((vm, asked))
            return f"{vm}-{asked}"
        return vm, action, [step]

    h.tasks.want("g", [chain("a", "x", 1), chain("b", "x", 1), chain("c", "x", 1),
                       chain("f", "x", 1)])
    h.tasks.want("h", [chain("d", "x", 1)])
    h.watch.get("a-1")
    # a runs; b is no longer asked for; c is asked for the same: its turn stays before h's d;
    # f is asked for another action: a new chain, its turn after d; e is new
    h.tasks.want("g", [chain("a", "y", 2), chain("c", "x", 2), chain("f", "y", 2),
                       chain("e", "x", 2)])
    assert h.tasks.running("g") == {"a"}
    assert len(h.tasks) == 1

    for task in ("a-1", "c-1", "d-1", "f-2", "e-2"):
        h.watch.end(task)
    # h's only chain and g's last one ended: each queued its group at once
    _until(lambda: sorted(h.calls.enqueued) == ["g", "h"], what="both groups done")
    assert started == [("a", 1), ("c", 1), ("d", 1), ("f", 2), ("e", 2)]
    assert [(key, vm, action) for key, vm, action, _ in h.calls.ended] == [
        ("g", "a", "x"), ("g", "c", "x"), ("h", "d", "x"), ("g", "f", "y"), ("g", "e", "x")]
    assert h.calls.after == [("g", PROGRESS_SECONDS)] * 3
    assert len(h.tasks) == 0
    assert not h.tasks.busy("g")


def test_a_vm_whose_chain_runs_is_not_started_again_when_asked_for_again(make: Make) -> None:
    h = make(slots=2)
    again: list[Any] = []
    h.tasks.want("g", [("a", "x", [start("a1")])])
    h.watch.get("a1")
    h.tasks.want("g", [("a", "x", [start("a-again", again)]), one("b")])
    h.watch.get("b-task")
    assert h.tasks.running("g") == {"a", "b"}
    h.watch.end("a1")
    h.watch.end("b-task")
    _until(lambda: h.calls.enqueued == ["g"], what="g's last chain ended")
    assert again == []
    assert sorted(h.watch.tasks()) == ["a1", "b-task"]
    assert sorted(vm for _, vm, _, _ in h.calls.ended) == ["a", "b"]


def test_busy_while_a_group_has_chains_running_or_waiting_and_forget_drops_the_waiting(
        make: Make) -> None:
    h = make(slots=1)
    h.tasks.want("g", [one("a")])
    h.tasks.want("h", [one("b")])
    assert h.tasks.busy("g")  # running
    assert h.tasks.busy("h")  # waiting
    assert not h.tasks.busy("other")

    h.tasks.forget("h")
    assert not h.tasks.busy("h")
    h.watch.end("a-task")
    _until(lambda: h.calls.enqueued == ["g"], what="g's last chain ended")
    assert not h.tasks.busy("g")
    assert len(h.tasks) == 0  # the slot a freed went to nobody: h's b was dropped
    assert h.watch.tasks() == ["a-task"]
    assert [vm for _, vm, _, _ in h.calls.ended] == ["a"]


def test_silence_is_a_failure_of_the_group_told_once_and_its_chains_still_end_normally(
        make: Make) -> None:
    h = make(slots=2)
    h.tasks.want("g", [("a", "clone", [start("a1"), start("a2")]), one("b")])
    error = Boom("vCenter does not answer")
    # the watcher tells every task it follows, with the same error
    h.watch.get("a1").silent(error)
    h.watch.get("b-task").silent(error)
    h.watch.get("a1").silent(error)
    assert h.calls.enqueued == ["g"]
    assert h.tasks.failures("g") == [error]
    assert h.tasks.failures("g") == []
    assert h.tasks.running("g") == {"a", "b"}
    assert h.calls.ended == []

    h.watch.end("a1", "vm-a")  # vCenter is back: the chain goes on
    h.watch.end("a2")
    _until(lambda: len(h.calls.ended) == 1, what="a's end told")
    h.watch.end("b-task")
    _until(lambda: h.calls.enqueued == ["g", "g"], what="g's last chain ended")
    assert h.calls.ended == [("g", "a", "clone", None), ("g", "b", "act", None)]
    assert h.calls.after == []
    assert h.tasks.failures("g") == []


def test_len_counts_the_chains_running_not_those_waiting(make: Make) -> None:
    h = make(slots=2)
    assert len(h.tasks) == 0
    h.tasks.want("g", [one("a"), one("b"), one("c")])
    assert len(h.tasks) == 2
    h.watch.end("a-task")
    h.watch.get("c-task")
    assert len(h.tasks) == 2
    h.watch.end("b-task")
    _until(lambda: len(h.tasks) == 1, what="b ended")
    h.watch.end("c-task")
    _until(lambda: len(h.tasks) == 0, what="c ended")
    _until(lambda: h.calls.enqueued == ["g"], what="g's last chain ended")
