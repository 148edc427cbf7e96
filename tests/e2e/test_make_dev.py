"""`make dev` / `make dev-down` as a developer uses them, on a state directory of the test's own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hack.stack import REPO, poll
from hack.stack.process import exited

pytestmark = [pytest.mark.kube, pytest.mark.vcenter]


def _stack(state: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hack.stack", command, "--state", str(state)],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def _in_dev_shell(state: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run `script` in a fresh bash after `source <state>/env`, as the README says to."""
    return subprocess.run(["bash", "-c", f"set -e; source {state}/env; {script}"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(state)})


def test_dev_up_twice_use_then_down_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    try:
        _up_twice_use_then_down(state)
    finally:
        _stack(state, "down")  # whatever failed above, the stack does not outlive the test


def _up_twice_use_then_down(state: Path) -> None:
    first = _stack(state, "up")
    assert first.returncode == 0, first.stderr
    assert "kubectl get vg" in first.stdout
    pids = json.loads((state / "stack.json").read_text())["pids"]
    supervisor = int((state / "supervisor.pid").read_text())
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "vcsim", "webhook",
                         "controller"}

    again = _stack(state, "up")  # running make dev twice is safe
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    assert json.loads((state / "stack.json").read_text())["pids"] == pids

    shell = _in_dev_shell(state, """
        kubectl get crd vmgroups.vm.codeconnect.vmworld.com -o name
        kubectl get vg vg-1 -o jsonpath='{.spec.template}{"\\n"}'
        kubectl get namespace "$VMGROUP_NAMESPACE" -o name
        govc find / -type m -name vm-operator-template
        echo '{"apiVersion": "vm.codeconnect.vmworld.com/v1alpha1", "kind": "VmGroup",
               "metadata": {"name": "probe"}, "spec": {"template": "t"}}' |
          kubectl create --dry-run=server -f - -o jsonpath='{.spec.replicas}{"\\n"}'
    """)
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.split() == [
        "customresourcedefinition.apiextensions.k8s.io/vmgroups.vm.codeconnect.vmworld.com",
        "vm-operator-template",
        "namespace/vmgroup-system",
        "/DC0/vm/templates/vm-operator-template",
        "1",  # defaulted by the registered webhook
    ]
    assert (state / "env").stat().st_mode & 0o077 == 0  # it holds the vCenter password
    # The example converges: the table of the design, from `kubectl get vg`.
    poll(lambda: _in_dev_shell(state, "kubectl get vg vg-1 --no-headers").stdout.strip().split(
         None, 7)
         == ["vg-1", "RUNNING", "3", "3", "1", "1", "vm-operator-template",
             "successfully reconciled VmGroup"], timeout=60, what="vg-1 to be RUNNING 3 3")
    assert {p.name for p in (state / "logs").iterdir()} >= {
        "etcd.log", "kube-apiserver.log", "kube-controller-manager.log", "vcsim.log",
        "webhook.log", "controller.log"}

    down = _stack(state, "down")
    assert down.returncode == 0, down.stderr
    assert all(exited(pid) for pid in [supervisor, *pids.values()])
    assert _stack(state, "status").returncode == 1
    assert "not running" in _stack(state, "down").stdout
