"""vCenter outage benchmark: how long a group takes to converge once a frozen vCenter answers.

    make bench-outage                        # or: .venv/bin/python -m bench.vcenter_outage --help

The case as a new user found it: a VmGroup scaled from 2 to 6 VMs (clones take 2 s in vcsim),
vcsim frozen with SIGSTOP `--freeze-after` seconds later for `--freeze-seconds`, then resumed;
the controller runs with its default call timeout (30 s) unless `--vcenter-timeout` says
otherwise. Each run measures the seconds from the thaw until the group is RUNNING 6/6 with
every VM powered on (vCenter's own word), then scales back to 2. Target: every run within 15 s.

`--delay method` puts the 2 s on the CloneVM_Task call itself (vcsim's method delay: the call
is slow); `--delay task` (the default) on its task, as a real vCenter does (the call returns at
once, the task takes the time, so a freeze catches the long polls that follow tasks). About
45 s per run with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hack.stack import LocalStack, poll
from hack.stack.components import install_crd, kubectl

GROUP = """
apiVersion: vm.codeconnect.vmworld.com/v1alpha1
kind: VmGroup
metadata: {name: vg-outage}
spec: {replicas: 2, template: vm-operator-template}
"""


def _options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--runs", type=int, default=5, help="freezes, one per scale-up (default: %(default)s)")
    add("--freeze-after", type=float, default=1.0, help="seconds from scale to SIGSTOP")
    add("--freeze-seconds", type=float, default=30.0, help="seconds vcsim stays frozen")
    add("--clone-ms", type=int, default=2000, help="clone delay (default: %(default)s)")
    add("--delay", choices=("task", "method"), default="task", help="where the clone delay is")
    add("--vcenter-timeout", type=float, default=None,
        help="the controller's --vcenter-timeout (default: its own default)")
    return parser.parse_args(argv)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _options(argv)
    delays = {"vcsim_task_delays": {"CloneVm": args.clone_ms}} if args.delay == "task" else \
        {"vcsim_method_delays": {"CloneVM_Task": args.clone_ms}}
    controller_args = [] if args.vcenter_timeout is None else \
        [f"--vcenter-timeout={args.vcenter_timeout}"]
    recoveries: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-outage-") as work, \
            LocalStack(Path(work), **delays) as stack:  # type: ignore[arg-type]
        def run(*words: str, stdin: str | None = None) -> str:
            return kubectl(stack.kubeconfig, "-n", "default", *words, stdin=stdin)

        install_crd(stack.kubeconfig)
        stack.start_webhook()
        stack.start_controller(controller_args)
        run("apply", "-f", "-", stdin=GROUP)

        def at(replicas: int) -> bool:
            status = json.loads(run("get", "vg", "vg-outage", "-o", "json")).get("status", {})
            return (status.get("phase"), status.get("currentReplicas"),
                    status.get("desiredReplicas")) == ("RUNNING", replicas, replicas)

        poll(lambda: at(2), timeout=60, what="2 VMs")
        assert stack.vcsim is not None
        pid = stack.vcsim.process.pid
        assert pid is not None
        for number in range(args.runs):
            run("scale", "vg", "vg-outage", "--replicas=6")
            time.sleep(args.freeze_after)  # the outage's start and length are the experiment
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(args.freeze_seconds)
            finally:
                os.kill(pid, signal.SIGCONT)
            thawed = time.monotonic()
            poll(lambda: at(6), timeout=600, interval=0.1, what="6 VMs after the thaw")
            recoveries.append(time.monotonic() - thawed)
            _log(f"run {number + 1}: converged {recoveries[-1]:.1f}s after the thaw")
            run("scale", "vg", "vg-outage", "--replicas=2")
            poll(lambda: at(2), timeout=120, what="back to 2 VMs")
    timeout = "default (30 s)" if args.vcenter_timeout is None else f"{args.vcenter_timeout} s"
    print(f"\nvCenter outage: scale 2 -> 6, clone {args.clone_ms} ms ({args.delay} delay), "
          f"frozen {args.freeze_after} s later for {args.freeze_seconds} s; call timeout "
          f"{timeout}")
    print("seconds from thaw to RUNNING 6/6: " + ", ".join(f"{r:.1f}" for r in recoveries))
    print(f"median {statistics.median(recoveries):.1f} s, max {max(recoveries):.1f} s "
          f"(target: every run within 15 s)")
    ok = max(recoveries) <= 15
    print(f"  {'PASS' if ok else 'FAIL'}  every run within 15 s")
    print("reproduce: .venv/bin/python -m bench.vcenter_outage " + " ".join(sys.argv[1:]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
