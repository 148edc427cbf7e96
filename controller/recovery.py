"""Recovery after a vCenter outage: certain, and within a second of vCenter answering again.

A group whose reconcile failed because vCenter did not answer (down, frozen, cut off) does not
wait out its backoff, which grows with every timed-out attempt and could outlast the outage by
minutes. It waits here instead, and one probe (the cheapest call there is) asks vCenter once a
second while any group waits. The moment vCenter answers, every waiting group is queued again,
so all of them converge without waiting for a backoff or the periodic resync; and while vCenter
stays down, the only traffic is the probe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Set
from typing import Generic, TypeVar

log = logging.getLogger("vmgroup.controller.recovery")

K = TypeVar("K", bound=Hashable)


class Outage(Generic[K]):
    def __init__(self, probe: Callable[[], object], recovered: Callable[[Set[K]], None], *,
                 interval: float = 1.0) -> None:
        self._probe = probe  # raises while vCenter does not answer
        self._recovered = recovered  # given the keys that waited, once vCenter answers
        self._interval = interval
        self._waiting: set[K] = set()
        self._cond = threading.Condition()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vcenter-probe", daemon=True)

    def start(self) -> Outage[K]:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        with self._cond:
            self._cond.notify_all()

    def wait_for_vcenter(self, key: K) -> None:
        """`key` failed because vCenter did not answer: queue it again when vCenter does."""
        with self._cond:
            self._waiting.add(key)
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def _run(self) -> None:
        while not self._stopped.is_set():
            with self._cond:
                while not self._waiting and not self._stopped.is_set():
                    self._cond.wait()
            if self._stopped.is_set():
                return
            try:
                self._probe()
            except Exception as exc:  # still down: ask again in a while
                log.debug("vCenter still does not answer", extra={"error": str(exc)})
                self._stopped.wait(self._interval)
                continue
            with self._cond:
                keys, self._waiting = self._waiting, set()
            log.info("vCenter answers again", extra={"groups": len(keys)})
            self._recovered(keys)
