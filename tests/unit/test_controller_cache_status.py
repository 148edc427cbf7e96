"""The informer's cache rule and the status the controller writes: pure parts."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client

from controller import status
from controller.informer import VmGroupInformer, newer, wants_work
from controller.planner import Status, Vm
from controller.vsphere import _addresses
from kubekit.queue import WorkQueue
from vmgroup_api import MAX_MESSAGE, MAX_STATUS_VMS, MAX_VM_ADDRESSES


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


def test_the_cache_keeps_no_managed_fields_and_leaves_the_given_object_alone() -> None:
    informer = VmGroupInformer(client.ApiClient(), WorkQueue())
    fields = [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
    watched, written = obj("a", "10", replicas=1), obj("b", "10", replicas=1)
    for given in (watched, written):
        given["metadata"]["managedFields"] = fields
    informer.handle("ADDED", watched)
    informer.put(written)
    for key, given in (("a", watched), ("b", written)):
        kept = informer.get(("ns", key))
        assert kept is not None
        assert "managedFields" not in kept["metadata"]
        assert kept["metadata"]["name"] == key
        assert kept["spec"] == {"replicas": 1}
        assert given["metadata"]["managedFields"] == fields  # a copy was slimmed, not it


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
    # our finalizer added: our own patch coming back (maybe before its answer did)
    ({"metadata": {"finalizers": ["vm.codeconnect.vmworld.com/vms"]}}, False),
    ({"metadata": {"finalizers": ["someone.else/cleanup"]}}, False),
    ({"metadata": {"annotations": {"a": "b"}}}, False),
])
def test_only_changes_that_ask_for_work_wake_the_controller(change: dict[str, Any],
                                                            wanted: bool) -> None:
    meta: dict[str, Any] = {"namespace": "ns", "name": "vg", "uid": "u", "generation": 1,
                            "resourceVersion": "8"}
    before = {"metadata": meta, "spec": {"replicas": 1}}
    after = {**before, **change, "metadata": {**meta, **change.get("metadata", {})}}
    assert wants_work(before, after) is wanted


def test_our_finalizer_taken_away_wakes_the_controller() -> None:
    meta = {"namespace": "ns", "name": "vg", "uid": "u", "generation": 1,
            "finalizers": ["vm.codeconnect.vmworld.com/vms", "someone.else/cleanup"]}
    after = {"metadata": {**meta, "finalizers": ["someone.else/cleanup"]}}
    assert wants_work({"metadata": meta}, after) is True


def _vm(name: str, owner: str | None = "uid-1", **kwargs: Any) -> Vm:
    return Vm(name=name, owner_uid=owner, powered_on=kwargs.pop("on", True), cpu=2,
              memory_mb=2048, **kwargs)


@pytest.mark.parametrize(("observed", "names", "omitted"), [
    ([], [], 0),
    # lowest ordinal first (10 after 9: numbers, not strings), foreign VMs left out
    ([_vm("ns-g-10"), _vm("ns-g-9"), _vm("ns-g-0"), _vm("ns-g-1", owner="other")],
     ["ns-g-0", "ns-g-9", "ns-g-10"], 0),
    # a VM of ours under a name of no ordinal goes last
    ([_vm("renamed"), _vm("ns-g-3")], ["ns-g-3", "renamed"], 0),
    # past the bound: the first MAX_STATUS_VMS listed, the rest counted
    ([_vm(f"ns-g-{i}") for i in reversed(range(MAX_STATUS_VMS + 7))],
     [f"ns-g-{i}" for i in range(MAX_STATUS_VMS)], 7),
])
def test_the_vm_view_lists_the_groups_own_vms_in_order_within_bounds(
        observed: list[Vm], names: list[str], omitted: int) -> None:
    view = status.vm_view("ns", "g", "uid-1", observed)
    assert [vm["name"] for vm in view["vms"]] == names
    assert view["vmsOmitted"] == omitted


def test_a_vm_entry_says_what_vcenter_reports() -> None:
    addresses = tuple(f"198.18.0.{i}" for i in range(1, 7))
    (entry,) = status.vm_view("ns", "g", "uid-1", [_vm(
        "ns-g-0", power_state="suspended", on=False, addresses=addresses, host="esx-1",
        instance_uuid="5003c6b8-0000-0000-0000-000000000001")])["vms"]
    assert entry == {"name": "ns-g-0", "powerState": "suspended", "cpu": 2, "memoryMB": 2048,
                     "ipAddresses": list(addresses[:MAX_VM_ADDRESSES]), "host": "esx-1",
                     "instanceUUID": "5003c6b8-0000-0000-0000-000000000001"}
    # Without vCenter's own word, the power state follows what the planner saw.
    (bare,) = status.vm_view("ns", "g", "uid-1", [_vm("ns-g-0", on=False)])["vms"]
    assert bare["powerState"] == "poweredOff"


def test_a_failed_reconcile_keeps_the_last_vm_view() -> None:
    """An error (vCenter not read) changes the phase, not what was last seen of the VMs."""
    seen = status.vm_view("ns", "g", "uid-1", [_vm("ns-g-0")])
    before = status.build(Status("RUNNING", 1, 1, "ok"), name="g", generation=1,
                          previous=None, now="2026-01-01T00:00:00Z", vms=seen)
    after = status.build(Status("ERROR", 1, 1, "down"), name="g", generation=1,
                         previous=before, now="2026-01-01T00:00:01Z", error="down")
    assert (after["vms"], after["vmsOmitted"]) == (seen["vms"], 0)
    assert after["phase"] == "ERROR"


@pytest.mark.parametrize(("primary", "nics", "expected"), [
    (None, None, ()),
    ("10.0.0.5", None, ("10.0.0.5",)),
    # the primary first, then every NIC's addresses once each
    ("10.0.0.5", [["10.0.0.6", "10.0.0.5"], ["fe80::1"]], ("10.0.0.5", "10.0.0.6", "fe80::1")),
    ("", [["10.0.0.6"], None], ("10.0.0.6",)),
])
def test_guest_addresses_primary_first_once_each(
        primary: str | None, nics: list[list[str] | None] | None,
        expected: tuple[str, ...]) -> None:
    props = {"guest.ipAddress": primary,
             "guest.net": None if nics is None else [SimpleNamespace(ipAddress=ips)
                                                    for ips in nics]}
    assert _addresses(props) == expected
