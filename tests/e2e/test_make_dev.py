"""`make dev` / `make dev-down` as a developer uses them, on a state directory of the test's own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hack.stack import REPO, poll
from hack.stack.process import exited

pytestmark = [pytest.mark.kube, pytest.mark.vcenter]


def _stack(state: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hack.stack", command, "--state", str(state),
                           "--mode", "host"],
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
    # Progress while each part starts, then every address a developer needs.
    for part in ("etcd", "kube-apiserver", "kube-controller-manager", "vcsim", "webhook",
                 "controller"):
        assert f"starting {part} ..." in first.stdout
        assert f"{part} ready (" in first.stdout
    info = json.loads((state / "stack.json").read_text())
    pids = info["pids"]
    for name, url in info["addresses"].items():
        assert url in first.stdout, name
    assert info["addresses"]["controller"].endswith("/metrics")
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

    _a_dead_part_is_shown_and_started_again(state, pids)
    pids = json.loads((state / "stack.json").read_text())["pids"]

    down = _stack(state, "down")
    assert down.returncode == 0, down.stderr
    assert all(exited(pid) for pid in [supervisor, *pids.values()])
    assert _stack(state, "status").returncode == 1
    assert "not running" in _stack(state, "down").stdout
    # Nothing is left pointing at the stack that is gone.
    assert not (state / "env").exists()
    assert not (state / "kubeconfig").exists()


def _a_dead_part_is_shown_and_started_again(state: Path, pids: dict[str, int]) -> None:
    healthy = _stack(state, "status")
    assert healthy.returncode == 0, healthy.stdout
    assert healthy.stdout.count(" running ") == len(pids)

    os.kill(pids["controller"], signal.SIGKILL)
    poll(lambda: exited(pids["controller"]), timeout=10, what="the controller to die")
    dead = _stack(state, "status")
    assert dead.returncode == 3
    rows = {line.split()[0]: line.split()[1:] for line in dead.stdout.splitlines()[1:]}
    assert rows["controller"][0] == "DEAD"
    assert rows["controller"][-1].endswith("controller.log")
    assert {name for name, row in rows.items() if row[0] == "running"} == set(pids) - {
        "controller"}

    again = _stack(state, "up")
    assert again.returncode == 0, again.stderr
    assert "controller had exited: starting again" in again.stdout
    assert "restarted controller" in again.stdout
    restarted = json.loads((state / "stack.json").read_text())["pids"]
    assert restarted["controller"] != pids["controller"]
    assert {k: v for k, v in restarted.items() if k != "controller"} == {
        k: v for k, v in pids.items() if k != "controller"}
    assert _stack(state, "status").returncode == 0
    # The restarted controller does its work: a scale of the example converges.
    _in_dev_shell(state, "kubectl scale vg vg-1 --replicas=2")
    poll(lambda: _in_dev_shell(state, "kubectl get vg vg-1 --no-headers").stdout.split()[1:4]
         == ["RUNNING", "2", "2"], timeout=60, what="vg-1 to be RUNNING 2 2")
