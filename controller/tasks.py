"""VM actions in flight: a reconcile starts them and returns; their end queues the group again.

A VM action is a chain of vCenter tasks (a clone, then its power-on; a power-off, then a
reconfigure, then a power-on). The reconcile hands it over here and is done; one watcher for
the whole process (vsphere.TaskWatch) hears each task end, the next task of the chain is started
here, and when the chain is over its group is queued again. So a worker is busy for the length
of an observation, never for the length of a task, and a few workers keep every task slot of
vCenter busy for thousands of groups.

Rules:
- a reconcile says what its group needs now (`want`); what it no longer asks for and has not
  started yet is dropped, so nothing stale is started;
- at most `slots` chains run at once, all groups together (vCenter's own queue is not ours to
  fill); the others wait their turn here, oldest first, and start as slots free, without a
  reconcile;
- every task is started, and every end told, by a pool of threads here, never by a worker;
- a VM with a chain running or waiting is not acted on again (its chain is the action), which
  keeps the level-triggered planner from cloning a VM twice while its clone runs;
- the end of a chain, success or failure, always queues its group: nothing waits on a task
  without something coming back for it (tasks time out in the watcher); so does vCenter
  falling silent while it runs, so the group shows the outage at once;
- a group's last chain ending queues it at once; a chain ending while others of its group still
  wait for a slot (work that takes a while) queues it at most once a second, to report
  progress; while the rest of its chains merely run (they end about together), nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
log = logging.getLogger("vmgroup.controller.tasks")

PROGRESS_SECONDS = 1.0  # a group with chains still running is queued at most this often

# A step starts one vCenter task, given the result of the task before it (None for the first),
# and returns it; None: nothing to start here, on to the next step with the same result.
Step = Callable[[Any], Any]
Ended = Callable[[Any, BaseException | None], None]  # a task's result, or why it failed


class Watch(Protocol):
    def follow(self, task: Any, ended: Ended, silent: Callable[[BaseException], None]
               ) -> None: ...


@dataclass
class Chain(Generic[K]):
    key: K
    vm: str
    action: Any
    steps: deque[Step]
    started: float = field(default_factory=time.monotonic)


def _take(table: dict[K, dict[str, Chain[K]]], chain: Chain[K]) -> bool:
    """Take `chain` out of `table` (group -> VM -> chain), and its group once it has none left;
    whether it was there."""
    chains = table.get(chain.key, {})
    if chains.get(chain.vm) is not chain:
        return False
    del chains[chain.vm]
    if not chains:
        del table[chain.key]
    return True


class Tasks(Generic[K]):
    def __init__(self, slots: int, watch: Watch, *,
                 enqueue: Callable[[K], None], enqueue_after: Callable[[K, float], None],
                 ended: Callable[[Chain[K], BaseException | None], None],
                 forgive: Callable[[BaseException], bool] = lambda _: False) -> None:
        self._slots = slots
        self._watch = watch
        self._enqueue, self._enqueue_after = enqueue, enqueue_after
        self._ended = ended  # told of every chain's end, before its group is queued
        # A failure that means the work was done anyway (a clone an earlier attempt made): the
        # chain ends there, and the next observation decides what else the VM needs.
        self._forgive = forgive
        self._lock = threading.Lock()
        self._running: dict[K, dict[str, Chain[K]]] = {}  # key -> VM name -> its chain
        self._count = 0  # chains running
        self._waiting: dict[K, dict[str, Chain[K]]] = {}  # chains with no slot yet, by group
        self._turns: deque[Chain[K]] = deque()  # the same, oldest first (may hold dropped ones)
        self._failures: dict[K, list[BaseException]] = {}
        # Starting a task and telling of a chain's end are calls that take a while: never on
        # a worker (it goes on to the next group) or the watcher (it goes back to listening).
        # A few threads suffice: starting a task is one quick call, telling of an end a write.
        self._pool = ThreadPoolExecutor(max_workers=min(slots, 4),
                                        thread_name_prefix="task-chain")

    def __len__(self) -> int:
        """Chains running."""
        with self._lock:
            return self._count

    def running(self, key: K) -> frozenset[str]:
        """The VMs of `key` with a chain running."""
        with self._lock:
            return frozenset(self._running.get(key, ()))

    def busy(self, key: K) -> bool:
        """Whether `key` has chains running or waiting."""
        with self._lock:
            return key in self._running or key in self._waiting

    def failures(self, key: K) -> list[BaseException]:
        """Why chains of `key` failed since the last time this was asked (consumed)."""
        with self._lock:
            return self._failures.pop(key, [])

    def want(self, key: K, work: list[tuple[str, Any, list[Step]]]) -> None:
        """What group `key` needs now besides what runs: (VM, action, its steps) each. Waiting
        chains it still asks for keep their turn; the rest are dropped; new ones queue up."""
        with self._lock:
            before = self._waiting.pop(key, {})
            now: dict[str, Chain[K]] = {}
            for vm, action, steps in work:
                if vm in self._running.get(key, {}):
                    continue  # already its chain's
                kept = before.get(vm)
                if kept is not None and kept.action == action:
                    now[vm] = kept
                else:
                    now[vm] = chain = Chain(key, vm, action, deque(steps))
                    self._turns.append(chain)
            if now:
                self._waiting[key] = now
            if len(self._turns) > 2 * sum(map(len, self._waiting.values())) + 64:
                # Dropped chains wait in the line until popped: sweep them out now and then.
                self._turns = deque(c for c in self._turns
                                    if self._waiting.get(c.key, {}).get(c.vm) is c)
        self._fill()

    def forget(self, key: K) -> None:
        """Drop what `key` waits for (it is gone); what runs ends on its own."""
        self.want(key, [])

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- the chain -----------------------------------------------------------------------------

    def _fill(self) -> None:
        """Start waiting chains, oldest first, while slots are free."""
        starting = []
        with self._lock:
            while self._count < self._slots and self._turns:
                chain = self._turns.popleft()
                if not _take(self._waiting, chain):
                    continue  # dropped since
                self._running.setdefault(chain.key, {})[chain.vm] = chain
                self._count += 1
                chain.started = time.monotonic()
                starting.append(chain)
        for chain in starting:
            self._submit(self._continue, chain, None)

    def _submit(self, work: Callable[..., None], *args: Any) -> None:
        """Run `work` on the pool; what it raises is logged (a future nobody reads would hide
        it). Once stopped, nothing more is run."""
        def logged() -> None:
            try:
                work(*args)
            except Exception:
                log.exception("a vm action's bookkeeping failed")
        with contextlib.suppress(RuntimeError):  # shut down: the process is stopping
            self._pool.submit(logged)

    def _start_next(self, chain: Chain[K], result: Any) -> bool:
        """Start the chain's next task; False when no step is left."""
        while chain.steps:
            task = chain.steps.popleft()(result)
            if task is not None:
                self._watch.follow(task, lambda result, error: self._task_ended(chain, result,
                                                                                 error),
                                   lambda error: self._silent(chain, error))
                return True
        return False

    def _task_ended(self, chain: Chain[K], result: Any, error: BaseException | None) -> None:
        """The watcher: one task of `chain` ended."""
        if error is not None:
            self._submit(self._finish, chain, error)
        else:
            self._submit(self._continue, chain, result)

    def _silent(self, chain: Chain[K], error: BaseException) -> None:
        """vCenter stopped answering while `chain` runs: its group is told now (it shows the
        error and waits for vCenter), not when the chain's task times out."""
        with self._lock:
            told = self._failures.setdefault(chain.key, [])
            if any(str(e) == str(error) for e in told):
                return  # its other chains bring the same news
            told.append(error)
        self._enqueue(chain.key)

    def _continue(self, chain: Chain[K], result: Any) -> None:
        try:
            started = self._start_next(chain, result)
        except Exception as exc:  # starting the next task failed: the chain fails with it
            self._finish(chain, exc)
            return
        if not started:
            self._finish(chain, None)

    def _finish(self, chain: Chain[K], error: BaseException | None) -> None:
        """The chain is over: its slot goes to the next chain first, then its end is told and
        its group queued."""
        if error is not None and self._forgive(error):
            chain.steps.clear()
            error = None
        with self._lock:
            if not _take(self._running, chain):
                return  # told already
            self._count -= 1
            if error is not None:
                self._failures.setdefault(chain.key, []).append(error)
            last = chain.key not in self._running and chain.key not in self._waiting
            slow = chain.key in self._waiting  # its work waits for slots: it will take a while
        self._fill()
        try:
            self._ended(chain, error)
        except Exception:  # telling of the end is a report; the group is queued regardless
            log.exception("reporting the end of a vm action failed")
        if last or error is not None:
            self._enqueue(chain.key)
        elif slow:
            self._enqueue_after(chain.key, PROGRESS_SECONDS)  # progress, at most once a second
