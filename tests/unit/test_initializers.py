"""Initializers: the format, the registry, merging, and the admission handler (all pure)."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from hack.stack.reviews import patched, review
from hack.stack.workloads import LOGGING_AGENT, configmap, deployment, pod
from initializers.inject import (
    BadRequest,
    InjectionConflict,
    merge,
    requested,
)
from initializers.record import RECORD_ANNOTATION, parse_record
from initializers.registry import Registry
from initializers.spec import InvalidInitializer, initializer_name, parse
from webhook.admission import parse_review
from webhook.injection import InjectionSettings, handle

PREFIX = "initializer.kubernetes.io/"
ASK = {f"{PREFIX}logging-agent": "true"}
SETTINGS = InjectionSettings(PREFIX, frozenset({"vmgroup-system", "kube-system"}))
POD_KIND = {"group": "", "version": "v1", "kind": "Pod"}
DEPLOYMENT_KIND = {"group": "apps", "version": "v1", "kind": "Deployment"}
JOB_KIND = {"group": "batch", "version": "v1", "kind": "Job"}


def _registry(**configs: dict[str, Any] | str) -> Registry:
    registry = Registry()
    registry.replace([configmap(f"{name}-initializer", cfg) for name, cfg in configs.items()])
    return registry


REGISTRY = _registry(**{"logging-agent": LOGGING_AGENT,
                        "metrics": {"containers": [{"name": "exporter", "image": "exp:1"}]}})


def _handle(obj: dict[str, Any], kind: dict[str, str] = POD_KIND, *, operation: str = "CREATE",
            namespace: str = "team-a", registry: Registry = REGISTRY) -> dict[str, Any]:
    body = review(obj, operation=operation, kind=kind)
    body["request"]["namespace"] = namespace
    return handle(parse_review(json.dumps(body)), registry.snapshot(), SETTINGS)["response"]


# --- the format ------------------------------------------------------------------------------

def test_name_comes_from_the_configmap_name_or_label() -> None:
    assert initializer_name(configmap("logging-agent-initializer", {})) == "logging-agent"
    assert initializer_name(configmap("x", {}, labels={
        "initializer.kubernetes.io/name": "envoy"})) == "envoy"
    assert initializer_name(configmap("kube-root-ca.crt", {})) is None
    assert initializer_name(configmap("-initializer", {})) is None


def test_parse_reads_every_part() -> None:
    spec = parse("logging-agent", configmap("logging-agent-initializer", {
        **LOGGING_AGENT, "initContainerPosition": "first"}))
    assert [c["name"] for c in spec.containers] == ["logging-agent"]
    assert [c["name"] for c in spec.init_containers] == ["log-setup"]
    assert spec.init_containers_first is True
    assert spec.volume_mounts == ({"name": "varlog", "mountPath": "/var/log"},)


@pytest.mark.parametrize(("config", "message"), [
    ("", "data.config is missing or empty"),
    ("containers: [", "not valid YAML"),
    ("- a\n- b", "must be a YAML mapping"),
    ({"sidecars": []}, "unknown keys ['sidecars']"),
    ({"containers": {"name": "x"}}, "containers must be a list"),
    ({"containers": [{"name": "x"}]}, "containers[0].image must be a non-empty string"),
    ({"containers": [{"name": "Bad_Name", "image": "i"}]}, "is not a valid name"),
    ({"containers": [{"name": "a", "image": "i"}, {"name": "a", "image": "j"}]},
     "containers[1].name 'a' appears twice"),
    ({"volumes": [{"name": "v"}], "volumeMounts": [{"name": "w", "mountPath": "/w"}]},
     "mounts volume 'w', which this initializer does not define"),
    ({"initContainerPosition": "middle", "volumes": [{"name": "v"}]},
     'initContainerPosition must be "first" or "last"'),
    ({}, "injects nothing"),
])
def test_invalid_configs_say_what_is_wrong(config: dict[str, Any] | str, message: str) -> None:
    with pytest.raises(InvalidInitializer) as caught:
        parse("x", configmap("x-initializer", config))
    assert message in str(caught.value)


# --- the registry ----------------------------------------------------------------------------

def test_registry_tracks_creates_edits_deletes_and_broken_configs() -> None:
    registry = Registry()
    assert not registry.synced.is_set()
    problems = registry.replace([configmap("a-initializer", LOGGING_AGENT),
                                 configmap("b-initializer", "nope: [")])
    assert registry.synced.is_set()
    assert list(problems) == ["b-initializer"]
    assert set(registry.snapshot().usable) == {"a"}
    assert "not valid YAML" in registry.snapshot().broken["b"]

    assert registry.upsert(configmap("b-initializer", LOGGING_AGENT)) is None  # fixed
    assert set(registry.snapshot().usable) == {"a", "b"}
    registry.delete(configmap("a-initializer", {}))
    assert set(registry.snapshot().usable) == {"b"}
    assert registry.upsert(configmap("unrelated", {})) is None
    assert set(registry.snapshot().usable) == {"b"}


def test_two_configmaps_for_one_name_are_both_refused() -> None:
    registry = Registry()
    registry.replace([configmap("a-initializer", LOGGING_AGENT),
                      configmap("other", LOGGING_AGENT, labels={
                          "initializer.kubernetes.io/name": "a"})])
    assert "a" not in registry.snapshot().usable
    assert registry.snapshot().broken["a"] == \
        "defined by more than one ConfigMap: a-initializer, other"


# --- what a workload asks for ----------------------------------------------------------------

def test_requests_true_false_and_gone() -> None:
    asked = requested([{f"{PREFIX}a": "true", f"{PREFIX}b": "false", "other": "x",
                        f"{PREFIX}c": "true"}], PREFIX, ["a", "b"], recorded=["c"])
    assert asked.wanted == ("a",)
    assert asked.gone == ("c",)  # injected before, deleted since: no refusal


@pytest.mark.parametrize(("annotations", "message"), [
    ({f"{PREFIX}a": "yes"}, 'annotation initializer.kubernetes.io/a: value must be "true" or '
     "\"false\", got 'yes' (known initializers: a, b)"),
    ({f"{PREFIX}zzz": "true"}, "annotation initializer.kubernetes.io/zzz: no initializer named "
     "'zzz' (known initializers: a, b)"),
    ({f"{PREFIX}broken": "true"}, "initializer 'broken' is defined but unusable: bad YAML"),
])
def test_bad_requests_say_why_and_list_the_known(annotations: dict[str, str],
                                                 message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        requested([annotations], PREFIX, ["b", "a"], {"broken": "bad YAML"})
    assert message in str(caught.value)


# --- merging ---------------------------------------------------------------------------------

AGENT = parse("logging-agent", configmap("logging-agent-initializer", LOGGING_AGENT))


def test_merge_appends_and_shares_the_volume_with_the_app() -> None:
    spec = merge(pod(containers=2)["spec"], AGENT)
    assert [c["name"] for c in spec["containers"]] == ["app", "app-1", "logging-agent"]
    assert [c["name"] for c in spec["initContainers"]] == ["log-setup"]
    assert spec["volumes"] == [{"name": "varlog", "emptyDir": {}}]
    for app in spec["containers"][:2]:
        assert app["volumeMounts"] == [{"name": "varlog", "mountPath": "/var/log"}]
        assert app["env"] == [{"name": "LOG_DIR", "value": "/var/log"}]
    assert "env" not in spec["containers"][2]  # sidecars are not the workload's own


def test_init_containers_go_first_or_last() -> None:
    base = pod()["spec"]
    base["initContainers"] = [{"name": "migrate", "image": "m"}]
    last = merge(base, AGENT)
    first = merge(base, parse("x", configmap("x-initializer", {
        **LOGGING_AGENT, "initContainerPosition": "first"})))
    assert [c["name"] for c in last["initContainers"]] == ["migrate", "log-setup"]
    assert [c["name"] for c in first["initContainers"]] == ["log-setup", "migrate"]


def test_identical_content_is_fine_and_different_content_conflicts() -> None:
    once = merge(pod()["spec"], AGENT)
    assert merge(once, AGENT) == once  # re-applied: nothing added twice
    clash = pod()["spec"]
    clash["volumes"] = [{"name": "varlog", "hostPath": {"path": "/var/log"}}]
    with pytest.raises(InjectionConflict, match="already has a different volume of that name"):
        merge(clash, AGENT)
    mounted = pod()["spec"]
    mounted["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/var/log"}]
    with pytest.raises(InjectionConflict, match="already mounts something else there"):
        merge(mounted, AGENT)


def test_merge_does_not_change_its_input() -> None:
    spec = pod()["spec"]
    before = copy.deepcopy(spec)
    merge(spec, AGENT)
    assert spec == before


# --- the admission handler -------------------------------------------------------------------

def test_annotated_pod_gets_sidecar_init_container_and_status() -> None:
    original = pod(annotations=ASK)
    response = _handle(original)
    result = patched(original, response)
    assert [c["name"] for c in result["spec"]["containers"]] == ["app", "logging-agent"]
    assert [c["name"] for c in result["spec"]["initContainers"]] == ["log-setup"]
    record = result["metadata"]["annotations"][RECORD_ANNOTATION]
    assert list(parse_record(record)) == ["logging-agent"]
    ops = json.loads(base64.b64decode(response["patch"]))
    # JSON Pointer escapes "/" as "~1"; the annotations map itself is never replaced.
    assert {"op": "add", "path": "/metadata/annotations/vm.codeconnect.vmworld.com~1injected"
            "-initializers", "value": record} in ops
    assert not any(op["path"] == "/metadata/annotations" for op in ops)


def test_injection_is_idempotent() -> None:
    once = patched(pod(annotations=ASK), _handle(pod(annotations=ASK)))
    assert "patch" not in _handle(once)


def test_unannotated_and_opted_out_pods_get_no_patch() -> None:
    assert "patch" not in _handle(pod())
    assert "patch" not in _handle(pod(annotations={f"{PREFIX}logging-agent": "false"}))


def test_system_and_operator_namespaces_are_never_injected() -> None:
    for namespace in ("kube-system", "vmgroup-system"):
        response = _handle(pod(annotations=ASK), namespace=namespace)
        assert response["allowed"] is True
        assert "patch" not in response


def test_pods_are_only_injected_on_create() -> None:
    assert "patch" not in _handle(pod(annotations=ASK), operation="UPDATE")


def test_deployment_with_the_request_on_its_own_metadata_gets_its_template_injected() -> None:
    original = deployment(annotations=ASK)
    result = patched(original, _handle(original, DEPLOYMENT_KIND))
    template = result["spec"]["template"]
    assert [c["name"] for c in template["spec"]["containers"]] == ["app", "logging-agent"]
    assert list(parse_record(template["metadata"]["annotations"][RECORD_ANNOTATION])) == [
        "logging-agent"]
    # ... and its ReplicaSet's Pods, which inherit the template, are left alone.
    child = pod(annotations={**ASK, **template["metadata"]["annotations"]})
    child["spec"] = template["spec"]
    assert "patch" not in _handle(child)
    # ... and so is an UPDATE of the injected Deployment.
    assert "patch" not in _handle(result, DEPLOYMENT_KIND, operation="UPDATE")


def test_template_request_and_several_initializers() -> None:
    original = deployment(template_annotations={**ASK, f"{PREFIX}metrics": "true"})
    result = patched(original, _handle(original, DEPLOYMENT_KIND, operation="UPDATE"))
    template = result["spec"]["template"]
    assert [c["name"] for c in template["spec"]["containers"]] == [
        "app", "logging-agent", "exporter"]
    assert list(parse_record(template["metadata"]["annotations"][RECORD_ANNOTATION])) == [
        "logging-agent", "metrics"]


def test_jobs_are_injected_on_create_only() -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j",
                                                                  "annotations": ASK},
           "spec": {"template": {"spec": pod()["spec"]}}}
    assert "patch" in _handle(job, JOB_KIND)
    assert "patch" not in _handle(job, JOB_KIND, operation="UPDATE")


def test_unknown_initializer_is_refused_with_the_known_ones() -> None:
    response = _handle(pod(annotations={f"{PREFIX}envoy": "true"}))
    assert response["allowed"] is False
    assert response["status"]["message"] == (
        "annotation initializer.kubernetes.io/envoy: no initializer named 'envoy' "
        "(known initializers: logging-agent, metrics)")


def test_conflict_is_refused() -> None:
    clash = pod(annotations=ASK)
    clash["spec"]["volumes"] = [{"name": "varlog", "hostPath": {"path": "/"}}]
    response = _handle(clash)
    assert response["status"]["code"] == 409
    assert "already has a different volume" in response["status"]["message"]


def test_malformed_pod_spec_is_a_clear_refusal() -> None:
    bad = pod(annotations=ASK)
    bad["spec"]["containers"] = "nginx"
    response = _handle(bad)
    assert response["status"]["message"] == "spec.containers must be a list of objects"


def test_other_kinds_are_refused() -> None:
    response = _handle({"metadata": {}}, {"group": "", "version": "v1", "kind": "Service"})
    assert response["status"]["code"] == 400
