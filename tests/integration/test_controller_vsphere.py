"""The controller's vSphere adapter against VMware's vCenter simulator, driven by the planner."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pyVmomi import vim

from controller.feed import VCenterFeed
from controller.planner import AddFinalizer, Clone, Destroy, Group, Plan, RemoveFinalizer, plan
from controller.vsphere import Sessions, TaskWatch, VCenterConfig, VSphere, VSphereError
from hack.stack import VCenterInfo, poll, vsphere
from vmgroup_api import OWNER_KEY

pytestmark = pytest.mark.vcenter


@pytest.fixture(scope="module")
def config(vcenter: VCenterInfo) -> VCenterConfig:
    return VCenterConfig(host=vcenter.host, port=vcenter.port, username=vcenter.username,
                         password=vcenter.password, ca_file=str(vcenter.ca_file))


@pytest.fixture(scope="module")
def adapter(config: VCenterConfig) -> Iterator[VSphere]:
    session = VSphere(config)
    yield session
    session.close()


@pytest.fixture
def group() -> Group:
    suffix = uuid.uuid4().hex[:6]
    return Group(namespace="team-a", name=f"vg-{suffix}", uid=str(uuid.uuid4()), cpu=1,
                 memory_gb=1, replicas=3, template="vm-operator-template")


def converge(adapter: VSphere, group: Group, rounds: int = 10) -> Plan:
    """Plan, act, observe again: what the controller's reconcile does, minus Kubernetes."""
    for _ in range(rounds):
        result = plan(group, adapter.observe(group))
        if result.converged:
            return result
        for action in result.actions:
            if isinstance(action, AddFinalizer | RemoveFinalizer):  # the Kubernetes side's
                group = replace(group, has_finalizer=isinstance(action, AddFinalizer))
            else:
                adapter.execute(group, action)
    raise AssertionError(f"no convergence in {rounds} rounds: {result.actions}")


def test_clone_carries_owner_size_and_power(adapter: VSphere, group: Group) -> None:
    adapter.execute(group, Clone("team-a-x-0", 2, 2048, group.template))
    (vm,) = adapter.observe(group)
    assert (vm.name, vm.owner_uid, vm.powered_on, vm.cpu, vm.memory_mb) == (
        "team-a-x-0", group.uid, True, 2, 2048)


def test_groups_converge_scale_resize_and_delete(adapter: VSphere, group: Group,
                                                 vsphere_si: Any) -> None:
    status = converge(adapter, group).status
    assert (status.phase, status.current_replicas, status.message) == (
        "RUNNING", 3, "successfully reconciled VmGroup")
    vms = adapter.observe(group)
    assert sorted(v.name for v in vms) == [f"team-a-{group.name}-{i}" for i in range(3)]
    assert all(v.powered_on and (v.cpu, v.memory_mb) == (1, 1024) for v in vms)

    # Drift: powered off and destroyed behind the controller's back.
    folder = adapter.group_folder(group)
    first, second = sorted(folder.childEntity, key=lambda v: v.name)[:2]
    vsphere.wait_for_task(first.PowerOffVM_Task())
    vsphere.wait_for_task(second.PowerOffVM_Task())
    vsphere.wait_for_task(second.Destroy_Task())
    assert converge(adapter, group).status.current_replicas == 3

    smaller = replace(group, replicas=1, cpu=2)
    converge(adapter, smaller)
    (vm,) = adapter.observe(smaller)
    assert (vm.name, vm.cpu, vm.powered_on) == (f"team-a-{group.name}-0", 2, True)

    converge(adapter, replace(smaller, deleting=True))
    assert adapter.observe(group) == []
    assert adapter.group_folder(group) is None


def test_vms_without_our_marker_are_never_touched(adapter: VSphere, group: Group,
                                                  vsphere_si: Any) -> None:
    converge(adapter, replace(group, replicas=1))
    folder = adapter.group_folder(group)
    template = adapter.template(group.template)
    stranger = vsphere.wait_for_task(template.CloneVM_Task(
        folder=folder, name=f"team-a-{group.name}-1", spec=vim.vm.CloneSpec(
            location=vim.vm.RelocateSpec(pool=adapter._pool()), powerOn=False)))
    # It has one of our names, but not our marker: the plan clones nothing over it, keeps it.
    converge(adapter, replace(group, replicas=1, deleting=True))
    assert [v.name for v in adapter.observe(group)] == [stranger.name]
    assert adapter.group_folder(group) is not None  # not emptied, so not deleted
    assert not any(o.key == OWNER_KEY for o in stranger.config.extraConfig)


def test_missing_template_is_a_clear_error(adapter: VSphere, group: Group) -> None:
    with pytest.raises(VSphereError, match="template 'no-such-template' not found"):
        adapter.execute(group, Clone("team-a-x-0", 1, 1024, "no-such-template"))


def test_wrong_password_is_a_clear_error_without_the_password(config: VCenterConfig) -> None:
    with pytest.raises(VSphereError) as caught:
        VSphere(replace(config, password="hunter2-not-it"))
    assert "refused the login of vmgroup-operator" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(replace(config, password="hunter2-not-it"))


def test_unverifiable_certificate_is_refused(config: VCenterConfig) -> None:
    with pytest.raises(VSphereError, match="cannot reach vCenter"):
        VSphere(replace(config, ca_file=None))  # the system CAs do not know the stack's CA


def _calls(method: str) -> float:
    """vCenter calls of `method` made by this process so far (the adapter's counter)."""
    return REGISTRY.get_sample_value("vmgroup_controller_vcenter_calls_total",
                                     {"method": method}) or 0.0


def _counting(methods: list[str]) -> Callable[[], dict[str, float]]:
    before = {m: _calls(m) for m in methods}
    return lambda: {m: _calls(m) - before[m] for m in methods}


def test_tasks_are_followed_through_the_property_collector_not_polled(
        adapter: VSphere, group: Group) -> None:
    adapter.execute(group, Clone(f"team-a-{group.name}-0", 1, 1024, group.template))
    calls = _counting(["Fetch", "CloneVM_Task", "PowerOnVM_Task", "CreateFilter",
                       "WaitForUpdatesEx", "DestroyPropertyFilter"])
    adapter.execute(group, Clone(f"team-a-{group.name}-1", 1, 1024, group.template))
    made = calls()
    # Folders, template and pool are remembered; each of the 2 tasks is one filter, its state
    # pushed by vCenter (an instant task needs one wait, a running one two or more).
    assert made["Fetch"] == 0, made  # no task.info polling, no lookups
    assert (made["CloneVM_Task"], made["PowerOnVM_Task"]) == (1, 1)
    assert made["CreateFilter"] == made["DestroyPropertyFilter"] == 2
    assert 2 <= made["WaitForUpdatesEx"] <= 6
    assert all(vm.powered_on for vm in adapter.observe(group))


def test_one_watch_follows_many_tasks_and_tells_each_end(adapter: VSphere,
                                                         group: Group) -> None:
    """The process-wide TaskWatch: tasks started elsewhere, each end told with its result."""
    watch = TaskWatch(lambda: adapter).start()
    ended: list[tuple[Any, BaseException | None]] = []
    try:
        adapter.group_folder(group, create=True)
        started = [adapter.steps(group, Clone(f"team-a-{group.name}-{i}", 1, 1024,
                                              group.template))[0](None) for i in range(3)]
        # From here on, what the watch costs (the clones' own lookups are done).
        calls = _counting(["Fetch", "CreateFilter", "ModifyListView",
                           "CreatePropertyCollector"])
        for task in started:
            watch.follow(task, lambda result, error: ended.append((result, error)),
                         lambda error: ended.append((None, error)))
        poll(lambda: len(ended) == 3, timeout=30, what=f"3 ends told (so far {ended})")
        made = calls()
    finally:
        watch.stop()
    assert all(error is None for _, error in ended), ended
    assert sorted(vm.name for vm, _ in ended) == [f"team-a-{group.name}-{i}" for i in range(3)]
    assert made["Fetch"] == 0, made  # pushed, not polled
    # One collector, one filter over its ListView, for every task: tasks go into the view
    # (and out of it, at the next round) a batch at a time, at most one call each.
    assert made["CreatePropertyCollector"] == made["CreateFilter"] == 1, made
    assert 1 <= made["ModifyListView"] <= 3, made
    assert len(watch) == 0


def test_a_task_vcenter_no_longer_has_fails_alone(adapter: VSphere, group: Group) -> None:
    """A task followed after vCenter forgot it (a long outage) fails with a clear error, and
    the other tasks followed meanwhile still end normally: the watch goes on."""
    watch = TaskWatch(lambda: adapter).start()
    ended: dict[str, BaseException | None] = {}
    try:
        adapter.group_folder(group, create=True)
        gone = vim.Task("task-999999", adapter.si._stub)
        real = adapter.steps(group, Clone(f"team-a-{group.name}-0", 1, 1024, group.template))[0]
        def told(moid: str) -> Callable[[Any, BaseException | None], None]:
            return lambda _, error: ended.update({moid: error})

        for task in (gone, real(None)):
            watch.follow(task, told(task._moId), lambda error: None)
        poll(lambda: len(ended) == 2, timeout=30, what=f"both ends told (so far {ended})")
    finally:
        watch.stop()
    assert isinstance(ended.pop("task-999999"), VSphereError)
    assert list(ended.values()) == [None]


def test_a_failed_task_carries_its_fault(adapter: VSphere, group: Group) -> None:
    name = f"team-a-{group.name}-0"
    adapter.execute(group, Clone(name, 1, 1024, group.template))
    template = adapter.template(group.template)
    with pytest.raises(VSphereError) as caught:
        adapter._task(template, "CloneVM_Task", folder=adapter.group_folder(group), name=name,
                      spec=vim.vm.CloneSpec(location=vim.vm.RelocateSpec(pool=adapter._pool())))
    assert isinstance(caught.value.fault, vim.fault.DuplicateName)
    # The adapter's own clone takes a duplicate as "made by an earlier attempt".
    adapter.execute(group, Clone(name, 1, 1024, group.template))
    assert [vm.name for vm in adapter.observe(group)] == [name]


def test_observing_a_group_is_one_query(adapter: VSphere, group: Group) -> None:
    converge(adapter, replace(group, replicas=2))
    calls = _counting(["RetrieveProperties", "Fetch", "FindChild", "CreateContainerView"])
    assert len(adapter.observe(group)) == 2
    assert calls() == {"RetrieveProperties": 1, "Fetch": 0, "FindChild": 0,
                       "CreateContainerView": 0}


def test_an_expired_session_is_logged_in_again_transparently(config: VCenterConfig,
                                                             group: Group,
                                                             vsphere_si: Any) -> None:
    session = VSphere(config)
    try:
        converge(session, replace(group, replicas=1))
        key = session.content.sessionManager.currentSession.key
        vsphere_si.content.sessionManager.TerminateSession(sessionId=[key])  # behind its back
        calls = _counting(["Login"])
        # No error reaches the caller: observing and acting just work, on a new session.
        assert len(session.observe(group)) == 1
        converge(session, replace(group, replicas=2))
        assert calls() == {"Login": 1}
        assert session.content.sessionManager.currentSession.key != key
    finally:
        session.close()


def test_an_idle_session_is_kept_alive_and_a_busy_one_is_left_alone(
        config: VCenterConfig) -> None:
    sessions = Sessions(config, keepalive_seconds=0.4)
    try:
        calls = _counting(["CurrentTime"])
        session = sessions.get()
        poll(lambda: calls()["CurrentTime"] >= 2, timeout=10, what="keep-alive calls")
        busy = _counting(["CurrentTime"])
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # busy: calls back to back for 1.5 s
            assert session.content.sessionManager.currentSession is not None  # a Fetch
        assert busy()["CurrentTime"] == 0
    finally:
        sessions.close()


def test_the_feed_after_a_reconnect_wakes_only_the_groups_that_changed(
        config: VCenterConfig, adapter: VSphere, group: Group, vsphere_si: Any) -> None:
    """The feed's session ends behind its back and one VM goes meanwhile: the new session
    lists every VM again, and only the group that lost a VM hears of it, once (the other VMs,
    as they were, wake nobody)."""
    heard: list[tuple[tuple[str, str], str, str]] = []
    addressed: set[str] = set()

    def changed(k: tuple[str, str], moid: str, kind: str, values: dict[str, Any]) -> None:
        heard.append((k, moid, kind))
        if values.get("guest.ipAddress"):
            addressed.add(moid)

    key = (group.namespace, group.name)
    feed = VCenterFeed(config, changed).start()
    try:
        converge(adapter, replace(group, replicas=2))
        vms = {vm.moid for vm in adapter.observe(group)}
        poll(lambda: feed.listings == 1 and vms <= addressed, timeout=30,
             what="the feed to hear of both VMs up with their addresses")
        mine = vsphere_si.content.sessionManager.currentSession.key
        for session in vsphere_si.content.sessionManager.sessionList:
            if session.key != mine:  # the feed's among them; the adapter logs in again
                vsphere_si.content.sessionManager.TerminateSession(sessionId=[session.key])
        heard.clear()
        gone = min(adapter.observe(group), key=lambda vm: vm.name)
        adapter.execute(group, Destroy(gone.name))
        poll(lambda: feed.listings == 2, timeout=30, what="the feed's second listing")
        # Powered off, then destroyed: the group that lost it hears of that, and only of that.
        assert {(k, moid) for k, moid, _ in heard} == {(key, gone.moid)}
        assert heard[-1] == (key, gone.moid, "leave")
    finally:
        feed.stop()
        converge(adapter, replace(group, replicas=0))


class _Heard:
    """What a feed told, and a way to hold the feed inside its next telling."""

    def __init__(self) -> None:
        self.told: list[tuple[tuple[str, str], str, str, dict[str, Any]]] = []
        self.hold = threading.Event()  # set: the next telling waits for `go`
        self.held = threading.Event()
        self.go = threading.Event()

    def __call__(self, key: tuple[str, str], moid: str, kind: str,
                 values: dict[str, Any]) -> None:
        self.told.append((key, moid, kind, values))
        if self.hold.is_set():
            self.hold.clear()
            self.held.set()
            self.go.wait(60)

    def of(self, moid: str) -> list[tuple[str, dict[str, Any]]]:
        return [(kind, values) for _, m, kind, values in self.told if m == moid]


def test_the_feed_follows_a_vm_its_events_name_until_the_guest_reports_its_address(
        config: VCenterConfig, adapter: VSphere, group: Group) -> None:
    """A VM made and powered on: its events name it, the feed reads it and follows it by a
    property filter over a ListView, which brings the address the guest reports later (no
    event says it); then the VM leaves the view. Nothing is polled meanwhile."""
    heard = _Heard()
    feed = VCenterFeed(config, heard).start()
    try:
        poll(lambda: feed.listings == 1, timeout=30, what="the feed's first listing")
        calls = _counting(["ModifyListView", "ReadNextEvents"])
        converge(adapter, replace(group, replicas=1))
        (vm,) = adapter.observe(group)
        poll(lambda: any(values.get("guest.ipAddress") for _, values in heard.of(vm.moid)),
             timeout=30, what="the feed to tell the guest's address")
        assert heard.of(vm.moid)[0][0] == "enter"
        assert any(values.get("runtime.powerState") == "poweredOn"
                   for _, values in heard.of(vm.moid))
        poll(lambda: feed.watching == 0, timeout=30, what="the feed to stop following it")
        made = calls()
        assert made["ReadNextEvents"] >= 1
        assert made["ModifyListView"] >= 2, made  # into the view, and out of it
        assert feed.listings == 1  # no reconnect on the way
    finally:
        feed.stop()
        converge(adapter, replace(group, replicas=0))


def test_a_vm_destroyed_while_the_feed_follows_it_is_told_gone_and_the_feed_carries_on(
        config: VCenterConfig, adapter: VSphere, group: Group) -> None:
    """vcsim faults a whole long poll when an object a filter names is gone, unless the filter
    asks for missing objects to be left out: the feed asks, and hears of the VM's removal."""
    heard = _Heard()
    feed = VCenterFeed(config, heard).start()
    try:
        converge(adapter, replace(group, replicas=2))
        gone, kept = sorted(adapter.observe(group), key=lambda vm: vm.name)
        poll(lambda: feed.watching > 0, timeout=30, what="the feed to follow the new VMs")
        adapter.execute(group, Destroy(gone.name))  # powered off, then destroyed, at once
        poll(lambda: ("leave", {}) in heard.of(gone.moid), timeout=30,
             what="the feed to tell the VM is gone")
        folder = adapter.group_folder(group)
        (other,) = folder.childEntity
        vsphere.wait_for_task(other.PowerOffVM_Task())  # drift, by hand
        poll(lambda: ("modify", {"runtime.powerState": "poweredOff"}) in
             [(k, {n: v for n, v in values.items() if n == "runtime.powerState"})
              for k, values in heard.of(kept.moid)],
             timeout=30, what="the feed to tell the VM powered off by hand")
        assert feed.listings == 1  # the destroyed VM did not break the feed's session
    finally:
        feed.stop()
        converge(adapter, replace(group, replicas=0))


def test_events_dropped_before_the_feed_read_them_make_it_list_every_vm_again(
        config: VCenterConfig, adapter: VSphere, group: Group, vsphere_si: Any) -> None:
    """An event collector keeps a page of events (vcsim: 1000): a feed held up while more
    came finds the ones it had not read gone, and lists every VM again rather than miss a
    change."""
    heard = _Heard()
    feed = VCenterFeed(config, heard).start()
    try:
        converge(adapter, replace(group, replicas=1))
        (vm,) = adapter.observe(group)
        poll(lambda: feed.listings == 1 and feed.watching == 0, timeout=30,
             what="the feed to settle")
        heard.hold.set()
        ref = next(iter(adapter.group_folder(group).childEntity))
        vsphere.wait_for_task(ref.PowerOffVM_Task())
        assert heard.held.wait(30), "the feed did not tell the power-off"
        events = vsphere_si.content.eventManager
        for _ in range(1001):  # while the feed is held: more than the collector's page
            events.PostEvent(vim.event.VmReconfiguredEvent(
                key=0, chainId=0, createdTime=vsphere_si.CurrentTime(), userName="",
                vm=vim.event.VmEventArgument(vm=ref, name=vm.name),
                configSpec=vim.vm.ConfigSpec()))
        heard.go.set()
        poll(lambda: feed.listings == 2, timeout=60, what="the feed to list every VM again")
    finally:
        heard.go.set()
        feed.stop()
        converge(adapter, replace(group, replicas=0))
