"""The injection admission handler: Pods on CREATE; Deployments, StatefulSets, DaemonSets,
ReplicaSets (CREATE, UPDATE) and Jobs (CREATE: their template is immutable) through their pod
template. Pure: the initializers come in as a registry snapshot."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from initializers.inject import (
    BadRequest,
    InjectionConflict,
    Result,
    reconcile,
    requested,
    with_version_labels,
)
from initializers.record import RECORD_ANNOTATION, parse_record
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


def _map_ops(path: tuple[str, ...], before: Any, after: dict[str, Any]) -> list[dict[str, Any]]:
    """Ops turning the string map at `path` (annotations, labels) from `before` into `after`,
    key by key: never the whole map, which holds what others put there."""
    if not isinstance(before, dict):
        return [{"op": "add", "path": _pointer(*path), "value": after}] if after else []
    ops: list[dict[str, Any]] = [
        {"op": "add", "path": _pointer(*path, k), "value": v}
        for k, v in after.items() if before.get(k, None) != v or k not in before]
    return ops + [{"op": "remove", "path": _pointer(*path, k)} for k in before if k not in after]


def _holder(obj: dict[str, Any], kind: tuple[str, str]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Where the pod is: the object itself, or its template; checked for shape."""
    prefix = () if kind == POD else ("spec", "template")
    holder = obj if kind == POD else _dict(obj.get("spec")).get("template")
    if not isinstance(holder, dict):
        raise BadRequest("spec.template must be an object")
    for key in ("metadata", "spec"):
        if key in holder and not isinstance(holder[key], dict):
            raise BadRequest(".".join([*prefix, key]) + " must be an object")
    for where, meta in (((*prefix, "metadata"), _dict(holder.get("metadata"))),
                        (("metadata",), _dict(obj.get("metadata")))):
        if "labels" in meta and meta["labels"] is not None and not isinstance(
                meta["labels"], dict):
            raise BadRequest(".".join([*where, "labels"]) + " must be an object")
    if problem := _shape_problem(_dict(holder.get("spec")), ".".join([*prefix, "spec"])):
        raise BadRequest(problem)
    return prefix, holder


def _spec_ops(holder: dict[str, Any], result: Result) -> list[dict[str, Any]]:
    pod_spec, new_spec = _dict(holder.get("spec")), result.spec
    if "spec" not in holder:
        return [{"op": "add", "path": _pointer("spec"), "value": new_spec}] if new_spec else []
    ops: list[dict[str, Any]] = []
    for key in POD_LISTS:
        old, new = pod_spec.get(key), new_spec.get(key)
        if new is old:
            continue
        if key not in new_spec:
            ops.append({"op": "remove", "path": _pointer("spec", key)})
        elif result.stripped:  # lists may have shrunk: the list, whole
            ops.append({"op": "add", "path": _pointer("spec", key), "value": new})
        else:  # only added to: item by item (a Pod's containers can be large)
            ops += _list_ops(_pointer("spec", key), old, cast(list[Any], new))
    return ops


def _meta_ops(holder: dict[str, Any], new_meta: dict[str, Any]) -> list[dict[str, Any]]:
    if "metadata" not in holder:
        return [{"op": "add", "path": _pointer("metadata"),
                 "value": {k: v for k, v in new_meta.items() if v}}]
    meta = _dict(holder.get("metadata"))
    return [op for key in ("annotations", "labels")
            for op in _map_ops(("metadata", key), meta.get(key), new_meta[key])]


def _touched(holder: dict[str, Any], spec: dict[str, Any] | None,
             meta: dict[str, Any]) -> dict[str, Any]:
    """The part of a pod (template) a patch may touch: its spec, annotations and labels."""
    part: dict[str, Any] = {}
    if spec is not None:
        part["spec"] = spec
    if "metadata" in holder or any(meta.values()):
        part["metadata"] = {k: v for k, v in meta.items()
                            if k in _dict(holder.get("metadata")) or v}
    return part


def _patch(obj: dict[str, Any], kind: tuple[str, str], prefix: tuple[str, ...],
           holder: dict[str, Any], result: Result) -> list[dict[str, Any]]:
    """The JSON Patch from `obj` to the reconciled pod (template), its record and labels.

    Written from what reconcile changed rather than by diffing whole objects (a Pod's
    managedFields alone can be tens of kilobytes), then proven by applying it to the parts of
    the object it touches.
    """
    meta = _dict(holder.get("metadata"))
    new_meta = {"annotations": result.annotations, "labels": result.labels}
    ops = _spec_ops(holder, result) + _meta_ops(holder, new_meta)
    before = _touched(holder, holder.get("spec"),
                      {k: meta[k] for k in ("annotations", "labels") if k in meta})
    after = _touched(holder, result.spec if "spec" in holder or result.spec else None,
                     new_meta)
    verify_patch(before, ops, after)
    base = _pointer(*prefix)
    ops = [{**op, "path": base + op["path"]} for op in ops]
    if kind != POD:  # the workload too carries the version labels, for `kubectl get -L`
        workload = _dict(obj.get("metadata"))
        labels = with_version_labels(workload.get("labels"), result.record)
        if "metadata" not in obj:
            ops += [{"op": "add", "path": "/metadata", "value": {"labels": labels}}] \
                if labels else []
        else:
            ops += _map_ops(("metadata", "labels"), workload.get("labels"), labels)
    return ops


def _owned(obj: dict[str, Any]) -> bool:
    """Whether a controller owns the workload (a Deployment's ReplicaSet): its template follows
    its owner's, and a template of ours would make the owner see another one and make more."""
    refs = _dict(obj.get("metadata")).get("ownerReferences")
    return isinstance(refs, list) and any(isinstance(r, dict) and r.get("controller") is True
                                          for r in refs)


def _record_of(obj: dict[str, Any], kind: tuple[str, str]) -> dict[str, Any]:
    """The injection record on the pod (template), whatever the object's shape."""
    holder = obj if kind == POD else _dict(_dict(obj.get("spec")).get("template"))
    return parse_record(_dict(_dict(holder.get("metadata")).get("annotations")).get(
        RECORD_ANNOTATION))


def _admit(obj: dict[str, Any], kind: tuple[str, str], *, update: bool, snapshot: Snapshot,
           settings: InjectionSettings) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """The patch (empty: nothing to change) and the warnings for one object."""
    record = _record_of(obj, kind)
    asked = requested(_annotation_maps(obj, kind), settings.prefix, snapshot.usable,
                      snapshot.broken, recorded=record)
    if not update and all(name in record for name in asked.wanted):
        return [], ()  # CREATE with nothing to add: Pods of an injected template, most Pods
    if update and not record and not asked.wanted:
        return [], ()
    prefix, holder = _holder(obj, kind)
    meta = _dict(holder.get("metadata"))
    result = reconcile(meta.get("annotations"), meta.get("labels"), _dict(holder.get("spec")),
                       asked, snapshot, update=update)
    return _patch(obj, kind, prefix, holder, result), result.warnings


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
            or (request.operation == "UPDATE" and kind in CREATE_ONLY)
            or (kind != POD and _owned(obj))):
        return allow(request.uid)
    try:
        patch, warnings = _admit(obj, kind, update=request.operation == "UPDATE",
                                 snapshot=snapshot, settings=settings)
    except BadRequest as exc:
        return deny(request.uid, str(exc), code=400, reason="BadRequest")
    except InjectionConflict as exc:
        return deny(request.uid, str(exc), code=409, reason="Conflict")
    return allow(request.uid, patch=patch or None, warnings=list(warnings))
