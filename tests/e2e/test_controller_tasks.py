"""vCenter tasks do not hold the controller's workers: with a single worker, the clones of
several groups run at once, up to the task cap and never beyond it, and every group converges.

vCenter behaves as a real one here: a clone call returns at once and its task takes 3 s (vcsim
task delay). Before the controller stopped waiting for tasks, one worker meant one group's
actions at a time: the count of actions in flight below could not pass 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from hack.stack import LocalStack, poll
from hack.stack.components import kubectl
from tests.e2e.stacks import vmgroup_stack

pytestmark = [pytest.mark.kube, pytest.mark.vcenter]

NAMESPACE = "tasks"
CAP = 3  # --max-vcenter-tasks
GROUPS = 4  # one VM each: one more than the cap
IN_FLIGHT = "vmgroup_controller_vm_actions_in_flight"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with vmgroup_stack(tmp_path_factory.mktemp("tasks"), NAMESPACE,
                       controller_args=["--workers=1", f"--max-vcenter-tasks={CAP}"],
                       vcsim_task_delays={"CloneVm": 3000}) as local:
        yield local


def _in_flight(stack: LocalStack) -> float:
    assert stack.controller is not None
    for line in stack.controller.get("/metrics").decode().splitlines():
        if line.startswith(IN_FLIGHT + " "):
            return float(line.split()[1])
    raise AssertionError(f"{IN_FLIGHT} is not on /metrics")


def _phases(stack: LocalStack) -> list[tuple[str, int]]:
    listing = json.loads(kubectl(stack.kubeconfig, "-n", NAMESPACE, "get", "vg", "-o", "json"))
    return [((item.get("status") or {}).get("phase", ""),
             (item.get("status") or {}).get("currentReplicas", 0)) for item in listing["items"]]


def test_one_worker_keeps_every_task_slot_busy_and_no_more(stack: LocalStack) -> None:
    groups = "".join(f"""
---
apiVersion: vm.codeconnect.vmworld.com/v1alpha1
kind: VmGroup
metadata: {{name: vg-{i}}}
spec: {{replicas: 1, template: vm-operator-template}}
""" for i in range(GROUPS))
    kubectl(stack.kubeconfig, "-n", NAMESPACE, "apply", "-f", "-", stdin=groups)
    seen: list[float] = []

    def sample() -> list[float]:
        seen.append(_in_flight(stack))
        return seen

    # Every slot busy at once, with one worker: it started them and went on.
    poll(lambda: max(sample()) >= CAP, timeout=30, interval=0.1,
         what=f"{CAP} VM actions in flight at once (seen: {sorted(set(seen))})")
    # The group left over starts when a slot frees, and every group converges.
    poll(lambda: (sample() and _phases(stack) == [("RUNNING", 1)] * GROUPS), timeout=60,
         interval=0.2, what=f"{GROUPS} groups RUNNING (last: {_phases(stack)})")
    assert max(seen) == CAP, f"the task cap was passed: {sorted(set(seen))}"
