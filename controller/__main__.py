"""`vmgroup-controller`: reconcile every VmGroup against vCenter.

Every flag can also be given as an environment variable VMGROUP_CONTROLLER_<FLAG>. The vCenter
password comes from --vcenter-password-file (a mounted Secret) or VMGROUP_VCENTER_PASSWORD,
never from a flag (argv is visible to every local user).
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Set
from pathlib import Path
from typing import Any

from kubekit.cli import (
    LOG_LEVELS,
    ConfigError,
    EnvParser,
    client_parts_only,
    fail,
    kube_client,
)

ENV_PREFIX = "VMGROUP_CONTROLLER_"
IDLE_TRIM_SECONDS = 30.0  # how often an idle controller gives freed memory back


def parser() -> argparse.ArgumentParser:
    p = EnvParser("vmgroup-controller", "Controller of vmgroup-operator: clones, powers, "
                  "resizes, scales and cleans up the vSphere VMs of every VmGroup and reports "
                  "their status.", ENV_PREFIX)
    add = p.add

    add("kubeconfig", "", "kubeconfig (default: the Pod's service account)")
    add("vcenter-host", None, "vCenter host name or address")
    add("vcenter-port", 443, "vCenter port (default: %(default)s)", int)
    add("vcenter-username", None, "vCenter user")
    add("vcenter-password-file", "", "file holding the vCenter password (a mounted Secret)")
    add("vcenter-ca-file", "", "CA bundle to verify vCenter with (default: system CAs)")
    p.add_argument("--vcenter-insecure", action="store_true",
                   default=p.env("vcenter-insecure", "") in ("1", "true"),
                   help="do not verify vCenter's certificate (not for production)")
    add("vcenter-timeout", 30.0, "seconds one vCenter call may take (default: %(default)s)",
        float)
    add("vcenter-keepalive-seconds", 300.0, "an idle session is kept alive this often "
        "(default: %(default)s; vCenter drops idle sessions after 30 minutes)", float)
    add("datacenter", "", "datacenter (default: the only one)")
    add("base-folder", "vmgroup-operator", "VM folder holding the groups' folders")
    add("resource-pool", "", "resource pool for new VMs (default: the first cluster's)")
    add("datastore", "", "datastore for new VMs (default: the template's)")
    add("workers", 4, "groups reconciled in parallel (default: %(default)s; a reconcile "
        "starts vCenter tasks and does not wait for them)", int)
    add("max-vcenter-tasks", 10, "vCenter tasks at once, all groups together "
        "(default: %(default)s)", int)
    add("resync-seconds", 600, "every group is looked at this often (default: %(default)s)",
        float)
    add("watch-seconds", 240.0, "the API server ends each watch after this long; one silent "
        "for 1.25 times as long is dropped (default: %(default)s)", float)
    add("health-bind", "0.0.0.0:8080", "/healthz, /readyz and /metrics (default: %(default)s)")
    p.add_argument("--no-leader-elect", dest="leader_elect", action="store_false",
                   default=p.env("leader-elect", "true") not in ("0", "false"),
                   help="run without leader election (a single replica only)")
    add("leader-election-namespace", os.environ.get("POD_NAMESPACE", "default"),
        "namespace of the Lease (default: $POD_NAMESPACE or default)")
    add("lease-name", "vmgroup-controller", "name of the Lease (default: %(default)s)")
    add("log-level", "info", "debug, info, warning or error (default: %(default)s)",
        choices=LOG_LEVELS)
    return p


def _password(args: argparse.Namespace) -> str | None:
    if args.vcenter_password_file:
        try:
            return Path(args.vcenter_password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the vCenter password file "
                              f"{args.vcenter_password_file}: {exc.strerror} (mount the "
                              "Secret there, or set VMGROUP_VCENTER_PASSWORD)") from None
    return os.environ.get("VMGROUP_VCENTER_PASSWORD")


def _worker(queue: Any, reconciler: Any, outage: Any, echoes: Any,
            log: logging.Logger) -> Callable[[], None]:
    """A worker: take a key, reconcile it, requeue it when unfinished, when failed (with
    backoff), or when vCenter answers again (it did not)."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    from . import metrics  # noqa: PLC0415 - after logging is configured
    from .vsphere import VSphereError  # noqa: PLC0415

    def work() -> None:
        while (key := queue.get()) is not None:
            started = time.perf_counter()
            echoes.begin(key)
            outcome = None
            try:
                outcome = reconciler.reconcile(*key)
                queue.forget(key)
                result = "converged" if outcome.converged else "progressing"
                metrics.RECONCILES.labels(result).inc()
                log.debug("reconciled", extra={
                    "vmgroup": "/".join(key), "result": result,
                    "duration": round(time.perf_counter() - started, 3)})
                if not outcome.converged and not outcome.waiting:
                    queue.add_after(key, 1.0)
            except Exception as exc:
                metrics.RECONCILES.labels("error").inc()
                if isinstance(exc, VSphereError) and exc.unreachable:
                    outage.wait_for_vcenter(key)
                    log.warning("reconcile failed", extra={
                        "vmgroup": "/".join(key), "error": str(exc),
                        "retry": "when vCenter answers"})
                    continue
                delay = queue.retry(key)
                # vCenter and API errors are expected; anything else is a bug: its traceback.
                expected = isinstance(exc, VSphereError | ApiException)
                log.warning("reconcile failed", exc_info=not expected, extra={
                    "vmgroup": "/".join(key), "error": str(exc), "retry_in": delay})
            finally:
                metrics.DURATION.observe(time.perf_counter() - started)
                queue.done(key)
                echoes.end(key, outcome.observed if outcome is not None else None)

    return work


def _follow_vcenter(vcenter: Any, queue: Any, sessions: Any, tasks: Any
                    ) -> tuple[Any, Any, Any]:
    """vCenter's change feed (through the echo filter) and the outage wait, started."""
    from . import metrics  # noqa: PLC0415
    from .echo import EchoFilter  # noqa: PLC0415
    from .feed import VCenterFeed  # noqa: PLC0415

    def wake(key: Any) -> None:
        metrics.VCENTER_WAKEUPS.inc()
        queue.add(key)

    # A group with VM actions in flight hears of their ends from them, not from the feed.
    echoes: EchoFilter[Any] = EchoFilter(wake, quiet=tasks.busy)
    echoes.start()
    feed = VCenterFeed(vcenter, echoes.changed).start()
    return echoes, feed, _outage(queue, feed, sessions)


def _vm_actions(api: Any, sessions: Any, informer: Any, queue: Any, slots: int
                ) -> tuple[Any, Any, Any]:
    """The task watch, the VM actions in flight, and the reconciler that starts them."""
    from . import metrics  # noqa: PLC0415
    from .reconciler import Reconciler  # noqa: PLC0415
    from .tasks import Tasks  # noqa: PLC0415
    from .vsphere import TaskWatch, VSphere  # noqa: PLC0415

    watch = TaskWatch(sessions.get).start()
    tasks: Tasks[Any] = Tasks(slots, watch, enqueue=queue.add, enqueue_after=queue.add_after,
                              # the reconciler is made next, with these tasks
                              ended=lambda chain, error: reconciler.ended(chain, error),  # noqa: PLW0108
                              forgive=VSphere.done_anyway)
    reconciler = Reconciler(api, sessions.get, informer, tasks)
    metrics.TASKS_IN_FLIGHT.set_function(lambda: len(tasks))
    return watch, tasks, reconciler


def _outage(queue: Any, feed: Any, sessions: Any) -> Any:
    """Groups that failed because vCenter did not answer are queued again when it does."""
    from .recovery import Outage  # noqa: PLC0415

    def recovered(keys: Set[Any]) -> None:
        for key in keys:
            queue.forget(key)  # its backoff counted timeouts of an outage that is over
            queue.add(key)
        feed.reconnect_now()

    return Outage(lambda: sessions.get().keep_alive(), recovered).start()


def _lead(elector: Any, stop: threading.Event, lost: threading.Event,
          log: logging.Logger) -> bool:
    """Wait to lead (False: stopped first), then keep the lease; losing it stops everything."""
    log.info("waiting for leadership", extra={"lease": f"{elector.namespace}/{elector.name}",
                                              "identity": elector.identity})
    if not elector.acquire(stop):
        return False
    log.info("leading", extra={"identity": elector.identity})

    def on_lost() -> None:
        log.error("lost the lease; stopping")
        lost.set()
        stop.set()

    elector.hold(stop, on_lost)
    return True


def _run_until(stop: threading.Event, idle: Callable[[], bool]) -> None:
    """Wait for `stop`; meanwhile, while idle, give back what bursts of work left in the heaps."""
    from . import malloc  # noqa: PLC0415

    while not stop.wait(IDLE_TRIM_SECONDS):
        if idle():
            malloc.give_back()


def _lean_process() -> None:
    """Set what must be set before any thread starts and before the first import of the
    kubernetes client."""
    from . import malloc  # noqa: PLC0415

    malloc.few_arenas()
    client_parts_only()


def main(argv: list[str] | None = None) -> int:
    _lean_process()
    args = parser().parse_args(argv)
    try:
        password = _password(args)
        if not password:
            raise ConfigError("no vCenter password: give --vcenter-password-file or "
                              "VMGROUP_VCENTER_PASSWORD")
        api = kube_client(args.kubeconfig, f"--kubeconfig or {ENV_PREFIX}KUBECONFIG")
    except ConfigError as exc:
        fail("vmgroup-controller", str(exc))

    from kubekit import logs  # noqa: PLC0415 - one JSON log format for both parts

    logging.config.dictConfig(logs.dict_config(args.log_level))

    from kubekit.apicount import count_requests  # noqa: PLC0415
    from kubekit.leader import LeaseElector  # noqa: PLC0415
    from kubekit.queue import WorkQueue  # noqa: PLC0415

    from . import metrics  # noqa: PLC0415
    from .informer import Key, VmGroupInformer  # noqa: PLC0415
    from .vsphere import Sessions, VCenterConfig  # noqa: PLC0415

    vcenter = VCenterConfig(
        host=args.vcenter_host, port=args.vcenter_port, username=args.vcenter_username,
        password=password, ca_file=args.vcenter_ca_file or None,
        insecure=args.vcenter_insecure, datacenter=args.datacenter or None,
        base_folder=args.base_folder, resource_pool=args.resource_pool or None,
        datastore=args.datastore or None, max_tasks=args.max_vcenter_tasks,
        timeout=args.vcenter_timeout)
    count_requests(api, metrics.count_api_request)
    sessions = Sessions(vcenter, keepalive_seconds=args.vcenter_keepalive_seconds)
    log = logging.getLogger("vmgroup.controller")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    queue: WorkQueue[Key] = WorkQueue()
    informer = VmGroupInformer(api, queue, resync_seconds=args.resync_seconds,
                               watch_seconds=args.watch_seconds)
    elector = LeaseElector(api, args.leader_election_namespace, args.lease_name,
                           f"{socket.gethostname()}_{os.getpid()}") if args.leader_elect else None
    workers: list[threading.Thread] = []
    count = max(1, args.workers)
    metrics.QUEUE_DEPTH.set_function(lambda: len(queue))
    health = metrics.serve(
        args.health_bind, healthy=lambda: all(w.is_alive() for w in workers),
        # A standby is ready (it is healthy and waiting); a leader once VmGroups are listed.
        ready=lambda: informer.synced.is_set() or (
            elector is not None and not elector.leading.is_set()))
    lost = threading.Event()
    if elector is not None and not _lead(elector, stop, lost, log):
        health.shutdown()
        return 0

    informer.start()
    watch, tasks, reconciler = _vm_actions(api, sessions, informer, queue,
                                           args.max_vcenter_tasks)
    echoes, feed, outage = _follow_vcenter(vcenter, queue, sessions, tasks)
    work = _worker(queue, reconciler, outage, echoes, log)
    workers += [threading.Thread(target=work, name=f"worker-{i}", daemon=True)
                for i in range(count)]
    for worker in workers:
        worker.start()
    log.info("started", extra={"workers": count, "vcenter": args.vcenter_host})
    _run_until(stop, idle=lambda: not len(queue) and not len(tasks))
    log.info("stopping")
    for part in (informer, feed, outage, echoes, watch, tasks):
        part.stop()
    queue.close()
    for worker in workers:
        worker.join(timeout=30)
    if elector is not None:
        elector.release()  # after the workers: no reconcile runs once a successor may start
    health.shutdown()
    sessions.close()
    return 1 if lost.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
