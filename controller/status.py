"""The VmGroup status the controller writes: phase, counts, message, conditions. Pure.

Conditions follow metav1.Condition: a transition time changes only when the status does, so a
status written again unchanged is equal to the one stored and is not written (no hot loop).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vmgroup_api import (
    DELETING,
    ERROR,
    MAX_MESSAGE,
    MAX_STATUS_VMS,
    MAX_VM_ADDRESSES,
    PENDING,
    PROGRESSING,
    READY,
    RUNNING,
    ordinal,
    selector,
)

from .planner import Status, Vm

VM_FIELDS = ("vms", "vmsOmitted")  # the per-VM view, as kept when vCenter was not read


def _short(message: str) -> str:
    """`message` cut to fit lastMessage, in bytes as the API server counts them."""
    data = message.encode()
    if len(data) <= MAX_MESSAGE:
        return message
    return data[:MAX_MESSAGE - 3].decode(errors="ignore") + "..."


def _condition(kind: str, true: bool, reason: str, message: str, *, generation: int,
               previous: Mapping[str, Any], now: str) -> dict[str, Any]:
    status = "True" if true else "False"
    old = next((c for c in previous.get("conditions") or []
                if isinstance(c, dict) and c.get("type") == kind), {})
    since = old.get("lastTransitionTime") if old.get("status") == status else None
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": since or now}


def vm_view(namespace: str, name: str, uid: str, observed: Iterable[Vm]) -> dict[str, Any]:
    """status.vms and status.vmsOmitted: the group's own VMs (those with its ownership marker),
    lowest ordinal first (a VM of ours under a foreign name last), at most MAX_STATUS_VMS."""
    def rank(vm: Vm) -> tuple[int, str]:
        number = ordinal(namespace, name, vm.name)
        return (number if number is not None else 1 << 62, vm.name)

    owned = sorted((vm for vm in observed if vm.owner_uid == uid), key=rank)
    listed = [{
        "name": vm.name,
        "powerState": vm.power_state or ("poweredOn" if vm.powered_on else "poweredOff"),
        "cpu": vm.cpu,
        "memoryMB": vm.memory_mb,
        "ipAddresses": list(vm.addresses[:MAX_VM_ADDRESSES]),
        "host": vm.host,
        "instanceUUID": vm.instance_uuid,
    } for vm in owned[:MAX_STATUS_VMS]]
    return {"vms": listed, "vmsOmitted": max(0, len(owned) - MAX_STATUS_VMS)}


def build(result: Status, *, name: str, generation: int, previous: Mapping[str, Any] | None,
          now: str, error: str | None = None,
          vms: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The status of group `name` for a reconcile that planned `result`, or failed with
    `error`. `vms` is vm_view's answer; None keeps the previous one (vCenter was not read)."""
    previous = previous or {}
    if vms is None:
        vms = {k: previous[k] for k in VM_FIELDS if k in previous}
    phase = ERROR if error else result.phase
    message = _short(error or result.message)
    ready = phase == RUNNING
    progressing = phase in (PENDING, DELETING)
    ready_reason = {RUNNING: "Reconciled", ERROR: "Error", DELETING: "Deleting"}.get(
        phase, "Reconciling")
    return {
        "phase": phase,
        "currentReplicas": result.current_replicas,
        "desiredReplicas": result.desired_replicas,
        "lastMessage": message,
        "observedGeneration": generation,
        "selector": selector(name),
        **vms,
        "conditions": [
            _condition(READY, ready, ready_reason, message, generation=generation,
                       previous=previous, now=now),
            _condition(PROGRESSING, progressing,
                       "Reconciling" if progressing else ("Error" if error else "Converged"),
                       message, generation=generation, previous=previous, now=now),
        ],
    }
