"""Echoes of the controller's own work through the change feed wake nobody; news does."""

from __future__ import annotations

from typing import Any

import pytest

from controller.echo import EchoFilter, seen
from controller.planner import Vm

VM = Vm(name="ns-g-0", owner_uid="u", powered_on=True, cpu=2, memory_mb=2048,
        power_state="poweredOn", addresses=("198.18.0.1",), moid="vm-1")
OBSERVED = {"vm-1": VM}
ON = {"runtime.powerState": "poweredOn", "config.hardware.numCPU": 2,
      "config.hardware.memoryMB": 2048, "guest.ipAddress": "198.18.0.1"}


@pytest.mark.parametrize(("moid", "kind", "values", "expected"), [
    ("vm-1", "enter", {**ON, "parent": "group-v7"}, True),  # our clone, announced
    ("vm-1", "modify", {"runtime.powerState": "poweredOn"}, True),  # our power-on
    ("vm-1", "modify", {"runtime.powerState": "poweredOff"}, False),  # drift
    ("vm-1", "modify", {"config.hardware.numCPU": 4}, False),
    ("vm-1", "modify", {"guest.ipAddress": "198.18.0.9"}, False),  # a new address
    ("vm-1", "modify", {"guest.ipAddress": None}, False),  # the address went
    ("vm-1", "moved", ON, False),  # moved to another folder
    ("vm-2", "enter", ON, False),  # a VM the reconcile did not see
    ("vm-1", "leave", None, False),  # destroyed behind our back
    ("vm-2", "leave", None, True),  # gone, and the reconcile saw it gone
])
def test_a_change_is_an_echo_only_when_the_observation_says_the_same(
        moid: str, kind: str, values: dict[str, Any] | None, expected: bool) -> None:
    assert seen(OBSERVED, moid, kind, values) is expected


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _filter() -> tuple[EchoFilter[str], list[str], Clock]:
    woken: list[str] = []
    clock = Clock()
    return EchoFilter(woken.append, clock=clock), woken, clock


def test_changes_during_a_reconcile_wait_for_its_end_and_echoes_are_dropped() -> None:
    echoes, woken, clock = _filter()
    echoes.begin("g")
    echoes.changed("g", "vm-1", "enter", {**ON, "runtime.powerState": "poweredOff"})
    echoes.changed("g", "vm-1", "modify", {"runtime.powerState": "poweredOn"})
    assert woken == []  # decided at the end
    echoes.end("g", [VM])  # it saw the VM on: both changes were its own
    assert woken == []
    clock.now += EchoFilter.GRACE
    echoes.tick()
    assert woken == []
    echoes.changed("g", "vm-1", "modify", {"runtime.powerState": "poweredOff"})
    assert woken == ["g"]  # at rest, news wakes it at once


def test_an_echo_later_than_the_observation_is_dropped_when_it_comes() -> None:
    echoes, woken, clock = _filter()
    echoes.begin("g")
    echoes.changed("g", "vm-1", "enter", {**ON, "runtime.powerState": "poweredOff"})
    echoes.end("g", [VM])  # saw it on; the feed has not said so yet
    echoes.changed("g", "vm-1", "modify", {"runtime.powerState": "poweredOn"})
    clock.now += EchoFilter.GRACE
    echoes.tick()
    assert woken == []


def test_news_during_a_reconcile_wakes_the_group_once_within_the_grace() -> None:
    echoes, woken, clock = _filter()
    echoes.begin("g")
    echoes.changed("g", "vm-1", "modify", {"guest.ipAddress": "198.18.0.7"})
    echoes.end("g", [VM])
    echoes.changed("g", "vm-1", "modify", {"config.hardware.numCPU": 4})
    echoes.tick()
    assert woken == []  # a lagging echo could still explain it
    clock.now += EchoFilter.GRACE
    echoes.tick()
    assert woken == ["g"]  # none did: one reconcile for both changes


def test_a_vm_moved_out_of_the_folder_always_wakes() -> None:
    echoes, woken, clock = _filter()
    echoes.begin("g")
    echoes.end("g", [VM])
    clock.now += EchoFilter.GRACE
    echoes.tick()
    echoes.changed("g", "vm-1", "modify", {"parent": "group-v9"})
    assert woken == ["g"]


def test_a_burst_of_news_after_a_reconcile_wakes_the_group_once() -> None:
    echoes, woken, clock = _filter()
    echoes.begin("g")
    echoes.end("g", [VM])
    for address in ("198.18.0.7", "198.18.0.8", "198.18.0.9"):
        echoes.changed("g", "vm-1", "modify", {"guest.ipAddress": address})
    assert woken == []
    clock.now += EchoFilter.GRACE
    echoes.tick()
    assert woken == ["g"]


def test_without_an_observation_every_change_wakes() -> None:
    echoes, woken, _ = _filter()
    echoes.changed("g", "vm-1", "enter", ON)  # never reconciled yet
    assert woken == ["g"]
    echoes.begin("g")
    echoes.changed("g", "vm-1", "modify", {"runtime.powerState": "poweredOn"})
    echoes.end("g", None)  # failed before it looked
    assert woken == ["g", "g"]
