"""Builders of AdmissionReview requests as the API server sends them (for tests and benches)."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from typing import Any

import jsonpatch

VMGROUP_KIND = {"group": "vm.codeconnect.vmworld.com", "version": "v1alpha1", "kind": "VmGroup"}


def vmgroup(name: str = "vg-1", namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "vm.codeconnect.vmworld.com/v1alpha1", "kind": "VmGroup",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def review(obj: dict[str, Any] | None, *, operation: str = "CREATE",
           old: dict[str, Any] | None = None, kind: dict[str, str] | None = None,
           sub_resource: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    meta = (obj or old or {}).get("metadata", {})
    kind = kind or VMGROUP_KIND
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": kind,
        # The plural, as for every kind these reviews carry (Pod, Deployment, VmGroup, ...).
        "resource": {"group": kind["group"], "version": kind["version"],
                     "resource": kind["kind"].lower() + "s"},
        "requestKind": kind,
        "operation": operation,
        "name": meta.get("name", ""),
        "namespace": meta.get("namespace", "default"),
        "userInfo": {"username": "admin", "groups": ["system:masters"]},
        "object": obj,
        "oldObject": old,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": f"{operation.title()}Options"},
    }
    if sub_resource:
        request["subResource"] = sub_resource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def patched(original: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """`original` with the response's JSON Patch applied (unchanged when there is none)."""
    if "patch" not in response:
        return copy.deepcopy(original)
    if response.get("patchType") != "JSONPatch":
        raise ValueError(f"a patch of type {response.get('patchType')!r}, not JSONPatch")
    ops = json.loads(base64.b64decode(response["patch"]))
    return dict(jsonpatch.apply_patch(original, ops))
