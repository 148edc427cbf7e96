"""AdmissionReview v1, exactly: parse a request, build a response. Pure: no Flask, no I/O.

Reading list facts this module encodes: the response echoes `uid` and carries
`apiVersion: admission.k8s.io/v1` and `kind: AdmissionReview`; a mutation is a base64 JSON
Patch with `patchType: JSONPatch`; a patch that fails to apply fails the request even under
`failurePolicy: Ignore`, so every patch is applied here once before it is returned.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import orjson

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
MAX_WARNING_LENGTH = 120  # what the API docs ask of a warning; past 256 it may be truncated
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024  # an UPDATE carries object + oldObject, 1.5 MiB each


class BadReview(ValueError):
    """The HTTP body is not an AdmissionReview v1 request we can answer (HTTP 400)."""


@dataclass(frozen=True)
class GroupVersionKind:
    group: str
    version: str
    kind: str

    def __str__(self) -> str:
        return f"{self.group}/{self.version} {self.kind}" if self.group else \
            f"{self.version} {self.kind}"


@dataclass(frozen=True)
class AdmissionRequest:
    """The parts of `request` a handler reads, checked for type."""

    uid: str
    kind: GroupVersionKind
    operation: str
    namespace: str
    name: str
    sub_resource: str
    object: dict[str, Any] | None
    old_object: dict[str, Any] | None
    dry_run: bool
    options: dict[str, Any] = field(default_factory=dict)


def _short(value: Any, limit: int = 40) -> str:
    """`value` for a message: whatever a caller sent, it never makes a message long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _str(value: Any, what: str, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise BadReview(f"{what} must be a non-empty string" if required
                        else f"{what} must be a string")
    return value


def _obj(value: Any, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadReview(f"{what} must be a JSON object")
    return value


def parse_review(body: bytes | str) -> AdmissionRequest:
    """Parse an AdmissionReview v1 request body; raise BadReview with a clear message."""
    # orjson: parsing in C is most of what a large Pod costs. It is stricter than the json
    # module where Kubernetes is too (no NaN, strict UTF-8), and stops at 1024 levels of nesting.
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadReview(f"request body is not valid JSON: {exc}") from None
    if not isinstance(review, dict):
        raise BadReview("request body must be a JSON object (an AdmissionReview)")
    api_version, kind = review.get("apiVersion"), review.get("kind")
    if api_version != API_VERSION or kind != KIND:
        raise BadReview(f"expected apiVersion {API_VERSION!r} and kind {KIND!r}, "
                        f"got {_short(api_version)} and {_short(kind)}")
    request = review.get("request")
    if not isinstance(request, dict):
        raise BadReview("AdmissionReview has no request object")
    uid = _str(request.get("uid"), "request.uid", required=True)
    operation = request.get("operation")
    if not isinstance(operation, str) or operation not in OPERATIONS:  # (a list is unhashable)
        raise BadReview(f"request.operation must be one of {sorted(OPERATIONS)}, "
                        f"got {_short(operation)}")
    gvk = _obj(request.get("kind"), "request.kind") or {}
    dry_run = request.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise BadReview("request.dryRun must be a boolean")
    return AdmissionRequest(
        uid=uid,
        kind=GroupVersionKind(_str(gvk.get("group"), "request.kind.group"),
                              _str(gvk.get("version"), "request.kind.version"),
                              _str(gvk.get("kind"), "request.kind.kind")),
        operation=operation,
        namespace=_str(request.get("namespace"), "request.namespace"),
        name=_str(request.get("name"), "request.name"),
        sub_resource=_str(request.get("subResource"), "request.subResource"),
        object=_obj(request.get("object"), "request.object"),
        old_object=_obj(request.get("oldObject"), "request.oldObject"),
        dry_run=dry_run,
        options=_obj(request.get("options"), "request.options") or {},
    )


def verify_patch(original: Mapping[str, Any], ops: list[dict[str, Any]],
                 mutated: Mapping[str, Any]) -> None:
    """Raise unless `ops` turns `original` into `mutated`: a patch the API server cannot apply
    fails the request even under failurePolicy Ignore, so none leaves without this check."""
    # A copy through orjson costs a tenth of copy.deepcopy, which apply_patch would make.
    copy = orjson.loads(orjson.dumps(original))
    if jsonpatch.apply_patch(copy, ops, in_place=True) != mutated:
        raise AssertionError("generated JSON Patch does not reproduce the mutated object")


def json_patch(original: Mapping[str, Any], mutated: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JSON Patch from `original` to `mutated`, proven by applying it to `original`."""
    ops: list[dict[str, Any]] = list(jsonpatch.make_patch(original, mutated))
    verify_patch(original, ops, mutated)
    return ops


def _review(uid: str, response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "response": {"uid": uid, **response}}


def _warnings(warnings: Iterable[str]) -> dict[str, Any]:
    items = list(warnings)
    return {"warnings": items} if items else {}


def allow(uid: str, *, patch: list[dict[str, Any]] | None = None,
          warnings: Iterable[str] = ()) -> dict[str, Any]:
    """An allowing AdmissionReview; with a non-empty patch it is a mutation."""
    response: dict[str, Any] = {"allowed": True, **_warnings(warnings)}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(patch)).decode()
    return _review(uid, response)


def deny(uid: str, message: str, *, code: int = 422, reason: str = "Invalid",
         warnings: Iterable[str] = ()) -> dict[str, Any]:
    """A refusing AdmissionReview; kubectl prints `message` after 'denied the request: '."""
    return _review(uid, {
        "allowed": False,
        "status": {"code": code, "reason": reason, "message": message},
        **_warnings(warnings),
    })
