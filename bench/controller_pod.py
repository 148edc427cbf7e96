"""The controller's memory as users run it: its image, in a Pod on the stack's node, installed
by its chart, reading its service account.

    make bench-controller-pod               # or: .venv/bin/python -m bench.controller_pod --help

bench.controller runs the controller as a process beside the stack, with a kubeconfig (so
with the kubeconfig loader's OAuth stack loaded, which a Pod never needs). Here the stack has a
node (containerd, kubelet), `make image`'s image is imported into it and `helm install` runs
the chart with one controller and one webhook replica and its defaults otherwise (4 workers,
10 vCenter tasks at once); vcsim has bench.controller's delays. `--groups` VmGroups of
`--replicas` are created through the API server (and so through the webhook). Once every one
is RUNNING with every VM's guest address in its status, the controller's CPU time has stood
still for SETTLED_SECONDS and `--idle-seconds` have passed, its VmRSS and VmHWM are read from
/proc: the Pod's processes are this machine's, found through containerd.
Target (issue 14): VmRSS <= 64 MB at 100 groups of 3.
About 5 minutes, most of it the groups converging.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench import controller as bench
from hack.stack import LocalStack, poll
from hack.stack.operator import Operator, build_image
from hack.stack.process import cpu_seconds

TARGET_RSS_MB = 64.0
NAMESPACE = "vmgroup-system"
SETTLED_SECONDS = 10.0  # no CPU time used for this long: the controller has settled
STILL_CPU_S = 0.05  # what "no CPU time" allows: the lease renewals and the feed's poll


def _options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.controller_pod", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=100, help="default: %(default)s")
    parser.add_argument("--replicas", type=int, default=3, help="default: %(default)s")
    parser.add_argument("--namespaces", type=int, default=4, help="default: %(default)s")
    parser.add_argument("--idle-seconds", type=float, default=30,
                        help="after settling, before memory is read (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path,
                        help="keep the stack's files and logs here (default: a temporary dir)")
    return parser.parse_args(argv)


def _controller_pid(local: LocalStack, operator: Operator) -> int:
    """The host PID of the controller Pod's container, from containerd."""
    pods = json.loads(operator.kubectl(
        "-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=controller",
        "-o", "json").stdout)["items"]
    if len(pods) != 1:
        raise RuntimeError(f"expected one controller Pod, found {len(pods)}")
    container = pods[0]["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    assert local.node is not None
    for line in local.node.ctr("task", "ls").stdout.splitlines()[1:]:
        task, pid, *_ = line.split()
        if task == container:
            return int(pid)
    raise RuntimeError(f"containerd runs no task for container {container}")


def _settle(pid: int, timeout: float) -> float:
    """Seconds until the process used at most STILL_CPU_S of CPU over SETTLED_SECONDS."""
    start = time.monotonic()
    window = [(start, cpu_seconds(pid))]
    while True:
        time.sleep(1.0)
        now, used = time.monotonic(), cpu_seconds(pid)
        window = [(t, c) for t, c in window if now - t <= SETTLED_SECONDS] + [(now, used)]
        if now - window[0][0] >= SETTLED_SECONDS - 1 and used - window[0][1] <= STILL_CPU_S:
            return now - start
        if now - start > timeout:
            raise RuntimeError(f"the controller did not settle in {timeout:.0f}s")


def _run(args: argparse.Namespace, work: Path) -> dict[str, float]:
    defaults = bench.options([])  # bench.controller's vcsim delays and task cap
    archive, ref = build_image()
    bench.progress(f"image {ref}; starting the stack with a node")
    delays = bench.vcsim_delays(defaults)
    with LocalStack(work, node=True, images=[archive],
                    vcsim_task_delays=delays["vcsim_task_delays"],
                    vcsim_method_delays=delays["vcsim_method_delays"]) as local:
        operator = Operator(local.kubeconfig, work / "home", NAMESPACE)
        operator.install(local.vcenter, ref, "--set", "controller.replicas=1",
                         "--set", "webhook.replicas=1")
        pid = _controller_pid(local, operator)
        bench.progress(f"installed; the controller is PID {pid} on this machine")
        groups = bench.Groups(local, args.namespaces)
        groups.create_namespaces()
        started = time.monotonic()
        groups.create(0, args.groups, args.replicas)
        bound = bench.task_cap_bound(args.groups * args.replicas, defaults)

        def alive() -> None:
            if not Path(f"/proc/{pid}").exists():
                raise RuntimeError("the controller's container has stopped")

        waited = bench.wait_running(groups, alive, 4 * bound + 120, 1.0)
        if waited is None:
            raise RuntimeError("the groups did not converge")
        converged = time.monotonic() - started
        bench.progress(f"converged in {converged:.1f}s from the first create; settling")
        poll(groups.addressed, timeout=600, interval=2.0,
             what="every VM's guest address in its group's status")
        settle = _settle(pid, 600)
        bench.progress(f"settled in {settle:.1f}s; idle for {args.idle_seconds:.0f}s")
        time.sleep(args.idle_seconds)  # a window of time to measure, not a wait for an event
        alive()
        memory = bench.memory_mb(pid)
        operator.uninstall()
    return {"converge_s": converged, "bound_s": bound, "settle_s": settle, **memory}


def main(argv: list[str] | None = None) -> int:
    args = _options(argv)
    signal.signal(signal.SIGINT, bench.stop_cleanly)
    signal.signal(signal.SIGTERM, bench.stop_cleanly)
    with contextlib.ExitStack() as cleanup:
        work = args.work_dir or Path(cleanup.enter_context(
            tempfile.TemporaryDirectory(prefix="bench-controller-pod-")))
        figures = _run(args, work)
    print(f"{args.groups} groups x {args.replicas} converged in {figures['converge_s']:.1f}s "
          f"from the first create (task-cap bound {figures['bound_s']:.1f}s; the webhook and "
          f"the node share the 2 cores); settled {figures['settle_s']:.1f}s later")
    print(f"controller in its Pod, {args.idle_seconds:.0f}s idle after settling: "
          f"VmRSS {figures['VmRSS']:.1f} MB, VmHWM {figures['VmHWM']:.1f} MB")
    ok = figures["VmRSS"] <= TARGET_RSS_MB
    print(f"  {'PASS' if ok else 'FAIL'}  <= {TARGET_RSS_MB:.0f} MB RSS at {args.groups} groups "
          f"(in a Pod)")
    print(f"reproduce: .venv/bin/python -m bench.controller_pod --groups {args.groups} "
          f"--replicas {args.replicas} --namespaces {args.namespaces} "
          f"--idle-seconds {args.idle_seconds:.0f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
