"""The VmGroup status the controller writes: phase, counts, message, conditions. Pure.

Conditions follow metav1.Condition: a transition time changes only when the status does, so a
status written again unchanged is equal to the one stored and is not written (no hot loop).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmgroup_api import (
    DELETING,
    ERROR,
    MAX_MESSAGE,
    PENDING,
    PROGRESSING,
    READY,
    RUNNING,
    selector,
)

from .planner import Status


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


def build(result: Status, *, name: str, generation: int, previous: Mapping[str, Any] | None,
          now: str, error: str | None = None) -> dict[str, Any]:
    """The status of group `name` for a reconcile that planned `result`, or failed with
    `error`."""
    previous = previous or {}
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
        "conditions": [
            _condition(READY, ready, ready_reason, message, generation=generation,
                       previous=previous, now=now),
            _condition(PROGRESSING, progressing,
                       "Reconciling" if progressing else ("Error" if error else "Converged"),
                       message, generation=generation, previous=previous, now=now),
        ],
    }
