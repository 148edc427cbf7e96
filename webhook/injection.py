"""The injection admission handler: Pods on CREATE; Deployments, StatefulSets, DaemonSets,
ReplicaSets (CREATE, UPDATE) and Jobs (CREATE: their template is immutable) through their pod
template. Pure: the initializers come in as a registry snapshot."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from initializers.inject import (
    STATUS_ANNOTATION,
    BadRequest,
    InjectionConflict,
    inject,
    requested,
)
from initializers.registry import Snapshot

from .admission import AdmissionRequest, allow, deny, verify_patch

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


def _list_problem(value: Any, where: str, key: str) -> str | None:
    """Why `value` is not a list of objects whose `key` (when present) is a string."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        return f"{where} must be a list of objects"
    for i, item in enumerate(value):
        if key in item and not isinstance(item[key], str):
            return f"{where}[{i}].{key} must be a string"
    return None


def _shape_problem(spec: dict[str, Any], where: str) -> str | None:
    """What of the pod spec injection reads is not of the type the API defines: a clean
    refusal naming the path, where a merge would otherwise fail half-way."""
    for key in POD_LISTS:
        if problem := _list_problem(spec.get(key), f"{where}.{key}", "name"):
            return problem
    for key in ("containers", "initContainers"):
        for i, container in enumerate(spec.get(key) or []):
            at = f"{where}.{key}[{i}]"
            if problem := (_list_problem(container.get("env"), f"{at}.env", "name")
                           or _list_problem(container.get("volumeMounts"),
                                            f"{at}.volumeMounts", "mountPath")):
                return problem
    return None


def _annotation_maps(obj: dict[str, Any], kind: tuple[str, str]) -> Iterable[Any]:
    meta = _dict(obj.get("metadata"))
    if kind == POD:
        return [meta.get("annotations")]
    template_meta = _dict(_dict(_dict(obj.get("spec")).get("template")).get("metadata"))
    # A request on the workload's own metadata (the original Initializers pattern) or on its
    # pod template; what was injected is recorded on the template, which Pods inherit.
    return [meta.get("annotations"), template_meta.get("annotations")]


def _pointer(*parts: str | int) -> str:
    """A JSON Pointer: "~" is escaped as "~0" and "/" as "~1" in every part."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _list_ops(path: str, before: Any, after: list[Any]) -> list[dict[str, Any]]:
    """Ops turning list `before` into `after`, which merge() made by putting new items first
    or last and replacing changed ones (unchanged items are the very same objects)."""
    if not isinstance(before, list):
        return [{"op": "add", "path": path, "value": after}]
    if len(after) > len(before) and all(a is b for a, b in zip(
            after[len(after) - len(before):], before, strict=True)):  # new items first
        return [{"op": "add", "path": f"{path}/{i}", "value": item}
                for i, item in enumerate(after[:len(after) - len(before)])]
    ops = []
    for i, (old, new) in enumerate(zip(before, after, strict=False)):
        if old is not new:  # one of the workload's containers, with env or mounts added
            for key, value in new.items():
                if value is not old.get(key):
                    ops += _list_ops(f"{path}/{i}/{key}", old.get(key), value)
    return ops + [{"op": "add", "path": f"{path}/-", "value": item}
                  for item in after[len(before):]]


def _patch(obj: dict[str, Any], kind: tuple[str, str], todo: list[str],
           snapshot: Snapshot) -> list[dict[str, Any]]:
    """The JSON Patch that injects `todo` into `obj`'s pod (template).

    Written from what merge() changed rather than by diffing whole objects (a Pod's
    managedFields alone can be tens of kilobytes), then proven by applying it to the part of
    the object it touches.
    """
    prefix = () if kind == POD else ("spec", "template")
    holder = obj if kind == POD else _dict(obj.get("spec")).get("template")
    if not isinstance(holder, dict):
        raise BadRequest("spec.template must be an object")
    for key in ("metadata", "spec"):
        if key in holder and not isinstance(holder[key], dict):
            raise BadRequest(".".join([*prefix, key]) + " must be an object")
    pod_spec, meta = _dict(holder.get("spec")), _dict(holder.get("metadata"))
    if problem := _shape_problem(pod_spec, ".".join([*prefix, "spec"])):
        raise BadRequest(problem)
    annotations, new_spec = inject(meta.get("annotations"), pod_spec, todo, snapshot.usable)

    ops: list[dict[str, Any]] = []
    if "spec" not in holder:
        ops.append({"op": "add", "path": _pointer("spec"), "value": new_spec})
    else:
        for key in POD_LISTS:
            if new_spec.get(key) is not pod_spec.get(key):
                ops += _list_ops(_pointer("spec", key), pod_spec.get(key), new_spec[key])
    if "metadata" not in holder:
        ops.append({"op": "add", "path": _pointer("metadata"),
                    "value": {"annotations": annotations}})
    elif not isinstance(meta.get("annotations"), dict):
        ops.append({"op": "add", "path": _pointer("metadata", "annotations"),
                    "value": annotations})
    else:  # never the whole map: only our status key
        ops.append({"op": "add", "path": _pointer("metadata", "annotations", STATUS_ANNOTATION),
                    "value": annotations[STATUS_ANNOTATION]})

    before = {k: holder[k] for k in ("metadata", "spec") if k in holder}
    if "metadata" in before:  # the rest of metadata is never touched: leave it out
        before["metadata"] = {k: meta[k] for k in ("annotations",) if k in meta}
    after = {"spec": new_spec, "metadata": {"annotations": annotations}}
    verify_patch(before, ops, after)
    base = _pointer(*prefix)
    return [{**op, "path": base + op["path"]} for op in ops]


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
        patch = _patch(obj, kind, todo, snapshot) if todo else None
    except BadRequest as exc:
        return deny(request.uid, str(exc), code=400, reason="BadRequest")
    except InjectionConflict as exc:
        return deny(request.uid, str(exc), code=409, reason="Conflict")
    return allow(request.uid, patch=patch)
