"""Properties of the pure admission handlers over random and malformed requests."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings

import vmgroup_api
from hack.stack.reviews import patched
from tests.strategies import bodies
from webhook import vmgroup
from webhook.admission import BadReview, parse_review
from webhook.vmgroup import Policy

POLICY = Policy(max_cpu=16, max_memory=64, max_replicas=50, default_template="golden")


@settings(max_examples=1500, deadline=None)
@given(body=bodies)
def test_any_body_is_a_clear_400_or_a_well_formed_answer(body: bytes) -> None:
    try:
        request = parse_review(body)
    except BadReview as exc:
        assert str(exc)  # noqa: PT017 - refused (a 400), and it must say why
        return
    for handler in (vmgroup.mutate, vmgroup.validate):
        answer = handler(request, POLICY)  # must not raise
        response = answer["response"]
        assert response["uid"] == request.uid
        assert isinstance(response["allowed"], bool)
        if not response["allowed"]:
            assert response["status"]["message"]
        if "patch" in response:
            assert request.object is not None
            mutated = patched(request.object, response)
            # Defaulting is idempotent: a second pass over its own output changes nothing.
            again = json.loads(json.dumps(json.loads(body)))
            again["request"]["object"] = mutated
            second = vmgroup.mutate(parse_review(json.dumps(again)), POLICY)["response"]
            assert "patch" not in second


@pytest.mark.parametrize("meta", [{"generateName": 7}, {"generateName": None, "name": ""},
                                  {"name": 5, "namespace": ["x"]}])
def test_odd_metadata_is_not_a_crash(meta: dict[str, object]) -> None:
    body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "operation": "CREATE",
                        "kind": {"group": vmgroup_api.GROUP, "version": vmgroup_api.VERSION,
                                 "kind": vmgroup_api.KIND},
                        "object": {"metadata": meta, "spec": {"cpu": 1, "memory": 1,
                                                              "replicas": 1, "template": "t"}}}}
    answer = vmgroup.validate(parse_review(json.dumps(body)), POLICY)["response"]
    assert isinstance(answer["allowed"], bool)
