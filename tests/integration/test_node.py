"""The local node's own promises: it leaves nothing on the machine, and one that cannot start
fails fast with one clear line naming the part and its log, and leaves nothing either."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hack.stack import LocalStack, StackError, poll
from hack.stack.components import debs_root, free_port, kubectl
from hack.stack.node import BRIDGE, FIXED_DIRS, KUBELET_SYSCTLS, PAUSE_IMAGE, Runtime

pytestmark = [pytest.mark.kube, pytest.mark.node]


def _iptables(*args: str) -> str:
    root = debs_root()
    lib = root / "usr/lib/x86_64-linux-gnu"
    return subprocess.run(
        [str(root / "usr/sbin/xtables-nft-multi"), *args], capture_output=True, text=True,
        check=False, env={**os.environ, "LD_LIBRARY_PATH": str(lib),
                          "XTABLES_LIBDIR": str(lib / "xtables")}).stdout


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:  # the process ended meanwhile
        return b""


def _machine() -> dict[str, Any]:
    """What a node could leave behind on this machine."""
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True,
                                      check=True).stdout)
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True,
                            text=True, check=True).stdout
    chains = sorted(line.split()[0] for family in ("iptables-save", "ip6tables-save")
                    for table in ("filter", "nat", "mangle", "raw")
                    for line in _iptables(family, "-t", table).splitlines()
                    if line.startswith(":"))
    mounts = sorted(line.split()[4] for line in
                    Path("/proc/self/mountinfo").read_text().splitlines())
    cgroups = sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/kubepods*"))
    processes = sorted(p.name for p in Path("/proc").iterdir()
                       if p.name.isdigit() and b"containerd-shim" in _cmdline(p))
    return {
        "links": sorted(link["ifname"] for link in links),
        "routes": sorted(routes.splitlines()),
        "iptables chains": chains,
        "mounts": mounts,
        "cgroups": cgroups,
        "shims": processes,
        "sysctls": {k: Path(f"/proc/sys/{k}").read_text() for k in KUBELET_SYSCTLS},
        "fixed paths": sorted(str(d) for d in FIXED_DIRS if d.exists()),
    }


PODS = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: pause, namespace: default}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: pause}}}}
  template:
    metadata: {{labels: {{app: pause}}}}
    spec:
      containers: [{{name: pause, image: "{PAUSE_IMAGE}"}}]
---
apiVersion: v1
kind: Service
metadata: {{name: pause, namespace: default}}
spec:
  selector: {{app: pause}}
  ports: [{{port: 80}}]
"""


def test_the_node_runs_pods_and_leaves_nothing_behind(tmp_path: Path) -> None:
    before = _machine()
    stack = LocalStack(tmp_path, node=True, vcenter=False)
    try:
        stack.start()
        assert stack.node is not None
        assert BRIDGE in _machine()["links"]
        kubectl(stack.kubeconfig, "apply", "-f", "-", stdin=PODS)
        kubectl(stack.kubeconfig, "rollout", "status", "deployment/pause", "--timeout=60s")
        # kube-proxy programmed the Service: the machine has KUBE-* chains now
        poll(lambda: any(c.startswith(":KUBE-SVC-") for c in _machine()["iptables chains"]),
             timeout=30, what="kube-proxy's rules for the Service")
        assert _machine()["shims"]
    finally:
        stack.stop()
    assert stack.node.leftovers() == {}
    assert _machine() == before


def test_a_node_whose_kubelet_cannot_start_fails_fast_and_leaves_nothing(
        tmp_path: Path) -> None:
    before = _machine()
    with socket.socket() as taken:  # the kubelet's port, in use
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("0.0.0.0", 0))  # noqa: S104 - held, never listened on: a port in use
        taken.listen()
        port = taken.getsockname()[1]
        stack = LocalStack(tmp_path, node=True, vcenter=False)
        assert stack.node is not None
        ports = iter([port])  # the kubelet's is the first port the node asks for
        stack.node.free_port = lambda: next(ports, 0) or free_port()
        with pytest.raises(StackError) as failure:
            stack.start()
    first = str(failure.value).splitlines()[0]
    assert first.startswith("kubelet exited with code ")
    assert first.endswith(f"last lines of {tmp_path / 'logs' / 'kubelet.log'}:")
    assert stack.node.leftovers() == {}
    assert _machine() == before


def test_a_node_without_containerd_fails_before_touching_the_machine(tmp_path: Path) -> None:
    before = _machine()
    stack = LocalStack(tmp_path, node=True, vcenter=False)
    assert stack.node is not None
    stack.node.runtime = Runtime(tmp_path / "no-debs")
    with pytest.raises(StackError, match=r"^node: containerd is missing \(.*\): run `make debs`$"):
        stack.start()
    assert _machine() == before
