"""The injection admission handler: Pods on CREATE; Deployments, StatefulSets, DaemonSets,
ReplicaSets (CREATE, UPDATE) and Jobs (CREATE: their template is immutable) through their pod
template. Pure: the initializers come in as a registry snapshot."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from initializers.inject import BadRequest, InjectionConflict, inject, requested
from initializers.registry import Snapshot

from .admission import AdmissionRequest, allow, deny, json_patch

POD = ("", "Pod")
WORKLOADS = {("apps", "Deployment"), ("apps", "StatefulSet"), ("apps", "DaemonSet"),
             ("apps", "ReplicaSet"), ("batch", "Job")}
CREATE_ONLY = {POD, ("batch", "Job")}  # the API server forbids changing their pod specs later
POD_LISTS = ("containers", "initContainers", "volumes")


@dataclass(frozen=True)
class InjectionSettings:
    prefix: str
    excluded_namespaces: frozenset[str]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _shape_problem(spec: dict[str, Any], where: str) -> str | None:
    for key in POD_LISTS:
        value = spec.get(key)
        if value is not None and (not isinstance(value, list)
                                  or not all(isinstance(v, dict) for v in value)):
            return f"{where}.{key} must be a list of objects"
    return None


def _annotation_maps(obj: dict[str, Any], kind: tuple[str, str]) -> Iterable[Any]:
    meta = _dict(obj.get("metadata"))
    if kind == POD:
        return [meta.get("annotations")]
    template_meta = _dict(_dict(_dict(obj.get("spec")).get("template")).get("metadata"))
    # A request on the workload's own metadata (the original Initializers pattern) or on its
    # pod template; what was injected is recorded on the template, which Pods inherit.
    return [meta.get("annotations"), template_meta.get("annotations")]


def _injected(obj: dict[str, Any], kind: tuple[str, str], todo: list[str],
              snapshot: Snapshot) -> dict[str, Any]:
    """`obj` with `todo` injected into its pod (template); BadRequest for a malformed one."""
    mutated = copy.deepcopy(obj)
    holder: Any = mutated
    where = "spec"
    if kind != POD:
        holder, where = _dict(mutated.get("spec")).get("template"), "spec.template.spec"
        if not isinstance(holder, dict):
            raise BadRequest("spec.template must be an object")
    pod_spec = _dict(holder.get("spec"))
    if problem := _shape_problem(pod_spec, where):
        raise BadRequest(problem)
    holder["metadata"], holder["spec"] = inject(
        _dict(holder.get("metadata")), pod_spec, todo, snapshot.usable)
    return mutated


def handle(request: AdmissionRequest, snapshot: Snapshot,
           settings: InjectionSettings) -> dict[str, Any]:
    kind = (request.kind.group, request.kind.kind)
    obj = request.object
    if kind != POD and kind not in WORKLOADS:
        return deny(request.uid, f"this webhook injects into Pods, Deployments, StatefulSets, "
                    f"DaemonSets, ReplicaSets and Jobs, not {request.kind}",
                    code=400, reason="BadRequest")
    if (obj is None or request.namespace in settings.excluded_namespaces
            or request.operation not in ("CREATE", "UPDATE")
            or (request.operation == "UPDATE" and kind in CREATE_ONLY)):
        return allow(request.uid)
    try:
        asked = requested(_annotation_maps(obj, kind), settings.prefix, snapshot.usable,
                          snapshot.broken)
        todo = [name for name in asked.wanted if name not in asked.done]
        patch = json_patch(obj, _injected(obj, kind, todo, snapshot)) if todo else None
    except BadRequest as exc:
        return deny(request.uid, str(exc), code=400, reason="BadRequest")
    except InjectionConflict as exc:
        return deny(request.uid, str(exc), code=409, reason="Conflict")
    return allow(request.uid, patch=patch)
