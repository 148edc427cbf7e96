"""Hostile and malformed AdmissionReviews through the Flask app, as a fuzzer sends them: every
one gets a clean 4xx with a message (or an answer), never a 500.

The property tests elsewhere keep each field's shape; these replace any node of a review (of
the review itself and of the object in it) with a JSON value of any type.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hack.stack.reviews import review, vmgroup
from hack.stack.workloads import LOGGING_AGENT, configmap, deployment, pod
from initializers.registry import Registry
from tests.strategies import json_values
from webhook.app import create_app

REGISTRY = Registry()
REGISTRY.replace([configmap("logging-agent-initializer", LOGGING_AGENT)])
CLIENT = create_app(registry=REGISTRY).test_client()
POD_KIND = {"group": "", "version": "v1", "kind": "Pod"}
DEPLOYMENT_KIND = {"group": "apps", "version": "v1", "kind": "Deployment"}
ASKS = {"initializer.kubernetes.io/logging-agent": "true"}


def _post(path: str, body: Any) -> tuple[int, dict[str, Any]]:
    answer = CLIENT.post(path, data=json.dumps(body))
    return answer.status_code, answer.get_json()


def _refusal(body: dict[str, Any]) -> str:
    status, answer = _post("/inject", body)
    assert status == 200
    response = answer["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] in (400, 409)
    return str(response["status"]["message"])


# --- seen when the running webhook was fuzzed: each was a 500 ---------------------------------

@pytest.mark.parametrize(("path", "operation"), [
    ("/validate/vmgroups", ["CREATE"]), ("/mutate/vmgroups", {"op": "CREATE"}),
    ("/inject", {"op": "CREATE"}), ("/inject", ["CREATE"]), ("/validate/vmgroups", 7)])
def test_an_operation_that_is_not_a_string_is_a_400(path: str, operation: Any) -> None:
    body = review(vmgroup(template="t"))
    body["request"]["operation"] = operation
    status, answer = _post(path, body)
    assert status == 400
    assert answer["error"].startswith("request.operation must be one of")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("name", {"a": 1}, "spec.containers[0].name must be a string"),
    ("name", ["x"], "spec.containers[0].name must be a string"),
    ("env", 5, "spec.containers[0].env must be a list of objects"),
    ("env", [{"name": 5}], "spec.containers[0].env[0].name must be a string"),
    ("volumeMounts", "x", "spec.containers[0].volumeMounts must be a list of objects"),
    ("volumeMounts", [{"mountPath": {}}],
     "spec.containers[0].volumeMounts[0].mountPath must be a string"),
])
def test_a_container_field_of_the_wrong_type_is_a_400(field: str, value: Any,
                                                     message: str) -> None:
    obj = pod(annotations=ASKS)
    obj["spec"]["containers"][0][field] = value
    assert message in _refusal(review(obj, kind=POD_KIND))


def test_a_deployments_container_of_the_wrong_type_names_its_path() -> None:
    obj = deployment(annotations=ASKS)
    obj["spec"]["template"]["spec"]["containers"][0]["name"] = {"x": 1}
    assert "spec.template.spec.containers[0].name must be a string" in _refusal(
        review(obj, kind=DEPLOYMENT_KIND))


@pytest.mark.parametrize(("existing", "what"), [
    ("initContainers", "an init container"), ("containers", "a container")])
def test_a_name_taken_by_any_container_is_a_conflict(existing: str, what: str) -> None:
    """The sidecar `logging-agent` and the init container `log-setup`: names are one namespace
    across containers and init containers, so a clash with either is ours to refuse."""
    obj = pod(annotations=ASKS)
    sidecar = {"name": "logging-agent", "image": "something-else:1"}
    setup = {"name": "log-setup", "image": "something-else:1"}
    obj["spec"].setdefault(existing, []).extend([sidecar] if existing == "initContainers"
                                                else [setup])
    message = _refusal(review(obj, kind=POD_KIND))
    added = "container 'logging-agent'" if existing == "initContainers" else \
        "init container 'log-setup'"
    assert f"initializer 'logging-agent' adds {added}, but the workload already has " \
           f"{what} of that name" in message


# --- the fuzzer: any node of a review, of any type ---------------------------------------------

def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a node of `value` (the root included)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    result = copy.copy(value)
    result[path[0]] = _replace(value[path[0]], path[1:], new)
    return result


def _valid_reviews() -> list[tuple[str, dict[str, Any]]]:
    group = vmgroup(template="t", cpu=2, replicas=3)
    workload = deployment(annotations=ASKS, template_annotations=ASKS)
    scale = {"apiVersion": "autoscaling/v1", "kind": "Scale",
             "metadata": {"name": "vg-1", "namespace": "default"}, "spec": {"replicas": 2}}
    return [
        ("/mutate/vmgroups", review(group)),
        ("/validate/vmgroups", review(group, operation="UPDATE", old=group)),
        ("/validate/vmgroups", review(scale, kind={"group": "autoscaling", "version": "v1",
                                                   "kind": "Scale"}, sub_resource="scale")),
        ("/inject", review(pod(annotations=ASKS, containers=2), kind=POD_KIND)),
        ("/inject", review(workload, operation="UPDATE", old=workload, kind=DEPLOYMENT_KIND)),
    ]


VALID = _valid_reviews()


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), which=st.integers(0, len(VALID) - 1), new=json_values)
def test_any_node_of_any_type_is_never_a_500(data: st.DataObject, which: int,
                                            new: Any) -> None:
    path, body = VALID[which]
    where = data.draw(st.sampled_from(_paths(body)), label="node")
    mangled = _replace(body, where, new)
    status, answer = _post(path, mangled)
    assert status in (200, 400), (where, new, answer)
    if status == 400:
        assert answer["error"]
    else:
        response = answer["response"]
        assert isinstance(response["allowed"], bool)
        if not response["allowed"]:
            assert response["status"]["message"]
