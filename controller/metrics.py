"""The controller's Prometheus metrics and its health endpoints, on one small HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

RECONCILES = Counter("vmgroup_controller_reconciles_total",
                     "Reconciles by result (converged, progressing, error).", ["result"])
DURATION = Histogram("vmgroup_controller_reconcile_duration_seconds",
                     "Time one reconcile took, vCenter tasks included.",
                     buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300))
PASSES = Histogram("vmgroup_controller_reconciles_until_running",
                   "Reconciles a group took from a new generation (its creation, a spec change) "
                   "until it first reported RUNNING for it.",
                   buckets=(1, 2, 3, 4, 5, 8, 13, 21, 34))
VCENTER_CALLS = Counter("vmgroup_controller_vcenter_calls_total",
                        "vCenter calls by method.", ["method"])
API_REQUESTS = Counter("vmgroup_controller_api_requests_total",
                       "Kubernetes API requests by verb and resource.", ["verb", "resource"])
QUEUE_DEPTH = Gauge("vmgroup_controller_queue_depth", "VmGroups waiting to be reconciled.")
VCENTER_CHANGES = Counter("vmgroup_controller_vcenter_changes_total",
                          "VM events and guest addresses the change feed received from vCenter.")
VCENTER_WAKEUPS = Counter("vmgroup_controller_vcenter_wakeups_total",
                          "Groups queued because vCenter changed (after the echo filter).")
TASKS_IN_FLIGHT = Gauge("vmgroup_controller_vm_actions_in_flight",
                        "VM actions (chains of vCenter tasks) started and not yet ended.")
MANAGED_VMS = Gauge("vmgroup_controller_managed_vms",
                    "VMs owned by VmGroups, as last observed.")

def count_api_request(verb: str, resource: str) -> None:
    API_REQUESTS.labels(verb, resource).inc()


_managed: dict[tuple[str, str], int] = {}
_managed_lock = threading.Lock()


def observed_vms(key: tuple[str, str], count: int | None) -> None:
    """Record how many VMs a group owns (None: the group is gone)."""
    with _managed_lock:
        if count is None:
            _managed.pop(key, None)
        else:
            _managed[key] = count
        MANAGED_VMS.set(sum(_managed.values()))


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(bind: str, *, healthy: Callable[[], bool], ready: Callable[[], bool]) -> WSGIServer:
    """/healthz, /readyz and /metrics on `bind` (host:port), in a daemon thread."""

    def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            start("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [generate_latest()]
        checks = {"/healthz": healthy, "/readyz": ready}
        if path not in checks:
            start("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        ok = checks[path]()
        start("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"ok" if ok else b"not ready"]

    host, _, port = bind.rpartition(":")
    server = make_server(host or "0.0.0.0", int(port), app, handler_class=_Quiet)  # noqa: S104
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
