"""The VmGroup admission rules: defaulting and validation. Pure functions over plain dicts.

The admission side of every rule about what a VmGroup may contain: this cluster's policy maxima
(configuration of the webhook), and the checks of the API's defaults, hard bounds, template
names and VM names (vmgroup_api, shared with the controller), immutability, and the scale
subresource.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vmgroup_api import (
    DEFAULTS,
    GROUP,
    HARD_BOUNDS,
    KIND,
    MAX_VSPHERE_NAME,
    VERSION,
    longest_vm_name,
    template_problem,
)

from .admission import AdmissionRequest, GroupVersionKind, allow, deny, json_patch

VMGROUP = GroupVersionKind(GROUP, VERSION, KIND)
SCALE = GroupVersionKind("autoscaling", "v1", "Scale")


@dataclass(frozen=True)
class Policy:
    """What this cluster allows: configurable maxima within the hard bounds, and a default
    template for groups that name none."""

    max_cpu: int = 32
    max_memory: int = 256
    max_replicas: int = 100
    default_template: str | None = None

    def __post_init__(self) -> None:
        for field, value in self.maxima().items():
            low, high = HARD_BOUNDS[field]
            if not low <= value <= high:
                raise ValueError(f"policy maximum for {field} must be between {low} and {high}, "
                                 f"got {value}")
        if self.default_template is not None and (
                problem := template_problem(self.default_template)):
            raise ValueError(f"default template {self.default_template!r} {problem}")

    def maxima(self) -> dict[str, int]:
        return {"cpu": self.max_cpu, "memory": self.max_memory, "replicas": self.max_replicas}


@dataclass(frozen=True)
class FieldError:
    """One problem with one field, worded as the API server words its own validation errors."""

    path: str
    kind: str  # "Invalid value", "Required value" or "Forbidden"
    detail: str
    value: Any = None

    def __str__(self) -> str:
        if self.kind == "Invalid value":
            return f"{self.path}: {self.kind}: {json.dumps(self.value)}: {self.detail}"
        return f"{self.path}: {self.kind}: {self.detail}"


def _dict(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one (bad shapes are reported elsewhere)."""
    return value if isinstance(value, dict) else {}


# --- defaulting ------------------------------------------------------------------------------

def apply_defaults(group: Mapping[str, Any], policy: Policy,
                   old: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The group with every unset spec field defaulted, and warnings for the user.

    On UPDATE (`old` given) an unset field keeps the value it had: a PUT that leaves a field
    out must not reset it, nor meet a default that changed since the group was created. A spec
    that is not an object is left alone for validation to refuse with a message.
    """
    result = dict(group)  # only top-level spec fields are set: a shallow copy is enough
    spec = result.setdefault("spec", {})
    if not isinstance(spec, dict):
        return result, []
    spec = result["spec"] = dict(spec)
    previous = _dict(_dict(old).get("spec"))
    for field, value in (*DEFAULTS.items(), ("template", policy.default_template)):
        if spec.get(field) is None:
            spec[field] = previous.get(field, value)
    warnings = []
    if spec.get("template") is None:
        del spec["template"]  # no default configured: validation asks for one
    elif "template" not in _dict(group.get("spec")) and "template" not in previous:
        warnings.append(f"spec.template not set: using {spec['template']!r}")
    return result, warnings


# --- validation ------------------------------------------------------------------------------

def _check_count(path: str, value: Any, low: int, high: int, what: str) -> FieldError | None:
    if value is None:
        return FieldError(path, "Required value", f"must be an integer from {low} to {high}")
    if isinstance(value, bool) or not isinstance(value, int):
        return FieldError(path, "Invalid value", "must be an integer", value)
    if not low <= value <= high:
        return FieldError(path, "Invalid value", f"must be from {low} to {high} ({what})", value)
    return None


def _range_errors(spec: Mapping[str, Any], fields: Iterable[str], policy: Policy,
                  old_spec: Mapping[str, Any] | None = None) -> list[FieldError]:
    """Range checks; a value an UPDATE leaves as it was is held to the hard bounds only, so
    lowering a policy maximum never blocks edits of existing groups (e.g. their finalizers)."""
    errors = []
    maxima = policy.maxima()
    for field in fields:
        low, hard_high = HARD_BOUNDS[field]
        value = spec.get(field)
        ratcheted = old_spec is not None and field in old_spec and old_spec[field] == value
        high, what = ((maxima[field], "this cluster's policy")
                      if maxima[field] < hard_high and not ratcheted
                      else (hard_high, "vSphere's limit"))
        if error := _check_count(f"spec.{field}", value, low, high, what):
            errors.append(error)
    return errors


def _name_errors(namespace: str, name: str, replicas: Any) -> list[FieldError]:
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        return []  # reported as a replicas error already
    longest = longest_vm_name(namespace, name, replicas)
    if len(longest) <= MAX_VSPHERE_NAME:
        return []
    return [FieldError(
        "metadata.name", "Invalid value",
        f"VM names would be up to {len(longest)} characters ({longest!r}); vSphere allows "
        f"{MAX_VSPHERE_NAME}: shorten the group or namespace name", name)]


def _object_name(obj: Mapping[str, Any], request: AdmissionRequest) -> tuple[str, str]:
    """(namespace, name) of the object; a generateName stands for the name the API server will
    make of it (the prefix and 5 random characters)."""
    meta = _dict(obj.get("metadata"))
    name = meta.get("name") or request.name
    if not name and isinstance(meta.get("generateName"), str):
        name = meta["generateName"] + "x" * 5
    return str(meta.get("namespace") or request.namespace), str(name or "")


def validate_group(request: AdmissionRequest, policy: Policy) -> list[FieldError]:
    group, old = request.object or {}, request.old_object
    meta = group.get("metadata")
    if request.operation == "UPDATE" and isinstance(meta, dict) and meta.get(
            "deletionTimestamp"):
        return []  # a group being deleted must always be able to lose its finalizer
    spec = group.get("spec")
    if not isinstance(spec, dict):
        return [FieldError("spec", "Required value", "a VmGroup needs a spec object")]
    old_spec = _dict(old.get("spec")) if request.operation == "UPDATE" and old else None
    errors = _range_errors(spec, DEFAULTS, policy, old_spec)
    template = spec.get("template")
    if template is None:
        errors.append(FieldError("spec.template", "Required value",
                                 "name of the vSphere template to clone"))
    elif not isinstance(template, str):
        errors.append(FieldError("spec.template", "Invalid value", "must be a string", template))
    elif problem := template_problem(template):
        errors.append(FieldError("spec.template", "Invalid value", problem, template))
    if old_spec is not None and old_spec.get("template") != template:
        errors.append(FieldError(
            "spec.template", "Invalid value",
            f"field is immutable (was {json.dumps(old_spec.get('template'))}); "
            "create a new VmGroup to use another template", template))
    errors += _name_errors(*_object_name(group, request), spec.get("replicas"))
    return errors


def validate_scale(request: AdmissionRequest, policy: Policy) -> list[FieldError]:
    """`kubectl scale vg` goes through the scale subresource: its replicas obey the same rules."""
    scale = request.object or {}
    # autoscaling/v1 omits replicas when it is 0 (omitempty): `kubectl scale --replicas=0`.
    spec = {"replicas": 0, **_dict(scale.get("spec"))}
    old_spec = _dict(_dict(request.old_object).get("spec")) if request.old_object else None
    errors = _range_errors(spec, ["replicas"], policy, old_spec)
    return errors + _name_errors(*_object_name(scale, request), spec.get("replicas"))


def warnings_for(request: AdmissionRequest) -> list[str]:
    spec = _dict((request.object or {}).get("spec"))
    if spec.get("replicas", 0 if request.kind == SCALE else None) == 0:
        return ["spec.replicas is 0: the group will have no VMs"]
    return []


# --- handlers: AdmissionRequest in, AdmissionReview out --------------------------------------

def _wrong_kind(request: AdmissionRequest, *expected: GroupVersionKind) -> dict[str, Any]:
    wanted = " or ".join(str(k) for k in expected)
    return deny(request.uid, f"this webhook admits {wanted}, not {request.kind}",
                code=400, reason="BadRequest")


def mutate(request: AdmissionRequest, policy: Policy) -> dict[str, Any]:
    if request.kind != VMGROUP:
        return _wrong_kind(request, VMGROUP)
    if request.operation not in ("CREATE", "UPDATE") or request.object is None:
        return allow(request.uid)
    old = request.old_object if request.operation == "UPDATE" else None
    defaulted, warnings = apply_defaults(request.object, policy, old)
    # Defaults touch the spec alone: diffed and proven there, not over the whole object, whose
    # metadata (managedFields above all) can be most of it.
    before = {"spec": request.object["spec"]} if "spec" in request.object else {}
    return allow(request.uid, patch=json_patch(before, {"spec": defaulted["spec"]}),
                 warnings=warnings)


def validate(request: AdmissionRequest, policy: Policy) -> dict[str, Any]:
    if request.operation not in ("CREATE", "UPDATE"):
        return allow(request.uid)  # DELETE is never intercepted: deleting is always allowed
    if request.kind == VMGROUP and not request.sub_resource:
        errors = validate_group(request, policy)
    elif request.kind == SCALE and request.sub_resource == "scale":
        errors = validate_scale(request, policy)
    else:
        return _wrong_kind(request, VMGROUP, SCALE)
    if errors:
        return deny(request.uid, "; ".join(str(e) for e in errors))
    return allow(request.uid, warnings=warnings_for(request))
