"""The outage wait: groups that failed because vCenter did not answer come back when it does."""

from __future__ import annotations

import threading
from collections.abc import Set

from controller.recovery import Outage
from hack.stack import poll


class Probe:
    """vCenter as the probe sees it: down until `up` is set. Counts the calls."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if not self.up.is_set():
            raise OSError("timed out")


def test_waiting_groups_come_back_all_at_once_when_vcenter_answers() -> None:
    probe, recovered = Probe(), []
    done = threading.Event()

    def back(keys: Set[tuple[str, str]]) -> None:
        recovered.append(set(keys))
        done.set()

    outage = Outage(probe, back, interval=0.01).start()
    try:
        outage.wait_for_vcenter(("ns", "a"))
        outage.wait_for_vcenter(("ns", "b"))
        outage.wait_for_vcenter(("ns", "a"))  # failed twice: comes back once
        poll(lambda: probe.calls >= 3, timeout=5, what="the probe to ask again and again")
        assert recovered == []  # nothing comes back while vCenter is down
        assert outage.waiting == 2
        probe.up.set()
        poll(done.is_set, timeout=5, what="the groups to come back")
        assert recovered == [{("ns", "a"), ("ns", "b")}]
        assert outage.waiting == 0
    finally:
        outage.stop()


def test_the_probe_asks_nothing_while_no_group_waits() -> None:
    probe = Probe()
    probe.up.set()
    back = threading.Event()
    outage: Outage[tuple[str, str]] = Outage(probe, lambda keys: back.set(),
                                             interval=0.01).start()
    try:
        # A group that waits makes the probe run once; with none waiting it stays idle.
        outage.wait_for_vcenter(("ns", "a"))
        poll(back.is_set, timeout=5, what="the group to come back")
        calls = probe.calls
        assert calls == 1
        back.clear()
        outage.wait_for_vcenter(("ns", "b"))
        poll(back.is_set, timeout=5, what="the second group to come back")
        assert probe.calls == calls + 1
    finally:
        outage.stop()
