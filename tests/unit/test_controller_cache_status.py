"""The informer's cache rule and the status the controller writes: pure parts."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from controller import status
from controller.informer import VmGroupInformer, newer, wants_work
from controller.planner import Status
from kubekit.queue import WorkQueue
from vmgroup_api import MAX_MESSAGE


def obj(name: str, version: str | None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "ns", "name": name}
    if version is not None:
        meta["resourceVersion"] = version
    return {"metadata": meta, "spec": spec}


@pytest.mark.parametrize(("candidate", "current", "expected"), [
    ("12", None, True), ("12", "11", True), ("12", "12", True), ("11", "12", False),
    ("100", "99", True),  # numbers, not strings: "100" < "99" as text
    ("opaque", "12", True)])
def test_newer(candidate: str, current: str | None, expected: bool) -> None:
    assert newer(obj("a", candidate), None if current is None else obj("a", current)) \
        is expected


def test_the_cache_keeps_the_newest_copy_and_queues_every_change() -> None:
    queue: WorkQueue[tuple[str, str]] = WorkQueue()
    informer = VmGroupInformer(client.ApiClient(), queue)  # no call is made without start()
    informer.handle("ADDED", obj("a", "10", replicas=1))
    informer.put(obj("a", "12", replicas=2))  # our own write's answer
    informer.handle("MODIFIED", obj("a", "11", replicas=1))  # overtaken by that write
    assert informer.get(("ns", "a"))["spec"] == {"replicas": 2}
    informer.handle("MODIFIED", obj("a", "13", replicas=3))
    assert informer.get(("ns", "a"))["spec"] == {"replicas": 3}
    informer.handle("DELETED", obj("a", "14"))
    assert informer.get(("ns", "a")) is None
    assert len(queue) == 1  # one key, queued once however often it changed
    informer.handle("ADDED", {"metadata": {}})  # nameless: ignored, not a crash
    assert len(informer) == 0


def test_a_message_too_long_for_the_crd_is_cut_to_fit() -> None:
    long = "é" * 2000  # 2 bytes each: the limit counts bytes
    built = status.build(Status("ERROR", 0, 1, ""), name="vg", generation=1, previous=None,
                         now="t", error=long)
    assert len(built["lastMessage"].encode()) <= MAX_MESSAGE
    assert built["lastMessage"].endswith("...")
    assert all(len(c["message"].encode()) <= MAX_MESSAGE for c in built["conditions"])
    short = status.build(Status("RUNNING", 1, 1, "ok"), name="vg", generation=1, previous=None,
                         now="t")
    assert short["lastMessage"] == "ok"


def test_an_unchanged_status_is_equal_to_the_stored_one() -> None:
    """What keeps the controller from writing (and waking itself) when nothing changed."""
    first = status.build(Status("RUNNING", 3, 3, "ok"), name="vg", generation=2,
                         previous=None, now="t1")
    again = status.build(Status("RUNNING", 3, 3, "ok"), name="vg", generation=2,
                         previous=first, now="t2")
    assert again == first
    changed = status.build(Status("PENDING", 2, 3, "x"), name="vg", generation=3,
                           previous=first, now="t3")
    assert changed["conditions"][0]["lastTransitionTime"] == "t3"


@pytest.mark.parametrize(("change", "wanted"), [
    ({"status": {"phase": "RUNNING"}, "metadata": {"resourceVersion": "9"}}, False),
    ({"metadata": {"generation": 2}}, True),
    ({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}, True),
    ({"metadata": {"finalizers": ["vm.codeconnect.vmworld.com/vms"]}}, True),
    ({"metadata": {"annotations": {"a": "b"}}}, False),
])
def test_only_changes_that_ask_for_work_wake_the_controller(change: dict[str, Any],
                                                            wanted: bool) -> None:
    meta: dict[str, Any] = {"namespace": "ns", "name": "vg", "uid": "u", "generation": 1,
                            "resourceVersion": "8"}
    before = {"metadata": meta, "spec": {"replicas": 1}}
    after = {**before, **change, "metadata": {**meta, **change.get("metadata", {})}}
    assert wants_work(before, after) is wanted
