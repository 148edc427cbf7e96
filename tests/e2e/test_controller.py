"""The controller end to end: kubectl against the real API server, VMs in VMware's vcsim."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.planner import Group, Vm
from controller.vsphere import VCenterConfig, VSphere
from hack.stack import REPO, LocalStack, binary, poll, vsphere
from hack.stack.components import Controller, kubectl
from tests.e2e.stacks import vmgroup_stack
from tests.unit.test_contract import CONTRACT_COLUMNS

pytestmark = [pytest.mark.kube, pytest.mark.vcenter]

EXAMPLE = REPO / "examples" / "vmgroup.yaml"
NAMESPACE = "team-a"
# The feed's changes are debug lines. Two tasks at once, so that a scale-up's clones (run in
# parallel) come in batches and there is a "middle" of a scale-up to kill the controller in.
CONTROLLER_ARGS = ["--log-level=debug", "--max-vcenter-tasks=2"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A whole stack of its own: API server, vcsim, webhook and controller."""
    # Clones take half a second, as a (fast) real vCenter's would: there is a "middle" of a
    # scale-up to kill the controller in.
    with vmgroup_stack(tmp_path_factory.mktemp("controller"), NAMESPACE, webhook=True,
                       controller_args=CONTROLLER_ARGS,
                       vcsim_method_delays={"CloneVM_Task": 500}) as local:
        yield local


@pytest.fixture(autouse=True)
def _clean_slate(stack: LocalStack) -> Iterator[None]:
    """Each test starts without VmGroups, whatever the previous one left behind."""
    yield
    kubectl(stack.kubeconfig, "delete", "vg", "--all", "-n", NAMESPACE, "--timeout=90s")


@pytest.fixture(scope="module")
def vcenter(stack: LocalStack) -> Iterator[VSphere]:
    info = stack.vcenter
    session = VSphere(VCenterConfig(host=info.host, port=info.port, username=info.username,
                                    password=info.password, ca_file=str(info.ca_file)))
    yield session
    session.close()


def _kubectl(stack: LocalStack) -> Callable[..., str]:
    return lambda *args, **kw: kubectl(stack.kubeconfig, "-n", NAMESPACE, *args, **kw)


def _row(stack: LocalStack) -> list[str]:
    lines = _kubectl(stack)("get", "vg", "vg-1").splitlines()
    return lines[1].split(None, 7) if len(lines) > 1 else []


def _vms(stack: LocalStack, vcenter: VSphere) -> list[Vm]:
    obj = json.loads(_kubectl(stack)("get", "vg", "vg-1", "-o", "json"))
    group = Group(NAMESPACE, "vg-1", obj["metadata"]["uid"], 1, 1, 0, "")
    return [vm for vm in vcenter.observe(group) if vm.owner_uid == group.uid]


def _wait_for_row(stack: LocalStack, row: list[str], timeout: float = 30) -> None:
    poll(lambda: _row(stack) == row, timeout=timeout,
         what=f"kubectl get vg to show {row} (last: {_row(stack)})")


def test_example_converges_scales_resizes_and_deletes(stack: LocalStack,
                                                     vcenter: VSphere) -> None:
    run = _kubectl(stack)
    run("create", "-f", str(EXAMPLE))
    _wait_for_row(stack, ["vg-1", "RUNNING", "3", "3", "1", "1", "vm-operator-template",
                          "successfully reconciled VmGroup"])
    vms = _vms(stack, vcenter)
    assert len(vms) == 3
    assert all(vm.powered_on and (vm.cpu, vm.memory_mb) == (1, 1024) for vm in vms)
    events = run("get", "events", "--field-selector", "involvedObject.name=vg-1", "-o", "json")
    assert sum(e["reason"] == "Created" for e in json.loads(events)["items"]) == 3

    run("scale", "vg", "vg-1", "--replicas=5")
    _wait_for_row(stack, ["vg-1", "RUNNING", "5", "5", "1", "1", "vm-operator-template",
                          "successfully reconciled VmGroup"])
    run("scale", "vg", "vg-1", "--replicas=1")
    _wait_for_row(stack, ["vg-1", "RUNNING", "1", "1", "1", "1", "vm-operator-template",
                          "successfully reconciled VmGroup"])
    assert [vm.name for vm in _vms(stack, vcenter)] == ["team-a-vg-1-0"]

    run("patch", "vg", "vg-1", "--type=merge", "-p", '{"spec": {"cpu": 2}}')
    _wait_for_row(stack, ["vg-1", "RUNNING", "1", "1", "2", "1", "vm-operator-template",
                          "successfully reconciled VmGroup"])
    assert [vm.cpu for vm in _vms(stack, vcenter)] == [2]

    uid = json.loads(run("get", "vg", "vg-1", "-o", "json"))["metadata"]["uid"]
    run("delete", "vg", "vg-1", "--timeout=60s")
    group = Group(NAMESPACE, "vg-1", uid, 1, 1, 0, "")
    assert vcenter.observe(group) == []
    assert vcenter.group_folder(group) is None


HPA = """
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: vg-1}
spec:
  scaleTargetRef: {apiVersion: vm.codeconnect.vmworld.com/v1alpha1, kind: VmGroup, name: vg-1}
  minReplicas: 1
  maxReplicas: 4
  metrics:
    - type: External
      external:
        metric: {name: requests_waiting}
        target: {type: AverageValue, averageValue: "10"}
"""


def test_an_hpa_drives_a_vmgroup(stack: LocalStack) -> None:
    """The real kube-controller-manager's HPA controller on a VmGroup's scale subresource:
    able to scale, no selector error, and minReplicas above the group's size scales it."""
    run = _kubectl(stack)
    run("create", "-f", str(EXAMPLE))
    _wait_for_row(stack, ["vg-1", "RUNNING", "3", "3", "1", "1", "vm-operator-template",
                          "successfully reconciled VmGroup"])
    scale = json.loads(run("get", "--raw", f"/apis/vm.codeconnect.vmworld.com/v1alpha1/"
                                           f"namespaces/{NAMESPACE}/vmgroups/vg-1/scale"))
    assert scale["status"]["selector"] == "vm.codeconnect.vmworld.com/vmgroup=vg-1"
    run("apply", "-f", "-", stdin=HPA)
    try:
        def conditions() -> dict[str, dict[str, Any]]:
            hpa = json.loads(run("get", "hpa", "vg-1", "-o", "json"))
            return {c["type"]: c for c in hpa["status"].get("conditions", [])}

        # (kube-controller-manager learns of the CRD when it next refreshes its discovery)
        poll(lambda: conditions().get("AbleToScale", {}).get("status") == "True", timeout=90,
             what=f"the HPA to be able to scale the group (last: {conditions()})")
        assert "selector" not in json.dumps(conditions()).lower()
        events = run("get", "events", "--field-selector", "involvedObject.name=vg-1", "-o", "json")
        assert not any(e["reason"] in ("InvalidSelector", "SelectorRequired")
                       for e in json.loads(events)["items"])

        run("patch", "hpa", "vg-1", "--type=merge", "-p", '{"spec": {"minReplicas": 4}}')
        _wait_for_row(stack, ["vg-1", "RUNNING", "4", "4", "1", "1", "vm-operator-template",
                              "successfully reconciled VmGroup"], timeout=60)
        # and VmGroups are workloads: `kubectl get all` lists them
        assert "vmgroup.vm.codeconnect.vmworld.com/vg-1" in run("get", "all", "-o", "name")
    finally:
        run("delete", "hpa", "vg-1")


def test_a_missing_template_is_an_error_status_not_a_crash(stack: LocalStack) -> None:
    run = _kubectl(stack)
    run("create", "-f", "-", stdin=json.dumps({
        "apiVersion": "vm.codeconnect.vmworld.com/v1alpha1", "kind": "VmGroup",
        "metadata": {"name": "broken"}, "spec": {"template": "no-such-template"}}))

    def error() -> dict[str, Any] | None:
        status = json.loads(run("get", "vg", "broken", "-o", "json")).get("status") or {}
        return status if status.get("phase") == "ERROR" else None

    status = poll(error, timeout=30, what="phase ERROR")
    assert status["lastMessage"] == "template 'no-such-template' not found in datacenter 'DC0'"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Error")
    assert stack.controller is not None
    assert stack.controller.process.running()
    run("delete", "vg", "broken", "--timeout=60s")


def test_the_controller_never_logs_the_password(stack: LocalStack) -> None:
    assert stack.controller is not None
    assert stack.vcenter.password not in Path(stack.controller.process.log_path).read_text()


def test_drift_is_repaired_in_seconds_not_at_resync(stack: LocalStack, vcenter: VSphere) -> None:
    """A VM powered off and one destroyed behind the controller's back come back through the
    vCenter change feed (the resync is 10 minutes away)."""
    run = _kubectl(stack)
    run("create", "-f", str(EXAMPLE))
    converged = ["vg-1", "RUNNING", "3", "3", "1", "1", "vm-operator-template",
                 "successfully reconciled VmGroup"]
    _wait_for_row(stack, converged)
    obj = json.loads(run("get", "vg", "vg-1", "-o", "json"))
    folder = vcenter.group_folder(Group(NAMESPACE, "vg-1", obj["metadata"]["uid"], 1, 1, 0, ""))
    first, second = sorted(folder.childEntity, key=lambda v: v.name)[:2]
    assert stack.controller is not None
    controller = stack.controller
    seen = controller.process.log_path.stat().st_size
    vsphere.wait_for_task(first.PowerOffVM_Task())

    def destroyed() -> bool:
        # The controller may power it on again between our two calls (the feed is quick):
        # then both are simply tried again.
        if second.runtime.powerState == "poweredOn":
            vsphere.wait_for_task(second.PowerOffVM_Task())
        vsphere.wait_for_task(second.Destroy_Task())
        return True

    poll(destroyed, timeout=30, what="a VM destroyed behind the controller's back")

    def repaired() -> bool:
        vms = _vms(stack, vcenter)
        return len(vms) == 3 and all(vm.powered_on for vm in vms)

    poll(repaired, timeout=30, what="the controller to repair the drift")
    _wait_for_row(stack, converged)
    # ... because the feed reported the changes, not because a reconcile happened to be due.
    feed = [e for e in controller.process.log_entries(since=seen)
            if e.get("msg") == "vCenter change"]
    assert {(e["vmgroup"], e["kind"]) for e in feed} >= {
        (f"{NAMESPACE}/vg-1", "modify"), (f"{NAMESPACE}/vg-1", "leave")}
    run("delete", "vg", "vg-1", "--timeout=60s")


def test_each_vm_of_a_group_is_shown_with_its_address_host_and_uuid(
        stack: LocalStack, vcenter: VSphere) -> None:
    """status.vms says what vCenter says of each VM: the guest addresses (reported by vcsim's
    stand-in for VMware Tools half a second after power-on, and gone at power-off), the host,
    the instance UUID; kubectl describe shows it, -o wide adds READY and the first address."""
    run = _kubectl(stack)
    run("create", "-f", str(EXAMPLE))
    obj = json.loads(run("get", "vg", "vg-1", "-o", "json"))
    group = Group(NAMESPACE, "vg-1", obj["metadata"]["uid"], 1, 1, 0, "")

    def listed() -> list[dict[str, Any]] | None:
        vms = json.loads(run("get", "vg", "vg-1", "-o", "json")).get("status", {}).get("vms")
        return vms if vms and len(vms) == 3 and all(vm["ipAddresses"] for vm in vms) else None

    # The addresses come after RUNNING (the guest boots): the feed brings them to the status.
    vms = poll(listed, timeout=30, what="status.vms to list 3 VMs with their addresses")
    truth = {vm.name: vm for vm in vcenter.observe(group)}
    assert [vm["name"] for vm in vms] == [f"{NAMESPACE}-vg-1-{i}" for i in range(3)]
    for entry in vms:
        real = truth[entry["name"]]
        assert entry == {"name": real.name, "powerState": "poweredOn", "cpu": 1,
                         "memoryMB": 1024, "ipAddresses": list(real.addresses),
                         "host": real.host, "instanceUUID": real.instance_uuid}
        assert entry["host"].startswith("DC0_C0_H")
        assert len(entry["instanceUUID"]) == 36
    assert len({entry["ipAddresses"][0] for entry in vms}) == 3

    # A VM powered off by hand: its entry says so (its address gone with the guest) until the
    # controller has powered it on again and the guest reports the same address.
    watch = subprocess.Popen(
        [binary("kubectl"), f"--kubeconfig={stack.kubeconfig}", "-n", NAMESPACE, "get", "vg",
         "vg-1", "-w", "--output-watch-events", "-o",
         "jsonpath={.object.status.vms[0].powerState} {.object.status.vms[0].ipAddresses}\n"],
        stdout=subprocess.PIPE, text=True)
    assert watch.stdout is not None
    try:
        first = watch.stdout.readline()  # the watch is open: no change can be missed
        vm0 = next(child for child in vcenter.group_folder(group).childEntity
                   if child.name == vms[0]["name"])
        vsphere.wait_for_task(vm0.PowerOffVM_Task())
        poll(lambda: listed() == vms and vm0.runtime.powerState == "poweredOn", timeout=30,
             what="the VM powered on again, with the same address")
    finally:
        watch.terminate()
        transcript, _ = watch.communicate(timeout=10)
    transcript = first + transcript
    seen = [tuple(line.split(" ", 1)) for line in transcript.splitlines() if line.strip()]
    address = json.dumps(vms[0]["ipAddresses"], separators=(",", ":"))
    assert ("poweredOff", "[]") in seen, transcript
    assert seen[-1] == ("poweredOn", address), transcript

    described = run("describe", "vg", "vg-1")
    for entry in vms:
        assert entry["name"] in described
        assert entry["ipAddresses"][0] in described
        assert entry["instanceUUID"] in described
    assert len(re.findall(r"Power State:\s+poweredOn", described)) == 3
    assert len(re.findall(r"Host:\s+DC0_C0_H", described)) == 3

    head = run("get", "vg", "vg-1").splitlines()[0]
    assert head.split() == ["NAME", *CONTRACT_COLUMNS]
    wide_head, wide_row = run("get", "vg", "vg-1", "-o", "wide").splitlines()
    assert wide_head.split() == ["NAME", *CONTRACT_COLUMNS, "READY", "IP", "AGE"]
    assert wide_row.split()[-3:-1] == ["True", vms[0]["ipAddresses"][0]]


def _logged(controller: Controller, msg: str) -> bool:
    return any(entry.get("msg") == msg for entry in controller.process.log_entries())


def _metric(stack: LocalStack, sample: str) -> float:
    assert stack.controller is not None
    for line in stack.controller.get("/metrics").decode().splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[1])
    return 0.0


def test_health_and_metrics(stack: LocalStack) -> None:
    assert stack.controller is not None
    assert stack.controller.get("/healthz") == b"ok"
    assert stack.controller.get("/readyz") == b"ok"
    _kubectl(stack)("create", "-f", str(EXAMPLE))
    _wait_for_row(stack, _running(3))
    poll(lambda: _metric(stack, "vmgroup_controller_managed_vms") == 3, timeout=10,
         what="3 managed VMs in the metrics")
    metrics = stack.controller.get("/metrics").decode()
    for name in ("vmgroup_controller_reconciles_total", "vmgroup_controller_queue_depth",
                 "vmgroup_controller_reconcile_duration"):
        assert name in metrics
    # Every round trip to vCenter is counted by method (property reads are "Fetch").
    for method in ("CloneVM_Task", "PowerOnVM_Task", "WaitForUpdatesEx", "RetrieveProperties",
                   "Login"):
        assert _metric(stack, f'vmgroup_controller_vcenter_calls_total{{method="{method}"}}') \
            >= 1, method
    assert _metric(stack, 'vmgroup_controller_reconciles_total{result="converged"}') >= 1


def _running(replicas: int) -> list[str]:
    return ["vg-1", "RUNNING", str(replicas), str(replicas), "1", "1", "vm-operator-template",
            "successfully reconciled VmGroup"]


def test_killed_mid_scale_up_and_restarted_ends_with_exactly_the_desired_vms(
        stack: LocalStack, vcenter: VSphere) -> None:
    run = _kubectl(stack)
    run("create", "-f", str(EXAMPLE))
    _wait_for_row(stack, _running(3))
    run("scale", "vg", "vg-1", "--replicas=8")
    poll(lambda: 3 < len(_vms(stack, vcenter)) < 8, timeout=30, interval=0.05,
         what="the scale-up to be under way")
    assert stack.controller is not None
    stack.controller.process.signal(signal.SIGKILL)  # no chance to finish anything
    stack.start_controller(CONTROLLER_ARGS)
    _wait_for_row(stack, _running(8), timeout=60)
    names = sorted(vm.name for vm in _vms(stack, vcenter))
    assert names == sorted(f"team-a-vg-1-{i}" for i in range(8))  # no duplicate, no gap
    run("delete", "vg", "vg-1", "--timeout=60s")


def test_a_terminated_vcenter_session_is_replaced_transparently(stack: LocalStack,
                                                                vcenter: VSphere) -> None:
    run = _kubectl(stack)
    run("create", "-f", str(EXAMPLE))
    _wait_for_row(stack, _running(3))
    errors = _metric(stack, 'vmgroup_controller_reconciles_total{result="error"}')
    logins = _metric(stack, 'vmgroup_controller_vcenter_calls_total{method="Login"}')
    manager = vcenter.content.sessionManager
    ours = manager.currentSession.key
    others = [s.key for s in manager.sessionList if s.key != ours]
    assert others  # the controller's worker and feed sessions
    manager.TerminateSession(sessionId=others)  # behind the controller's back
    run("scale", "vg", "vg-1", "--replicas=2")
    _wait_for_row(stack, _running(2), timeout=60)
    assert len(_vms(stack, vcenter)) == 2
    # Logged in again on the spot: not one reconcile failed for it.
    assert _metric(stack, 'vmgroup_controller_reconciles_total{result="error"}') == errors
    assert _metric(stack, 'vmgroup_controller_vcenter_calls_total{method="Login"}') > logins
    run("delete", "vg", "vg-1", "--timeout=60s")


def test_a_standby_replica_takes_over_when_the_leader_stops(stack: LocalStack) -> None:
    """Two replicas: one leads. SIGTERM releases the Lease, so the standby leads at once and
    keeps reconciling (leader election; lease released on SIGTERM)."""
    assert stack.controller is not None
    leader = stack.controller
    standby = Controller(stack.kubeconfig, stack.vcenter, stack.log_dir, CONTROLLER_ARGS,
                         name="controller-standby")
    standby.start()  # ready while waiting: a standby is healthy
    try:
        poll(lambda: _logged(standby, "waiting for leadership"),
             timeout=30, what="the second replica to wait")
        holder = json.loads(kubectl(stack.kubeconfig, "get", "lease", "-n", "default",
                                    "vmgroup-controller", "-o", "json"))["spec"]
        assert holder["holderIdentity"].endswith(f"_{leader.process.pid}")

        leader.process.signal(signal.SIGTERM)
        poll(lambda: _logged(standby, "leading"), timeout=10,
             what="the standby to lead right after the release (not a lease duration later)")
        run = _kubectl(stack)
        run("create", "-f", str(EXAMPLE))
        _wait_for_row(stack, _running(3))
        run("delete", "vg", "vg-1", "--timeout=60s")
    finally:
        stack.controller = standby  # the fixture's teardown stops whichever is left
        leader.process.stop()


def test_a_fresh_group_takes_few_reconciles_and_logs_each_vm_action(stack: LocalStack) -> None:
    """Its own status write wakes nobody, the finalizer is added in the same pass as the clones,
    and every VM action is one structured log line."""
    assert stack.controller is not None
    controller = stack.controller
    offset = controller.process.log_path.stat().st_size
    requests = {(verb, resource): f'vmgroup_controller_api_requests_total{{resource='
                f'"{resource}",verb="{verb}"}}' for verb, resource in (
                    ("patch", "vmgroups"), ("patch", "vmgroups/status"), ("create", "events"),
                    ("patch", "events"))}
    until_running = {part: f"vmgroup_controller_reconciles_until_running_{part}"
                     for part in ("count", "sum")}
    before = {key: _metric(stack, sample) for key, sample in requests.items()}
    passes_before = {part: _metric(stack, sample) for part, sample in until_running.items()}
    _kubectl(stack)("create", "-f", str(EXAMPLE))
    _wait_for_row(stack, _running(3))
    # What the group cost the API server until RUNNING: the finalizer once, an Event per VM
    # created, and a status write per state the group went through.
    cost = {key: _metric(stack, sample) - before[key] for key, sample in requests.items()}
    print(f"API requests of a fresh group of 3 until RUNNING: {cost}")
    assert cost[("patch", "vmgroups")] == 1
    assert cost[("create", "events")] == 3
    assert cost[("patch", "events")] == 0
    assert 2 <= cost[("patch", "vmgroups/status")] <= 5

    def mine() -> list[dict[str, Any]]:
        return [line for line in controller.process.log_entries(since=offset)
                if line.get("vmgroup") == f"{NAMESPACE}/vg-1"]

    # The lines are written by the controller's log thread, a moment after they are logged.
    poll(lambda: len([line for line in mine() if line["msg"] == "vm action"]) >= 3,
         timeout=10, what="a log line per VM action")
    # Counted by the controller from the group's creation until it reported RUNNING (the log
    # would also count the reconcile the guests' addresses bring after RUNNING, depending on
    # when it is read). One starts the work, the end of the VM actions brings the one that
    # reports RUNNING; the echoes of our own work (status, finalizer, the clones and power-ons
    # coming back through the change feed) bring none.
    poll(lambda: _metric(stack, until_running["count"]) > passes_before["count"], timeout=10,
         what="the controller to count the group's reconciles until RUNNING")
    passes = {part: _metric(stack, sample) - passes_before[part]
              for part, sample in until_running.items()}
    print(f"reconciles of a fresh group of 3 until RUNNING: {passes['sum']}")
    assert passes["count"] == 1
    assert 1 <= passes["sum"] <= 2
    actions = [line for line in mine() if line["msg"] == "vm action"]
    done = sorted((a["action"], a["vm"]) for a in actions)
    assert done == [("Clone", f"{NAMESPACE}-vg-1-{i}") for i in range(3)]  # (and power on)
    for line in actions:
        assert line["result"] == "success"
        assert line["vmgroup"] == f"{NAMESPACE}/vg-1"
        assert isinstance(line["duration"], float)


def test_a_failing_group_makes_one_event_with_a_count(stack: LocalStack) -> None:
    run = _kubectl(stack)
    run("create", "-f", "-", stdin=json.dumps({
        "apiVersion": "vm.codeconnect.vmworld.com/v1alpha1", "kind": "VmGroup",
        "metadata": {"name": "failing"}, "spec": {"template": "no-such-template"}}))

    def failures() -> list[dict[str, Any]]:
        events = json.loads(run("get", "events", "--field-selector",
                                "involvedObject.name=failing,reason=ReconcileFailed",
                                "-o", "json"))["items"]
        return list(events)

    # retried with backoff (0.5 s, 1 s, 2 s, ...): after a few retries, still one Event
    poll(lambda: (events := failures()) and events[0]["count"] >= 4, timeout=30,
         what="the failure to be retried 4 times")
    events = failures()
    print(f"failing group: {len(events)} Event(s), count {events[0]['count']}")
    assert len(events) == 1
    run("delete", "vg", "failing", "--timeout=60s")


def test_the_status_tells_the_truth_while_work_happens(stack: LocalStack) -> None:
    """What `kubectl get vg -w` shows during a slow scale-up (clones take 0.5 s, 2 at a time)
    and a deletion: the plan before its actions, progress while they run, DELETING at once."""
    run = _kubectl(stack)
    run("create", "-f", str(EXAMPLE))
    _wait_for_row(stack, _running(3))
    watch = subprocess.Popen(
        [binary("kubectl"), f"--kubeconfig={stack.kubeconfig}", "-n", NAMESPACE, "get", "vg",
         "vg-1", "-w", "--no-headers"], stdout=subprocess.PIPE, text=True)
    assert watch.stdout is not None
    first = watch.stdout.readline()  # the watch is open: the scale cannot come before it
    try:
        run("scale", "vg", "vg-1", "--replicas=8")
        _wait_for_row(stack, _running(8))
        run("delete", "vg", "vg-1", "--timeout=60s")
    finally:
        watch.terminate()
        transcript, _ = watch.communicate(timeout=10)
    transcript = first + transcript
    print("kubectl get vg -w:\n" + transcript)
    rows = [line.split(None, 7) for line in transcript.splitlines() if line.strip()]
    phases = [(r[1], int(r[2]), int(r[3])) for r in rows]
    first_after_scale = next(p for p in phases if p[2] == 8)
    assert first_after_scale[0] == "PENDING"  # the plan, before its clones finish
    assert first_after_scale[1] == 3
    assert any(p[0] == "PENDING" and 3 < p[1] < 8 for p in phases)  # progress, as they finish
    assert ("RUNNING", 8, 8) in phases
    deleting = [p for p in phases if p[0] == "DELETING"]
    assert deleting
    assert deleting[0][1] > 0  # said before the VMs were gone
