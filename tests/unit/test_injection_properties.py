"""Properties of the injection handler over random and malformed workloads (pure, fast)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hack.stack.reviews import patched, review
from hack.stack.workloads import LOGGING_AGENT, configmap
from initializers.registry import Registry
from tests.strategies import json_values
from webhook.admission import parse_review
from webhook.injection import InjectionSettings, handle

REGISTRY = Registry()
REGISTRY.replace([configmap("logging-agent-initializer", LOGGING_AGENT),
                  configmap("broken-initializer", "x: [")])
SETTINGS = InjectionSettings("initializer.kubernetes.io/", frozenset({"kube-system"}))
KINDS = [{"group": "", "version": "v1", "kind": "Pod"},
         {"group": "apps", "version": "v1", "kind": "Deployment"},
         {"group": "batch", "version": "v1", "kind": "Job"},
         {"group": "", "version": "v1", "kind": "Service"}]

names = st.sampled_from(["app", "logging-agent", "log-setup", "varlog", "x"])
items = st.lists(st.fixed_dictionaries({"name": names}, optional={
    "image": st.sampled_from(["nginx", "busybox:1.36"]),
    "env": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["LOG_DIR", "A"])},
                                          optional={"value": st.text(max_size=3)}), max_size=2),
    "volumeMounts": st.lists(st.fixed_dictionaries({
        "name": names, "mountPath": st.sampled_from(["/var/log", "/data"])}), max_size=2),
    "emptyDir": st.just({})}), max_size=3) | json_values
random_annotations = st.dictionaries(st.sampled_from([
    "initializer.kubernetes.io/logging-agent", "initializer.kubernetes.io/broken",
    "initializer.kubernetes.io/nope", "vm.codeconnect.vmworld.com/injected-initializers", "a/b"]),
    st.sampled_from(["true", "false", "logging-agent", "maybe"]), max_size=3) | json_values
pod_specs = st.fixed_dictionaries({}, optional={"containers": items, "initContainers": items,
                                                "volumes": items})
pods = st.builds(lambda a, s: {"metadata": {"name": "p", "annotations": a}, "spec": s},
                 random_annotations, pod_specs)
workloads = st.builds(lambda a, ta, s: {"metadata": {"name": "w", "annotations": a},
                                        "spec": {"template": {"metadata": {"annotations": ta},
                                                              "spec": s}}},
                      random_annotations, random_annotations, pod_specs)


@settings(max_examples=1500, deadline=None)
@given(obj=pods | workloads | json_values.filter(lambda v: isinstance(v, dict)),
       kind=st.sampled_from(KINDS), operation=st.sampled_from(["CREATE", "UPDATE", "DELETE"]),
       namespace=st.sampled_from(["team-a", "kube-system"]))
def test_injection_never_raises_and_is_idempotent(obj: dict[str, Any], kind: dict[str, str],
                                                  operation: str, namespace: str) -> None:
    body = review(obj, operation=operation, kind=kind)
    body["request"]["namespace"] = namespace
    response = handle(parse_review(json.dumps(body)), REGISTRY.snapshot(), SETTINGS)["response"]
    assert isinstance(response["allowed"], bool)
    if not response["allowed"]:
        assert response["status"]["message"]
    if "patch" in response:
        once = patched(obj, response)
        body["request"]["object"] = once
        again = handle(parse_review(json.dumps(body)), REGISTRY.snapshot(), SETTINGS)
        assert "patch" not in again["response"]
