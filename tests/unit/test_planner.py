"""The reconcile decision, table-driven: desired group + observed VMs -> actions and status."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.planner import (
    SUCCESS_MESSAGE,
    AddFinalizer,
    Clone,
    DeleteFolder,
    Destroy,
    Group,
    PowerOn,
    Reconfigure,
    RemoveFinalizer,
    Vm,
    plan,
)
from vmgroup_api import ordinal

UID = "uid-1"
GROUP = Group(namespace="ns", name="vg", uid=UID, cpu=1, memory_gb=1, replicas=3,
              template="tpl")


def vm(i: int, *, on: bool = True, cpu: int = 1, memory_mb: int = 1024, owner: str | None = UID,
       name: str | None = None) -> Vm:
    return Vm(name or f"ns-vg-{i}", owner, on, cpu, memory_mb)


def group(**changes: object) -> Group:
    return Group(**{**GROUP.__dict__, **changes})


CASES = [
    pytest.param(GROUP, [], [Clone("ns-vg-0", 1, 1024, "tpl"), Clone("ns-vg-1", 1, 1024, "tpl"),
                             Clone("ns-vg-2", 1, 1024, "tpl")],
                 ("PENDING", 0, 3, "creating 3 VMs"), id="new group: clone all"),
    pytest.param(GROUP, [vm(0), vm(1), vm(2)], [], ("RUNNING", 3, 3, SUCCESS_MESSAGE),
                 id="converged"),
    pytest.param(group(has_finalizer=False), [], [AddFinalizer()],
                 ("PENDING", 0, 3, "adding the finalizer"), id="finalizer before any VM"),
    pytest.param(GROUP, [vm(0), vm(2)], [Clone("ns-vg-1", 1, 1024, "tpl")],
                 ("PENDING", 2, 3, "creating 1 VM"), id="destroyed outside: recreated"),
    pytest.param(GROUP, [vm(0), vm(1, on=False), vm(2)], [PowerOn("ns-vg-1")],
                 ("PENDING", 2, 3, "powering on 1 VM"), id="powered off outside: on"),
    pytest.param(group(replicas=1), [vm(0), vm(1), vm(2), vm(10)],
                 [Destroy("ns-vg-10"), Destroy("ns-vg-2"), Destroy("ns-vg-1")],
                 ("PENDING", 1, 1, "removing 3 VMs"), id="scale down: highest ordinal first"),
    pytest.param(group(replicas=0), [vm(0)], [Destroy("ns-vg-0")],
                 ("PENDING", 0, 0, "removing 1 VM"), id="scale to zero"),
    pytest.param(GROUP, [vm(0), vm(1), vm(2), vm(3, owner="someone-else"),
                         vm(4, owner=None, name="ns-vg-4")],
                 [], ("RUNNING", 3, 3, SUCCESS_MESSAGE), id="foreign VMs are never touched"),
    pytest.param(GROUP, [vm(0, owner="other-uid"), vm(1), vm(2)], [],
                 ("ERROR", 2, 3, "VM name ns-vg-0 taken by a VM not of this group: rename or "
                  "remove it"), id="a name taken by a foreign VM is reported, not cloned over"),
    pytest.param(GROUP, [vm(0, owner=None), vm(1, owner="x")], [Clone("ns-vg-2", 1, 1024, "tpl")],
                 ("PENDING", 0, 3, "creating 1 VM; VM names ns-vg-0, ns-vg-1 taken by VMs not "
                  "of this group: rename or remove them"), id="taken names and work to do"),
    pytest.param(group(cpu=2), [vm(0), vm(1), vm(2)], [Reconfigure("ns-vg-0", 2, 1024)],
                 ("PENDING", 3, 3, "resizing 3 VMs"), id="resize: one at a time"),
    pytest.param(group(cpu=2), [vm(0, cpu=2), vm(1, on=False), vm(2)],
                 [Reconfigure("ns-vg-1", 2, 1024)], ("PENDING", 2, 3, "resizing 2 VMs"),
                 id="resize: the one already down goes first"),
    pytest.param(group(memory_gb=2), [vm(0), vm(1)],
                 [Clone("ns-vg-2", 1, 2048, "tpl")], ("PENDING", 2, 3, "creating 1 VM, "
                                                      "resizing 2 VMs"),
                 id="resize waits until every VM is available; new ones get the new size"),
    pytest.param(group(deleting=True), [vm(0), vm(2), vm(1, owner="other")],
                 [Destroy("ns-vg-2"), Destroy("ns-vg-0")],
                 ("DELETING", 2, 0, "deleting: destroying 2 VMs"), id="delete: VMs first"),
    pytest.param(group(deleting=True), [vm(1, owner="other")],
                 [DeleteFolder(), RemoveFinalizer()],
                 ("DELETING", 0, 0, "deleting: all VMs destroyed"),
                 id="delete: then folder and finalizer"),
    pytest.param(group(deleting=True, has_finalizer=False), [], [],
                 ("DELETING", 0, 0, "deleting: all VMs destroyed"), id="delete: nothing left"),
]


@pytest.mark.parametrize(("desired", "observed", "actions", "status"), CASES)
def test_plan(desired: Group, observed: list[Vm], actions: list[object],
              status: tuple[str, int, int, str]) -> None:
    result = plan(desired, observed)
    assert list(result.actions) == actions
    got = result.status
    assert (got.phase, got.current_replicas, got.desired_replicas, got.message) == status


def test_plan_is_a_fixed_point_once_actions_are_done() -> None:
    """Carrying a plan out and planning again converges: no plan repeats forever."""
    observed: dict[str, Vm] = {}
    desired = group(cpu=2, replicas=3)
    for _ in range(10):
        result = plan(desired, list(observed.values()))
        if result.converged:
            break
        for action in result.actions:
            match action:
                case Clone(name, cpu, memory_mb, _):
                    observed[name] = Vm(name, UID, True, cpu, memory_mb)
                case PowerOn(name):
                    observed[name] = Vm(name, UID, True, observed[name].cpu,
                                        observed[name].memory_mb)
                case Reconfigure(name, cpu, memory_mb):
                    observed[name] = Vm(name, UID, True, cpu, memory_mb)
                case Destroy(name):
                    del observed[name]
    assert plan(desired, list(observed.values())).converged
    assert sorted(observed) == ["ns-vg-0", "ns-vg-1", "ns-vg-2"]


@pytest.mark.parametrize(("name", "expected"), [
    ("ns-vg-0", 0), ("ns-vg-12", 12), ("ns-vg-012", None), ("ns-vg-x", None),
    ("ns-vg2-1", None), ("other-0", None)])
def test_ordinal(name: str, expected: int | None) -> None:
    assert ordinal("ns", "vg", name) == expected


observed_vms = st.lists(st.builds(
    vm, st.integers(0, 6), on=st.booleans(), cpu=st.sampled_from([1, 2]),
    memory_mb=st.sampled_from([1024, 2048]), owner=st.sampled_from([UID, "other", None])),
    max_size=8, unique_by=lambda v: v.name)
desired_groups = st.builds(group, cpu=st.sampled_from([1, 2]), replicas=st.integers(0, 5),
                           deleting=st.booleans(), has_finalizer=st.booleans())


@settings(max_examples=500, deadline=None)
@given(desired=desired_groups, observed=observed_vms)
def test_vm_actions_of_one_plan_may_run_at_once(desired: Group, observed: list[Vm]) -> None:
    """The reconciler runs a plan's VM actions concurrently: that is only safe because each
    touches another VM, and only VMs that carry our marker (or are new)."""
    actions = plan(desired, observed).actions
    touched = [a.name for a in actions if isinstance(a, Clone | PowerOn | Reconfigure | Destroy)]
    assert len(touched) == len(set(touched))
    ours = {v.name for v in observed if v.owner_uid == UID}
    foreign = {v.name for v in observed} - ours
    for action in actions:
        if isinstance(action, PowerOn | Reconfigure | Destroy):
            assert action.name in ours
        if isinstance(action, Clone):
            assert action.name not in ours | foreign
