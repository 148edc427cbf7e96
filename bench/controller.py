"""Controller benchmark: vmgroup-controller against vcsim with delays that model a real vCenter.

    make bench-controller                   # or: .venv/bin/python -m bench.controller --help
    make bench-controller BENCH_ARGS='--quick'   # a smoke run of a few minutes (10 groups)

The full run (1000 groups of 3, then 10,000 groups) takes about 35 minutes on 2 cores.
Phases, on one local stack (etcd, kube-apiserver, kube-controller-manager, vcsim):

1. converge: `--groups` VmGroups (cpu 1, memory 1, `--replicas` each, template
   vm-operator-template) are created over `--namespaces` namespaces while the controller is not
   running; then it starts and the time until every group reports phase RUNNING with all its
   replicas is measured from the start of its process (the API is listed every 0.5 s, every
   2 s at 1000 groups: the listing costs CPU the stack shares). The
   bound is what the task cap allows: ceil(groups x replicas / cap) x (clone + power-on delay).
   Target: within 1.1x of it, and at most 2 reconciles per group until all are RUNNING. The CPU
   each part of the stack used meanwhile is printed: on 2 cores they all share, it says who
   made the run slower than the bound.
2. settle and idle: once the controller has settled (nothing queued, no reconcile, no vCenter
   call but the idle ones and no change from the feed for 5 s, and every VM's guest address,
   which VMware Tools reports seconds after power-on, in its group's status), vCenter calls by
   method over `--idle-seconds`. Targets: nothing but the change feed's long poll
   (WaitForUpdatesEx, one per 60 s) and the session keep-alive (CurrentTime); and the feed
   quiet, i.e. no group queued by a vCenter change (`vmgroup_controller_vcenter_wakeups_total`)
   later than 30 s after convergence, until the end of the idle window. The periodic resync
   re-reads every group (one RetrieveProperties each); it is steady-state work, not idleness,
   so it is moved beyond the run (`--resync-seconds`, default 3600 here, 600 in the controller)
   and the output says so. The controller's memory is read here: target VmRSS <= 64 MB when
   `--groups` is 100 or fewer (`--groups 100 --rss-groups 0` measures just that;
   bench.controller_pod measures it in a Pod, as users run the controller).
3. memory: groups are added up to `--rss-groups` in all, with `--rss-replicas` VMs each (0 by
   default: the controller's memory goes with the groups, which it caches, more than with their
   VMs), and once all are RUNNING and settled the controller's VmRSS and VmHWM (its peak) are
   read from /proc. Target: VmHWM <= 150 MB. Then the controller is restarted: the time until
   it is ready (its informer has listed every group) and until it has looked at every group
   again (settled) is printed.

Per group, until all are RUNNING: reconciles, and the API requests the controller made (its
own count, `vmgroup_controller_api_requests_total{verb,resource}`): status writes, finalizer
writes, Event writes; other requests (lists, watches, the Lease) are listed apart.

vCenter calls are the controller's own count of every SOAP round trip
(`vmgroup_controller_vcenter_calls_total{method}` on /metrics): pyVmomi's property reads are
"Fetch", its RetrieveContents is "RetrieveProperties".

vcsim delays (milliseconds; options of their own):

    CloneVM_Task 2000 (--clone-ms)        PowerOnVM_Task, PowerOffVM_Task 500 (--power-ms)
    ReconfigVM_Task 500 (--reconfigure-ms)   Destroy_Task 500 (--destroy-ms)
    RetrieveProperties, RetrievePropertiesEx, Fetch 50 (--query-ms)

With `--delay task` (the default) the task takes the time and the call that starts it returns
at once, as on a real vCenter (vcsim's task delay, by task name: CloneVm, PowerOn, PowerOff,
ReconfigVm, Destroy). With `--delay method` the call itself takes the time and its task then
ends at once (vcsim's method delay, which sleeps before running the method without holding its
inventory lock): the model of this benchmark's figures until the controller stopped waiting for
tasks, kept to compare with them. The reads are method delays in both. Every other method
answers at once: logins, CurrentTime, FindChild, CreateFolder, the property collector's
CreateFilter, CancelWaitForUpdates and DestroyPropertyFilter, and WaitForUpdatesEx, a long poll
that a delay would only shift.

One way vcsim is busier than a real vCenter: for every change to any object while a long poll
waits, it collects every filter of that property collector again, once per filter. The cost
grows with the changes times the filters times the objects they cover, so the controller keeps
one filter per long poll over a ListView of the few objects it follows (the tasks in flight;
the VMs vCenter's events just named), instead of a filter per task and one over every VM.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from controller.__main__ import parser as controller_parser
from hack.stack import LocalStack
from hack.stack.components import Controller, install_crd
from hack.stack.process import cpu_seconds
from vmgroup_api import GROUP, PLURAL, VERSION

TARGET_RATIO, TARGET_RECONCILES, TARGET_QUIET_S = 1.1, 2.0, 30.0
TARGET_RSS_SMALL_MB, SMALL, TARGET_HWM_MB = 64.0, 100, 150.0
CONTROLLER = controller_parser()  # its flags' defaults are the benchmark's
IDLE_METHODS = frozenset({"WaitForUpdatesEx", "CurrentTime"})  # the feed's poll, keep-alive
SETTLE_SECONDS = 5.0  # no reconcile and no call but the idle ones for this long: settled
SETTLE_TIMEOUT = 600.0  # the change feed may still be catching up after convergence
SETTLE_TIMEOUT_RESTART = 1200.0  # a restarted controller looks at every group again

# option: (full run, --quick); other options have one default
SIZES: dict[str, tuple[float, float]] = {
    "groups": (1000, 10), "idle_seconds": (300, 20), "rss_groups": (10000, 50)}


@dataclass
class Snapshot:
    """What /metrics says at one moment."""

    calls: Counter[str] = field(default_factory=Counter)  # vCenter calls by method
    reconciles: Counter[str] = field(default_factory=Counter)  # by result
    queue: int = 0
    api: Counter[str] = field(default_factory=Counter)  # API requests, "verb resource"
    changes: int = 0  # VM changes the feed received
    wakeups: int = 0  # groups queued by them
    # reconciles until RUNNING: groups by bucket ("1.0", ..., "+Inf"; cumulative), and the sum
    passes: Counter[str] = field(default_factory=Counter)
    passes_sum: float = 0.0

    def __sub__(self, earlier: Snapshot) -> Snapshot:
        return Snapshot(self.calls - earlier.calls, self.reconciles - earlier.reconciles,
                        self.queue, self.api - earlier.api, self.changes - earlier.changes,
                        self.wakeups - earlier.wakeups, self.passes - earlier.passes,
                        self.passes_sum - earlier.passes_sum)


def _snapshot(controller: Controller) -> Snapshot:
    snap = Snapshot()
    text = controller.get("/metrics").decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vmgroup_controller_vcenter_calls_total":
                snap.calls[sample.labels["method"]] = int(sample.value)
            elif sample.name == "vmgroup_controller_reconciles_total":
                snap.reconciles[sample.labels["result"]] = int(sample.value)
            elif sample.name == "vmgroup_controller_queue_depth":
                snap.queue = int(sample.value)
            elif sample.name == "vmgroup_controller_reconciles_until_running_bucket":
                snap.passes[sample.labels["le"]] = int(sample.value)
            elif sample.name == "vmgroup_controller_reconciles_until_running_sum":
                snap.passes_sum = sample.value
            elif sample.name == "vmgroup_controller_vcenter_changes_total":
                snap.changes = int(sample.value)
            elif sample.name == "vmgroup_controller_vcenter_wakeups_total":
                snap.wakeups = int(sample.value)
            elif sample.name == "vmgroup_controller_api_requests_total":
                snap.api[f"{sample.labels['verb']} {sample.labels['resource']}"] = \
                    int(sample.value)
    return snap


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, in MB."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM")}


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Groups:
    """The benchmark's VmGroups through the Kubernetes API (no webhook: full specs)."""

    def __init__(self, local: LocalStack, namespaces: int) -> None:
        from kubernetes import client, config  # noqa: PLC0415 - slow import, after argparse

        api = config.new_client_from_config(config_file=str(local.kubeconfig))
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._client = client
        self.template = local.vcenter.template
        self.namespaces = [f"bench-{i}" for i in range(namespaces)]
        self.replicas: dict[tuple[str, str], int] = {}  # every group made: replicas wanted

    def create_namespaces(self) -> None:
        for name in self.namespaces:
            self._core.create_namespace(self._client.V1Namespace(
                metadata=self._client.V1ObjectMeta(name=name)))

    def create(self, first: int, last: int, replicas: int) -> None:
        """Groups vg-<first> .. vg-<last - 1>, round-robin over the namespaces."""
        def one(i: int) -> None:
            namespace, name = self.namespaces[i % len(self.namespaces)], f"vg-{i:04d}"
            self._custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "VmGroup",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"cpu": 1, "memory": 1, "replicas": replicas,
                         "template": self.template}})
            self.replicas[namespace, name] = replicas

        with ThreadPoolExecutor(max_workers=4) as pool:  # the client's pool has 4 connections
            list(pool.map(one, range(first, last)))

    def _made(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(replicas wanted, status) of each group made."""
        listing: Any = self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        for item in listing["items"]:
            meta = item["metadata"]
            wanted = self.replicas.get((meta["namespace"], meta["name"]))
            if wanted is not None:
                yield wanted, item.get("status") or {}

    def running(self) -> tuple[int, int]:
        """(groups RUNNING with every replica, groups in phase ERROR), of those made."""
        done = errors = 0
        for wanted, status in self._made():
            if status.get("phase") == "RUNNING" and status.get("currentReplicas") == wanted:
                done += 1
            errors += status.get("phase") == "ERROR"
        return done, errors

    def addressed(self) -> bool:
        """Whether every group made lists all its VMs, each with a guest address."""
        return all(len(vms := status.get("vms") or []) == wanted and
                   all(vm.get("ipAddresses") for vm in vms)
                   for wanted, status in self._made())


def wait_running(groups: Groups, alive: Callable[[], None], timeout: float,
                 interval: float) -> float | None:
    """Seconds until every group made is RUNNING with all its replicas (None: timed out)."""
    start = last_report = time.monotonic()
    total = len(groups.replicas)
    while True:
        alive()
        done, errors = groups.running()
        now = time.monotonic()
        if done == total:
            return now - start
        if now - start > timeout:
            progress(f"timed out: {done}/{total} RUNNING, {errors} in ERROR")
            return None
        if now - last_report >= 10:
            progress(f"{done}/{total} RUNNING, {errors} in ERROR, {now - start:.0f}s")
            last_report = now
        time.sleep(interval)


def _settle(controller: Controller, timeout: float, groups: Groups,
            tick: Callable[[], None] = lambda: None) -> tuple[float, Snapshot, bool]:
    """Wait until the controller has nothing left to do: nothing queued, and no reconcile, no
    vCenter call but the idle ones and no change from the feed for SETTLE_SECONDS, with every
    VM's guest address in its group's status (an address comes from VMware Tools seconds after
    power-on, and the feed brings it later still: news the controller must act on, not idle
    work). Returns (seconds until the last activity, what happened meanwhile, settled?)."""
    start = time.monotonic()
    first = last = _snapshot(controller)
    quiet_since = start
    while time.monotonic() - start < timeout:
        time.sleep(1.0)
        controller.process.check_alive()
        tick()
        snap = _snapshot(controller)
        busy = {m for m in (snap.calls - last.calls) if m not in IDLE_METHODS}
        if busy or snap.reconciles != last.reconciles or snap.queue or \
                snap.changes != last.changes:
            quiet_since = time.monotonic()
        last = snap
        if time.monotonic() - quiet_since >= SETTLE_SECONDS:
            if groups.addressed():
                return quiet_since - start, last - first, True
            quiet_since = time.monotonic()
    return time.monotonic() - start, last - first, False


class Wakeups:
    """When the feed last queued a group, watched from a moment on (every second)."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller
        self.since = time.monotonic()
        self.count = _snapshot(controller).wakeups
        self.last: float | None = None  # seconds after `since`

    def look(self) -> None:
        count = _snapshot(self._controller).wakeups
        if count != self.count:
            self.count, self.last = count, time.monotonic() - self.since


def _cpu(local: LocalStack) -> dict[str, float]:
    """CPU seconds each process of the stack (and this benchmark) has used so far."""
    used = {name: cpu_seconds(pid) for name, pid in local.pids().items()}
    used["benchmark"] = cpu_seconds(os.getpid())
    return used


def options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--quick", action="store_true",
        help="smoke run: 10 groups, 20 s idle, 50 groups for memory (explicit options win)")
    add("--groups", type=int, help="VmGroups to converge (default: 100; --quick: 10)")
    add("--replicas", type=int, default=3, help="VMs per group (default: %(default)s)")
    add("--namespaces", type=int, default=4, help="spread over (default: %(default)s)")
    add("--max-vcenter-tasks", type=int, default=CONTROLLER.get_default("max_vcenter_tasks"),
        help="the controller's task cap (default: %(default)s, the controller's)")
    add("--workers", type=int, default=CONTROLLER.get_default("workers"),
        help="the controller's workers (default: %(default)s, the controller's; 0: as many as "
        "the cap)")
    add("--resync-seconds", type=float, default=3600,
        help="the controller's periodic resync, beyond the run (default: %(default)s)")
    add("--idle-seconds", type=float, help="idle window (default: 300; --quick: 20)")
    add("--rss-groups", type=int,
        help="groups in all for the memory phase (default: 1000; --quick: 50; 0: skip it)")
    add("--rss-replicas", type=int, default=0,
        help="VMs per group added for the memory phase (default: %(default)s)")
    add("--delay", choices=("task", "method"), default="task",
        help="how vcsim spends the task delays: 'task' (the call returns at once and the task "
        "takes the time, as a real vCenter does) or 'method' (the call itself takes the time, "
        "then the task ends at once: this benchmark's model before the controller stopped "
        "waiting for tasks; default: %(default)s)")
    add("--clone-ms", type=int, default=2000, help="CloneVM_Task (default: %(default)s)")
    add("--power-ms", type=int, default=500,
        help="PowerOnVM_Task and PowerOffVM_Task (default: %(default)s)")
    add("--reconfigure-ms", type=int, default=500, help="ReconfigVM_Task (default: %(default)s)")
    add("--destroy-ms", type=int, default=500, help="Destroy_Task (default: %(default)s)")
    add("--query-ms", type=int, default=50,
        help="RetrieveProperties, RetrievePropertiesEx, Fetch (default: %(default)s)")
    add("--controller-args", default="", help="extra vmgroup-controller flags")
    add("--work-dir", type=Path,
        help="keep the stack's files and logs here (default: a temporary directory, removed)")
    args = parser.parse_args(argv)
    for name, (full, quick) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, type(full)(quick if args.quick else full))
    if args.rss_groups and args.rss_groups < args.groups:
        parser.error("--rss-groups counts every group: give at least --groups")
    return args


# vcsim's names for the tasks (task delays) and for the calls that start them (method delays)
TASK_NAMES = {"clone_ms": ("CloneVm", "CloneVM_Task"), "power_ms": ("PowerOn", "PowerOnVM_Task"),
              "reconfigure_ms": ("ReconfigVm", "ReconfigVM_Task"),
              "destroy_ms": ("Destroy", "Destroy_Task")}


def vcsim_delays(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    """LocalStack's vcsim delays: {"vcsim_task_delays": ..., "vcsim_method_delays": ...}."""
    tasks, methods = {}, {}
    for option, (task, method) in TASK_NAMES.items():
        if args.delay == "task":
            tasks[task] = getattr(args, option)
        else:
            methods[method] = getattr(args, option)
    if args.delay == "task":
        tasks["PowerOff"] = args.power_ms
    else:
        methods["PowerOffVM_Task"] = args.power_ms
    methods.update(dict.fromkeys(("RetrieveProperties", "RetrievePropertiesEx", "Fetch"),
                                 args.query_ms))
    return {"vcsim_task_delays": tasks, "vcsim_method_delays": methods}


def task_cap_bound(vms: int, args: argparse.Namespace) -> float:
    """Seconds the task cap allows for `vms` clones and power-ons, nothing else counted."""
    cap: int = args.max_vcenter_tasks
    per_vm = float(args.clone_ms + args.power_ms) / 1000
    return math.ceil(vms / cap) * per_vm


@dataclass
class Result:
    converge_s: float | None = None  # from the controller's process start
    ready_s: float = 0.0  # from its start until /readyz said ok
    settle_s: float = 0.0
    settled: bool = True
    phases: dict[str, Snapshot] = field(default_factory=dict)  # calls by phase, in order
    rss_at_groups: dict[str, float] = field(default_factory=dict)
    rss_converge_s: float | None = None
    rss_settled: bool = False
    memory: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process, converging
    quiet_s: float | None = None  # the feed's last wakeup after convergence (None: none)
    watched_s: float = 0.0  # how long after convergence wakeups were watched
    restart_ready_s: float | None = None
    restart_settle_s: float | None = None


def _run(args: argparse.Namespace, work: Path, result: Result) -> None:
    delays = vcsim_delays(args)
    with LocalStack(work, vcsim_task_delays=delays["vcsim_task_delays"],
                    vcsim_method_delays=delays["vcsim_method_delays"]) as local:
        progress(f"stack up; logs in {local.log_dir}")
        install_crd(local.kubeconfig)
        groups = Groups(local, args.namespaces)
        groups.create_namespaces()
        groups.create(0, args.groups, args.replicas)
        progress(f"{args.groups} groups x {args.replicas} created; starting the controller")
        flags = [f"--workers={args.workers}", f"--max-vcenter-tasks={args.max_vcenter_tasks}",
                 f"--resync-seconds={args.resync_seconds}", *args.controller_args.split()]
        controller = _converge(args, local, groups, flags, result)
        if controller is None:
            return
        _idle(args, controller, groups, result)
        if args.rss_groups > args.groups:
            _memory(args, local, groups, controller, flags, result)


def _converge(args: argparse.Namespace, local: LocalStack, groups: Groups, flags: list[str],
              result: Result) -> Controller | None:
    """Phase 1; the controller, or None if the groups did not converge."""
    cpu = _cpu(local)
    started = time.monotonic()
    controller = local.start_controller(flags)
    result.ready_s = time.monotonic() - started
    timeout = 4 * task_cap_bound(args.groups * args.replicas, args) + 120
    # Listing every group costs the API server and this process CPU that the stack shares:
    # at 1000 groups every 2 s (within 0.3 % of the bound), not every 0.5 s.
    waited = wait_running(groups, controller.process.check_alive, timeout,
                           max(0.5, args.groups / 500))
    if waited is None:
        for part in (controller, local.vcsim):
            if part is not None:
                progress(f"last lines of {part.process.log_path}:\n"
                          f"{part.process.log_tail(10)}")
        return None
    result.converge_s = result.ready_s + waited
    result.cpu = {name: used - cpu.get(name, 0.0) for name, used in _cpu(local).items()}
    result.phases["converge"] = _snapshot(controller) - Snapshot()  # counted from zero
    return controller


def _idle(args: argparse.Namespace, controller: Controller, groups: Groups,
          result: Result) -> None:
    """Phase 2: settle, then idle; the feed's wakeups are watched throughout."""
    wakeups = Wakeups(controller)
    progress(f"converged in {result.converge_s:.1f}s; settling")
    result.settle_s, result.phases["settle"], result.settled = _settle(
        controller, SETTLE_TIMEOUT, groups, wakeups.look)
    start = _snapshot(controller)
    progress(f"idle for {args.idle_seconds:.0f}s")
    deadline = time.monotonic() + args.idle_seconds
    while time.monotonic() < deadline:
        time.sleep(1.0)
        controller.process.check_alive()
        wakeups.look()
    result.quiet_s, result.watched_s = wakeups.last, time.monotonic() - wakeups.since
    result.phases[f"idle {args.idle_seconds:.0f}s"] = _snapshot(controller) - start
    assert controller.process.pid is not None
    result.rss_at_groups = memory_mb(controller.process.pid)


def _memory(args: argparse.Namespace, local: LocalStack, groups: Groups,
            controller: Controller, flags: list[str], result: Result) -> None:
    """Phase 3: more groups, the controller's memory, then a restart."""
    start = _snapshot(controller)
    added = args.rss_groups - args.groups
    progress(f"adding {added} groups x {args.rss_replicas} for the memory phase")
    created = time.monotonic()
    groups.create(args.groups, args.rss_groups, args.rss_replicas)
    timeout = 4 * task_cap_bound(added * args.rss_replicas, args) + 300 + 0.1 * added
    waited = wait_running(groups, controller.process.check_alive, timeout, 2.0)
    if waited is not None:
        result.rss_converge_s = time.monotonic() - created
        result.rss_settled = _settle(controller, SETTLE_TIMEOUT, groups)[2]
    result.phases[f"+{added} groups"] = _snapshot(controller) - start
    assert controller.process.pid is not None
    result.memory = memory_mb(controller.process.pid)
    if waited is None:
        return
    progress(f"restarting the controller with {args.rss_groups} groups")
    controller.process.stop()
    started = time.monotonic()
    controller = local.start_controller(flags)
    result.restart_ready_s = time.monotonic() - started
    waited_s, _, settled = _settle(controller, SETTLE_TIMEOUT_RESTART, groups)
    if settled:
        result.restart_settle_s = result.restart_ready_s + waited_s


def _report(args: argparse.Namespace, result: Result) -> list[tuple[str, bool]]:
    vms = args.groups * args.replicas
    bound = task_cap_bound(vms, args)
    delays = "; ".join(f"{kind.split('_')[1]} " + ", ".join(f"{m} {ms}" for m, ms in d.items())
                       for kind, d in vcsim_delays(args).items() if d)
    print(f"\nvmgroup-controller: {args.groups} VmGroups x {args.replicas} replicas in "
          f"{args.namespaces} namespaces, --max-vcenter-tasks {args.max_vcenter_tasks} "
          f"--workers {args.workers}; {os.cpu_count()} CPUs for the whole stack")
    print(f"vcsim delays (ms): {delays}; every other method: none")
    print(f"periodic resync at {args.resync_seconds:.0f}s (the controller's default is "
          f"{CONTROLLER.get_default('resync_seconds'):.0f}s), "
          "outside the run: a resync reads every group again (one RetrieveProperties each)")
    verdicts: list[tuple[str, bool]] = []
    if result.converge_s is None:
        print(f"did NOT converge within the timeout ({4 * bound + 120:.0f}s)")
        verdicts.append((f"converge within {TARGET_RATIO}x the bound", False))
    else:
        ratio = result.converge_s / bound
        print(f"converge: {result.converge_s:.1f}s from the controller's start "
              f"(ready after {result.ready_s:.1f}s); bound ceil({vms}/"
              f"{args.max_vcenter_tasks}) x {(args.clone_ms + args.power_ms) / 1000:g}s = "
              f"{bound:.1f}s; ratio {ratio:.2f}")
        if result.cpu:
            print("CPU seconds used while converging: " + ", ".join(
                f"{name} {used:.1f}" for name, used in sorted(result.cpu.items(),
                                                              key=lambda kv: -kv[1])))
        print(f"settle:   the last reconcile, non-idle vCenter call or feed change came "
              f"{result.settle_s:.1f}s after convergence" + (
                  "" if result.settled else f": did NOT settle within {SETTLE_TIMEOUT:.0f}s"))
        quiet = result.quiet_s or 0.0
        print("feed:     the last group queued by a vCenter change: " + (
            f"{quiet:.1f}s after convergence" if result.quiet_s is not None else "none")
            + f" (watched for {result.watched_s:.0f}s)")
        verdicts.append((f"converge within {TARGET_RATIO}x the bound", ratio <= TARGET_RATIO))
        verdicts.append((f"feed quiet within {TARGET_QUIET_S:.0f}s of convergence",
                         result.settled and quiet <= TARGET_QUIET_S))
    if result.phases:
        _calls_table(result.phases)
    if (converge := result.phases.get("converge")) is not None:
        _per_group(converge, args.groups)
        mean = _passes(converge)
        verdicts.append((f"<= {TARGET_RECONCILES:g} reconciles per fresh group until RUNNING "
                         "(mean)", mean is not None and mean <= TARGET_RECONCILES))
    idle = next((s for name, s in result.phases.items() if name.startswith("idle")), None)
    if idle is not None:
        others = {m: n for m, n in idle.calls.items() if m not in IDLE_METHODS and n}
        verdicts.append(("idle: no vCenter call but WaitForUpdatesEx and CurrentTime"
                         + (f" (also: {others})" if others else ""), not others))
    if result.rss_at_groups:
        print(f"controller memory with {args.groups} groups, idle: "
              f"VmRSS {result.rss_at_groups['VmRSS']:.1f} MB, "
              f"VmHWM {result.rss_at_groups['VmHWM']:.1f} MB")
        if args.groups <= SMALL:
            verdicts.append((f"<= {TARGET_RSS_SMALL_MB:.0f} MB RSS at {args.groups} groups",
                             result.rss_at_groups["VmRSS"] <= TARGET_RSS_SMALL_MB))
    if args.rss_groups > args.groups:
        added = args.rss_groups - args.groups
        if result.rss_converge_s is not None:
            print(f"memory phase: +{added} groups x {args.rss_replicas} converged in "
                  f"{result.rss_converge_s:.1f}s from their creation (bound "
                  f"{task_cap_bound(added * args.rss_replicas, args):.1f}s)"
                  + ("" if result.rss_settled else "; did NOT settle"))
        if result.memory:
            print(f"controller memory with {args.rss_groups} groups: "
                  f"VmRSS {result.memory['VmRSS']:.1f} MB, "
                  f"VmHWM (peak) {result.memory['VmHWM']:.1f} MB")
        ok = result.rss_converge_s is not None and bool(result.memory) and \
            result.memory["VmHWM"] <= TARGET_HWM_MB
        verdicts.append((f"<= {TARGET_HWM_MB:.0f} MB peak RSS at {args.rss_groups} groups"
                         + ("" if result.rss_converge_s is not None else " (not converged)"),
                         ok))
        if result.restart_ready_s is not None:
            print(f"restart with {args.rss_groups} groups: ready (every group listed) after "
                  f"{result.restart_ready_s:.1f}s; every group looked at again after "
                  + (f"{result.restart_settle_s:.1f}s" if result.restart_settle_s is not None
                     else f"more than {SETTLE_TIMEOUT_RESTART:.0f}s"))
    return verdicts


def _calls_table(phases: dict[str, Snapshot]) -> None:
    methods = sorted({m for s in phases.values() for m, n in s.calls.items() if n},
                     key=lambda m: -phases.get("converge", Snapshot()).calls[m])
    width = max([len(m) for m in methods] + [len("vCenter calls")])
    cols = [max(len(name), 8) for name in phases]
    print(f"{'vCenter calls':<{width}} " + " ".join(
        f"{name:>{w}}" for name, w in zip(phases, cols, strict=True)))
    for method in [*methods, "total"]:
        cells = [sum(s.calls.values()) if method == "total" else s.calls[method]
                 for s in phases.values()]
        print(f"{method:<{width}} " + " ".join(
            f"{n:>{w}}" for n, w in zip(cells, cols, strict=True)))
    reconciles = [f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(s.reconciles.items()))
                  for name, s in phases.items() if s.reconciles]
    print("reconciles by result: " + "; ".join(reconciles))


def _passes(converge: Snapshot) -> float | None:
    """Reconciles each group took until it reported RUNNING (the controller's histogram):
    printed; their mean (None: no group counted)."""
    groups = converge.passes["+Inf"]
    if not groups:
        return None
    within = {le: n for le, n in converge.passes.items() if le != "+Inf"}
    shares = ", ".join(f"<= {float(le):g}: {100 * n / groups:.1f}%"
                       for le, n in sorted(within.items(), key=lambda kv: float(kv[0]))
                       if float(le) <= 5)
    mean = converge.passes_sum / groups
    print(f"reconciles until RUNNING, each group counted from its creation: mean {mean:.2f} "
          f"over {groups} groups ({shares})")
    return mean


def _per_group(converge: Snapshot, groups: int) -> None:
    """What one group cost until every group was RUNNING: reconciles and API writes (early
    groups' later reconciles, such as the guests' addresses, count too)."""
    api = converge.api
    per = {
        "reconciles": sum(converge.reconciles.values()),
        "status writes (patch vmgroups/status)": api["patch vmgroups/status"],
        "finalizer writes (patch vmgroups)": api["patch vmgroups"],
        "Event writes (create or patch events)": api["create events"] + api["patch events"],
    }
    print(f"per group until all RUNNING ({groups} groups): " + "; ".join(
        f"{name} {n / groups:.2f}" for name, n in per.items()))
    others = {k: n for k, n in api.items() if n and k not in (
        "patch vmgroups/status", "patch vmgroups", "create events", "patch events")}
    print("other API requests while converging: " + (", ".join(
        f"{k} {n}" for k, n in sorted(others.items())) or "none"))
    print(f"change feed while converging: {converge.changes} VM changes received, "
          f"{converge.wakeups} groups queued by them")


def stop_cleanly(signum: int, _frame: object) -> None:
    # Unwinds through LocalStack, which stops every part; a second signal (`timeout` passes
    # its own on) must not cut that short and leave parts running.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = options(argv)
    # A background job inherits SIGINT ignored; SIGTERM would end us without stopping the stack.
    signal.signal(signal.SIGINT, stop_cleanly)
    signal.signal(signal.SIGTERM, stop_cleanly)
    result = Result()
    with contextlib.ExitStack() as cleanup:
        work = args.work_dir or Path(cleanup.enter_context(
            tempfile.TemporaryDirectory(prefix="bench-controller-")))
        try:
            _run(args, work, result)
        finally:  # a failed run still reports what it measured
            verdicts = _report(args, result)
    for name, ok in verdicts:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print("reproduce: .venv/bin/python -m bench.controller "
          f"--groups {args.groups} --replicas {args.replicas} --namespaces {args.namespaces} "
          f"--max-vcenter-tasks {args.max_vcenter_tasks} --workers {args.workers} "
          f"--resync-seconds {args.resync_seconds:.0f} --idle-seconds {args.idle_seconds:.0f} "
          f"--rss-groups {args.rss_groups} --rss-replicas {args.rss_replicas} "
          f"--clone-ms {args.clone_ms} --power-ms {args.power_ms} "
          f"--reconfigure-ms {args.reconfigure_ms} --destroy-ms {args.destroy_ms} "
          f"--query-ms {args.query_ms} --delay {args.delay}"
          + (f" --controller-args='{args.controller_args}'" if args.controller_args else ""))
    return 0 if verdicts and all(ok for _, ok in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
