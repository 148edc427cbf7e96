"""AdmissionReview v1 parsing and responses (pure)."""

from __future__ import annotations

import base64
import json

import pytest

from hack.stack.reviews import review, vmgroup
from webhook.admission import BadReview, allow, deny, json_patch, parse_review


def test_parses_a_real_shaped_request() -> None:
    body = review(vmgroup(cpu=2), dry_run=True)
    req = parse_review(json.dumps(body).encode())
    assert req.uid == body["request"]["uid"]
    assert (req.kind.group, req.kind.version, req.kind.kind) == (
        "vm.codeconnect.vmworld.com", "v1alpha1", "VmGroup")
    assert (req.operation, req.namespace, req.name, req.dry_run) == (
        "CREATE", "default", "vg-1", True)
    assert req.object == body["request"]["object"]


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    # Not JSON, though Python's json module reads them: the API server never sends them.
    (b'{"apiVersion": NaN}', "not valid JSON"),
    (b'{"apiVersion": Infinity}', "not valid JSON"),
    (b'"\\ud800"', "not valid JSON"),  # a lone surrogate
    (b"[" * 5000 + b"]" * 5000, "depth limit exceeded"),  # nested too deeply
    (b"[]", "must be a JSON object"),
    (b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}}',
     "expected apiVersion 'admission.k8s.io/v1'"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}', "kind 'AdmissionReview'"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "has no request"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}',
     "request.uid must be a non-empty string"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", '
     b'"request": {"uid": "u", "operation": "PATCH"}}', "request.operation must be one of"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", '
     b'"request": {"uid": "u", "operation": "CREATE", "object": [1]}}',
     "request.object must be a JSON object"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", '
     b'"request": {"uid": "u", "operation": "CREATE", "dryRun": "yes"}}',
     "request.dryRun must be a boolean"),
])
def test_malformed_reviews_get_a_clear_message(body: bytes, message: str) -> None:
    with pytest.raises(BadReview, match=message):
        parse_review(body)


def test_allow_echoes_uid_and_encodes_the_patch() -> None:
    ops = [{"op": "add", "path": "/spec/cpu", "value": 1}]
    answer = allow("abc", patch=ops, warnings=["careful"])
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == "abc"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == ops
    assert response["warnings"] == ["careful"]


def test_allow_without_patch_has_no_patch_fields() -> None:
    assert allow("abc")["response"] == {"uid": "abc", "allowed": True}


def test_deny_carries_a_status() -> None:
    response = deny("abc", "spec.cpu: bad")["response"]
    assert response == {"uid": "abc", "allowed": False,
                        "status": {"code": 422, "reason": "Invalid", "message": "spec.cpu: bad"}}


def test_json_patch_escapes_pointer_characters() -> None:
    original = {"metadata": {"annotations": {"a/b": "1"}}}
    mutated = {"metadata": {"annotations": {"a/b": "1", "x~y/z": "2"}}}
    ops = json_patch(original, mutated)
    assert ops == [{"op": "add", "path": "/metadata/annotations/x~0y~1z", "value": "2"}]


def test_json_patch_of_identical_objects_is_empty() -> None:
    assert json_patch({"a": [1, 2]}, {"a": [1, 2]}) == []
