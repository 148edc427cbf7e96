"""Echoes: vCenter changes a reconcile has already seen wake nobody.

Every clone, power-on and guest address a reconcile causes comes back through the change feed,
most of them while that reconcile still runs; queued, each would cost one more reconcile that
observes what the first already saw. So a change to a group being reconciled waits, and when
the reconcile ends it is compared with what its last observation of vCenter saw: a change that
says nothing new is dropped, anything else queues the group. A change to a group at rest is
compared with its last observation at once. Anything the comparison cannot vouch for (a VM
moved between folders, a reconcile that failed before observing) queues the group, as before.

The feed may report a change after the reconcile has already observed its result (a power-on
seen by the final observation, its event still on the way): for a second after a reconcile,
changes that differ from its observation wait for a later event to bring them in line, and
wake the group only if none does. That second also gathers news that comes in a burst (the
guests' addresses, one VM after another) into one reconcile: a group is woken by vCenter at
most about once a second, and drift is repaired a second later at worst.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from .planner import Vm

K = TypeVar("K", bound=Hashable)
log = logging.getLogger("vmgroup.controller.echo")

# The feed's properties, and how an observed Vm says the same.
_SAME: Mapping[str, Callable[[Vm, Any], bool]] = {
    "runtime.powerState": lambda vm, value: vm.power_state == str(value or ""),
    "config.hardware.numCPU": lambda vm, value: vm.cpu == value,
    "config.hardware.memoryMB": lambda vm, value: vm.memory_mb == value,
    "guest.ipAddress": lambda vm, value: (vm.addresses[:1] or ("",))[0] == (value or ""),
}


def seen(observed: Mapping[str, Vm], moid: str, kind: str, values: Mapping[str, Any] | None
         ) -> bool:
    """Whether a change of VM `moid` (feed `kind`: enter, modify, moved or leave; its values,
    None when it left) says nothing that `observed` (the group's VMs by moid, as a reconcile
    last saw them) did not."""
    if values is None:
        return moid not in observed
    vm = observed.get(moid)
    if vm is None or kind == "moved":
        return False  # a VM not seen, or one moved between folders
    return all(_SAME[name](vm, value) for name, value in values.items() if name in _SAME)


class EchoFilter(Generic[K]):
    GRACE = 1.0  # seconds after a reconcile in which a lagging echo of its work may still come

    def __init__(self, enqueue: Callable[[K], None], *,
                 quiet: Callable[[K], bool] = lambda _: False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._enqueue = enqueue
        # Groups whose own work is in flight: its end queues them, and a reconcile then
        # observes everything afresh, so vCenter's news of them is not needed meanwhile.
        self._quiet = quiet
        self._clock = clock
        self._lock = threading.Lock()
        self._busy: set[K] = set()
        self._pending: dict[K, dict[str, tuple[str, dict[str, Any] | None]]] = {}
        self._observed: dict[K, dict[str, Vm]] = {}
        self._grace: dict[K, float] = {}  # key -> until when its differing changes wait
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="echo-filter", daemon=True)

    def start(self) -> EchoFilter[K]:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def changed(self, key: K, moid: str, kind: str, values: Mapping[str, Any]) -> None:
        """The feed reports a change of VM `moid` of group `key`."""
        if self._quiet(key):
            return
        with self._lock:
            known = self._pending.setdefault(key, {})
            was, before = known.get(moid, ("", {}))
            if kind == "leave":
                known[moid] = (kind, None)
            else:
                # An "enter" stays one until the reconcile sees it; a VM that changes folder
                # is a move, whatever comes after.
                moved = "moved" if was == "moved" or (kind == "modify" and "parent" in values) \
                    else None
                known[moid] = (moved or ("enter" if was == "enter" else kind),
                               {**(before or {}), **values})
            if key in self._busy:
                return  # decided when its reconcile ends
            if key in self._grace:  # just reconciled: the echo of its work may be late
                if not self._news(key):
                    self._pending.pop(key, None)
                return  # news waits for the grace's end
            wake = self._consume(key)
        if wake:
            self._enqueue(key)

    def begin(self, key: K) -> None:
        with self._lock:
            self._busy.add(key)
            self._grace.pop(key, None)  # what waited is decided at this reconcile's end

    def end(self, key: K, observed: Sequence[Vm] | None) -> None:
        """A reconcile of `key` ended, having last seen `observed` (None: it saw nothing)."""
        with self._lock:
            self._busy.discard(key)
            if observed is None:
                self._observed.pop(key, None)
                wake = self._consume(key)
            else:
                self._observed[key] = {vm.moid: vm for vm in observed if vm.moid}
                wake = False
                # What differs may be news, or echoes older than the observation; and what
                # comes next may be a burst: decided when the grace is over.
                self._grace[key] = self._clock() + self.GRACE
                if not self._news(key):
                    self._pending.pop(key, None)
        if wake:
            self._enqueue(key)

    def _news(self, key: K) -> list[str]:
        """The VMs whose waiting changes say what the last observation did not."""
        observed = self._observed.get(key)
        return [moid for moid, (kind, values) in self._pending.get(key, {}).items()
                if observed is None or not seen(observed, moid, kind, values)]

    def _consume(self, key: K) -> bool:
        """Whether the changes waiting for `key` say anything new (they are consumed)."""
        news = self._news(key)
        self._pending.pop(key, None)
        if news:
            log.debug("vCenter news", extra={"vmgroup": "/".join(map(str, key))
                                             if isinstance(key, tuple) else str(key),
                                             "vms": news})
        return bool(news)

    def tick(self) -> None:
        """Wake the groups whose grace is over with changes still unexplained."""
        now = self._clock()
        with self._lock:
            due = [key for key, until in self._grace.items() if until <= now]
            wake = []
            for key in due:
                del self._grace[key]
                if self._consume(key):
                    wake.append(key)
        for key in wake:
            self._enqueue(key)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.tick()
