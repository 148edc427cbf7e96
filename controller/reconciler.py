"""Reconcile one VmGroup: read it, observe vCenter, plan, act, report. The Kubernetes edge.

Level-triggered: it takes the newest copy of the object (the informer's cache) and observes
vCenter afresh every time, so the same call after a restart, a missed event or a failure
converges to the same result. The plan's VM actions are started, all at once (each touches
another VM), and the reconcile returns: controller.tasks follows them and queues the group
again when they end, so a worker never waits for vCenter's tasks. A VM with an action in flight
is left to it. A failure is reported in status (phase ERROR, a clear lastMessage) and raised,
for the queue to retry with backoff.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubekit.events import EventRecorder
from vmgroup_api import (
    API_VERSION,
    DEFAULTS,
    ERROR,
    FINALIZER,
    GROUP,
    KIND,
    PLURAL,
    RUNNING,
    VERSION,
)

from . import metrics
from . import status as status_mod
from .planner import (
    Clone,
    DeleteFolder,
    Destroy,
    Group,
    PowerOn,
    Reconfigure,
    RemoveFinalizer,
    Status,
    Vm,
    plan,
)
from .tasks import Chain, Tasks
from .vsphere import VSphere, VSphereError

log = logging.getLogger("vmgroup.controller")
VM_ACTIONS = (Clone, PowerOn, Reconfigure, Destroy)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_group(obj: dict[str, Any]) -> Group:
    """The planner's view of a VmGroup object (defaults as the webhook applies them)."""
    meta, spec = obj["metadata"], obj.get("spec") or {}
    template = spec.get("template")
    if not isinstance(template, str) or not template:
        raise VSphereError("spec.template is not set")
    return Group(
        namespace=meta["namespace"], name=meta["name"], uid=meta["uid"],
        cpu=int(spec.get("cpu", DEFAULTS["cpu"])),
        memory_gb=int(spec.get("memory", DEFAULTS["memory"])),
        replicas=int(spec.get("replicas", DEFAULTS["replicas"])),
        template=template,
        deleting=bool(meta.get("deletionTimestamp")),
        has_finalizer=FINALIZER in (meta.get("finalizers") or []))


@dataclass(frozen=True)
class Outcome:
    converged: bool  # False: more to do (e.g. a rolling resize): requeue soon
    waiting: bool = False  # for VM actions in flight (or a task slot): their end requeues it
    observed: tuple[Vm, ...] | None = None  # vCenter as the reconcile last saw it, if it looked


class Store(Protocol):
    """Where VmGroups are read from (the informer's cache) and our writes' results go."""

    def get(self, key: tuple[str, str]) -> dict[str, Any] | None: ...
    def put(self, obj: dict[str, Any]) -> None: ...


class Reconciler:
    def __init__(self, api: client.ApiClient, vsphere: Callable[[], VSphere], store: Store,
                 tasks: Tasks[tuple[str, str]]) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._events = EventRecorder(api, "vmgroup-controller")
        self._vsphere = vsphere
        self._store = store
        self._tasks = tasks  # VM actions in flight; tell it of their ends through ended()
        # key -> (generation, its reconciles so far; None once it reported RUNNING)
        self._passes: dict[tuple[str, str], tuple[int, int | None]] = {}

    def reconcile(self, namespace: str, name: str) -> Outcome:
        key = (namespace, name)
        obj = self._store.get(key)
        if obj is None:
            metrics.observed_vms(key, None)
            self._tasks.forget(key)
            self._passes.pop(key, None)
            return Outcome(converged=True)  # deleted: its finalizer saw to the VMs
        status = obj.get("status") or {}
        if status.get("phase") == RUNNING and status.get("observedGeneration") == \
                _generation(obj) and key not in self._passes:
            self._passes[key] = (_generation(obj), None)  # RUNNING before we came (a restart)
        self._count_pass(key, _generation(obj))
        try:
            outcome = self._reconcile(obj)
        finally:
            now = self._store.get(key)
            if now is not None and (now.get("status") or {}).get("phase") == RUNNING:
                self._running(key, _generation(now))
        return outcome

    def _count_pass(self, key: tuple[str, str], generation: int) -> None:
        known, count = self._passes.get(key, (None, 0))
        if known != generation:
            count = 0
        elif count is None:
            return  # RUNNING for this generation already
        self._passes[key] = (generation, count + 1)

    def _running(self, key: tuple[str, str], generation: int) -> None:
        """The group reports RUNNING for `generation`: how many reconciles that took."""
        known, count = self._passes.get(key, (None, None))
        if known == generation and count is not None:
            metrics.PASSES.observe(count)
            self._passes[key] = (generation, None)

    def _reconcile(self, obj: dict[str, Any]) -> Outcome:
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        try:
            group = to_group(obj)
            if not group.deleting and not group.has_finalizer:
                self._patch_finalizers(obj, [*(obj["metadata"].get("finalizers") or []),
                                             FINALIZER])
                # Carry on with what the write returned: the watch's echo of our own change
                # wakes nobody (informer.wants_work), and a second reconcile would be waste.
                obj = self._store.get((namespace, name)) or obj
                group = to_group(obj)
                if not group.has_finalizer:
                    return Outcome(converged=False)
            return self._act(obj, group)
        except VSphereError as exc:
            self._event(obj, "Warning", "ReconcileFailed", str(exc))
            previous = obj.get("status") or {}
            known = Status(ERROR, int(previous.get("currentReplicas", 0)),
                           int((obj.get("spec") or {}).get("replicas", 0)), str(exc))
            self._write_status(obj, status_mod.build(known, name=obj["metadata"]["name"],
                                                     generation=_generation(obj),
                                                     previous=previous, now=_now(),
                                                     error=str(exc)))
            raise

    def _report(self, obj: dict[str, Any], group: Group, observed: Sequence[Vm]
                ) -> dict[str, Any]:
        """Write the status `observed` makes (when it changed); the object as it is now."""
        return self._write_status(obj, status_mod.build(
            plan(group, observed).status, name=group.name, generation=_generation(obj),
            previous=obj.get("status"), now=_now(),
            vms=status_mod.vm_view(group.namespace, group.name, group.uid, observed)))

    def _act(self, obj: dict[str, Any], group: Group) -> Outcome:
        key = (group.namespace, group.name)
        if failures := self._tasks.failures(key):
            # Reported as the group's error; the retry, after its backoff, starts work again.
            raise failures[0]
        vsphere = self._vsphere()
        observed = vsphere.observe(group)
        result = plan(group, observed)
        running = self._tasks.running(key)
        todo = [a for a in result.actions if isinstance(a, VM_ACTIONS) and a.name not in running]
        metrics.observed_vms(key, sum(vm.owner_uid == group.uid for vm in observed))
        if any(isinstance(a, Clone) for a in todo):
            # Made here, once, rather than by the first clone while it holds a task slot.
            vsphere.group_folder(group, create=True)
        # Handed over, to start as task slots free; their ends queue the group again.
        self._tasks.want(key, [(getattr(a, "name", ""), a, vsphere.steps(group, a))
                               for a in todo])
        # One write: what is, and what is about to happen (its message says what runs).
        obj = self._report(obj, group, observed)
        if running or todo:  # the folder and the finalizer wait for the VMs
            return Outcome(converged=False, waiting=True, observed=tuple(observed))
        for action in result.actions:  # the folder and the finalizer, in order
            if isinstance(action, DeleteFolder):
                vsphere.delete_folders(group)
            elif isinstance(action, RemoveFinalizer):
                self._patch_finalizers(obj, [f for f in obj["metadata"].get("finalizers") or []
                                             if f != FINALIZER])
                return Outcome(converged=True)
        return Outcome(converged=result.converged, observed=tuple(observed))

    def ended(self, chain: Chain[tuple[str, str]], error: BaseException | None) -> None:
        """A VM action ended (controller.tasks): its log line, and its Event when it worked."""
        fields = {"vmgroup": "/".join(chain.key), "vm": chain.vm,
                  "action": type(chain.action).__name__,
                  "duration": round(time.monotonic() - chain.started, 3)}
        if error is not None:
            log.warning("vm action failed", extra={**fields, "result": "error",
                                                   "error": str(error)})
            return
        log.info("vm action", extra={**fields, "result": "success"})
        obj = self._store.get(chain.key)
        if obj is None:
            return
        match chain.action:
            case Clone(vm_name):
                self._event(obj, "Normal", "Created", f"created VM {vm_name}")
            case Destroy(vm_name):
                self._event(obj, "Normal", "Deleted", f"deleted VM {vm_name}")
            case Reconfigure(vm_name, cpu, memory_mb):
                self._event(obj, "Normal", "Reconfigured",
                            f"reconfigured VM {vm_name} to {cpu} vCPUs, {memory_mb} MB")

    def _patch_finalizers(self, obj: dict[str, Any], finalizers: list[str]) -> None:
        meta = obj["metadata"]
        # resourceVersion makes the patch fail instead of overwriting a concurrent change.
        self._store.put(self._custom.patch_namespaced_custom_object(  # type: ignore[arg-type]
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"],
            {"metadata": {"finalizers": finalizers, "resourceVersion":
                          meta["resourceVersion"]}}))

    def _write_status(self, obj: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """Write `new` as the status (when it differs); the object as the API server has it."""
        if obj.get("status") == new:
            return obj  # unchanged: no write
        meta = obj["metadata"]
        try:
            written: dict[str, Any] = self._custom.patch_namespaced_custom_object_status(  # type: ignore[assignment]
                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], {"status": new})
        except ApiException as exc:
            if exc.status != 404:
                raise
            return obj
        self._store.put(written)
        return written

    def _event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        self._events.record({"apiVersion": API_VERSION, "kind": KIND, **obj}, kind, reason,
                            message)


def _generation(obj: dict[str, Any]) -> int:
    return int(obj["metadata"].get("generation", 0))
