"""Initializer injection through the real API server to the real webhook, driven with kubectl:
ConfigMaps picked up live by every gunicorn worker, Pods and Deployments injected."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hack.stack import poll
from hack.stack.components import Webhook
from hack.stack.workloads import LOGGING_AGENT, configmap, deployment, pod
from initializers.record import RECORD_ANNOTATION, parse_record, version_label, version_of
from initializers.spec import parse
from tests.conftest import Kubectl

pytestmark = pytest.mark.kube

OPERATOR_NS = "vmgroup-system"
ASK = {"initializer.kubernetes.io/logging-agent": "true"}



def _create(kubectl: Kubectl, namespace: str, obj: dict[str, Any], *args: str,
            check: bool = True) -> Any:
    return kubectl("create", "-n", namespace, "-f", "-", "-o", "json", *args,
                   stdin=json.dumps(obj), check=check)


def _dry_run_pod(kubectl: Kubectl, namespace: str, annotations: dict[str, str]) -> Any:
    result = _create(kubectl, namespace, pod("probe", annotations), "--dry-run=server",
                     check=False)
    return json.loads(result.stdout) if result.returncode == 0 else result.stderr


@pytest.fixture(scope="session")
def operator_namespace(kubectl: Kubectl, vmgroup_webhook: Webhook) -> str:
    kubectl("create", "namespace", OPERATOR_NS, check=False)
    return OPERATOR_NS


@pytest.fixture
def logging_agent(kubectl: Kubectl, operator_namespace: str, namespace: str) -> Iterator[str]:
    """The ConfigMap of the original pattern, known to the webhook before the test starts."""
    kubectl("apply", "-f", "-", stdin=json.dumps(
        configmap("logging-agent-initializer", LOGGING_AGENT, operator_namespace)))

    def known() -> bool:
        answer = _dry_run_pod(kubectl, namespace, ASK)
        return isinstance(answer, dict) and len(answer["spec"]["containers"]) == 2

    poll(known, timeout=20, what="the webhook to pick up the initializer")
    yield "logging-agent"
    kubectl("delete", "configmap", "-n", operator_namespace, "logging-agent-initializer",
            "--ignore-not-found")


def test_deployment_of_the_original_pattern_gets_the_sidecar(
        kubectl: Kubectl, logging_agent: str, namespace: str) -> None:
    created = json.loads(_create(kubectl, namespace, deployment("web", annotations=ASK)).stdout)
    template = created["spec"]["template"]
    assert [c["name"] for c in template["spec"]["containers"]] == ["app", "logging-agent"]
    assert [c["name"] for c in template["spec"]["initContainers"]] == ["log-setup"]
    assert template["spec"]["volumes"][0]["name"] == "varlog"
    assert {"name": "varlog", "mountPath": "/var/log"} in \
        template["spec"]["containers"][0]["volumeMounts"]
    assert list(parse_record(template["metadata"]["annotations"][RECORD_ANNOTATION])) == [
        "logging-agent"]

    # kube-controller-manager makes a ReplicaSet of it, and the webhook leaves that alone.
    def replica_set() -> dict[str, Any] | None:
        items = json.loads(kubectl("get", "rs", "-n", namespace, "-o", "json").stdout)["items"]
        return items[0] if items else None

    rs = poll(replica_set, timeout=30, what="the Deployment's ReplicaSet")
    assert [c["name"] for c in rs["spec"]["template"]["spec"]["containers"]] == [
        "app", "logging-agent"]


# --- the lifecycle: upgrade and removal on a workload's update ----------------------------

def _version(config: dict[str, Any]) -> str:
    return version_of(parse("logging-agent", configmap("logging-agent-initializer", config)))


def _deployment(kubectl: Kubectl, namespace: str, name: str = "web") -> Any:
    return json.loads(kubectl("get", "deployment", "-n", namespace, name, "-o", "json").stdout)


def _sidecar_images(template: dict[str, Any]) -> list[str]:
    return [c["image"] for c in template["spec"]["containers"] if c["name"] != "app"]


def _replica_sets(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    return list(json.loads(kubectl("get", "rs", "-n", namespace, "-o", "json").stdout)["items"])


def _teach(kubectl: Kubectl, namespace: str, config: dict[str, Any] | None) -> None:
    """Put (or, with None, delete) the initializer, and wait until the webhook knows."""
    if config is None:
        kubectl("delete", "configmap", "-n", OPERATOR_NS, "logging-agent-initializer")
        poll(lambda: isinstance(_dry_run_pod(kubectl, namespace, ASK), str), timeout=20,
             what="the webhook to forget the initializer")
        return
    kubectl("apply", "-f", "-", stdin=json.dumps(
        configmap("logging-agent-initializer", config, OPERATOR_NS)))
    image = config["containers"][0]["image"]
    poll(lambda: (answer := _dry_run_pod(kubectl, namespace, ASK)) and isinstance(answer, dict)
         and image in [c["image"] for c in answer["spec"]["containers"]], timeout=20,
         what=f"the webhook to inject {image}")


def test_an_edited_initializer_rolls_out_with_rollout_restart(
        kubectl: Kubectl, logging_agent: str, namespace: str) -> None:
    _create(kubectl, namespace, deployment("web", annotations=ASK))
    poll(lambda: _replica_sets(kubectl, namespace), timeout=30, what="the first ReplicaSet")
    newer = json.loads(json.dumps(LOGGING_AGENT))
    newer["containers"][0]["image"] = "fluent/fluent-bit:3.2"
    _teach(kubectl, namespace, newer)
    kubectl("rollout", "restart", "-n", namespace, "deployment/web")
    template = _deployment(kubectl, namespace)["spec"]["template"]
    assert _sidecar_images(template) == ["fluent/fluent-bit:3.2"]
    record = parse_record(template["metadata"]["annotations"][RECORD_ANNOTATION])
    assert record["logging-agent"].version == _version(newer)
    assert template["metadata"]["labels"][version_label("logging-agent")] == _version(newer)
    assert "fluent/fluent-bit:3.1" not in json.dumps(template)

    def new_replica_set() -> bool:  # the Deployment's new ReplicaSet carries the new version
        return any(_sidecar_images(rs["spec"]["template"]) == ["fluent/fluent-bit:3.2"]
                   and rs["metadata"]["labels"].get(version_label("logging-agent"))
                   == _version(newer) for rs in _replica_sets(kubectl, namespace))

    poll(new_replica_set, timeout=30, what="a ReplicaSet of the new version")
    # one command tells who runs which version
    listing = kubectl("get", "deploy,rs", "-n", namespace, "-L",
                      version_label("logging-agent")).stdout
    assert _version(newer) in listing
    assert _version(LOGGING_AGENT) in listing  # the old ReplicaSet, scaled down


@pytest.mark.parametrize("opt_out", [["initializer.kubernetes.io/logging-agent=false",
                                      "--overwrite"], ["initializer.kubernetes.io/logging-agent-"]])
def test_opting_out_on_the_workload_strips_what_was_injected(
        kubectl: Kubectl, logging_agent: str, namespace: str, opt_out: list[str]) -> None:
    _create(kubectl, namespace, deployment("web", annotations=ASK))
    kubectl("annotate", "-n", namespace, "deployment/web", *opt_out)
    template = _deployment(kubectl, namespace)["spec"]["template"]
    assert [c["name"] for c in template["spec"]["containers"]] == ["app"]
    assert "initContainers" not in template["spec"]
    assert "volumes" not in template["spec"]
    assert "env" not in template["spec"]["containers"][0]
    assert RECORD_ANNOTATION not in (template["metadata"].get("annotations") or {})
    assert version_label("logging-agent") not in template["metadata"]["labels"]


def test_a_deleted_initializer_never_blocks_a_rollout(
        kubectl: Kubectl, logging_agent: str, namespace: str) -> None:
    _create(kubectl, namespace, deployment("web", annotations=ASK))
    _teach(kubectl, namespace, None)
    restarted = kubectl("rollout", "restart", "-n", namespace, "deployment/web")
    assert "initializer 'logging-agent' no longer exists: what it injected was removed" in \
        restarted.stderr
    template = _deployment(kubectl, namespace)["spec"]["template"]
    assert [c["name"] for c in template["spec"]["containers"]] == ["app"]
    kubectl("scale", "-n", namespace, "deployment/web", "--replicas=2")  # nor a scale


def test_removing_the_record_by_hand_is_no_conflict(
        kubectl: Kubectl, logging_agent: str, namespace: str) -> None:
    """It was a 409: the sidecar the API server had defaulted no longer equalled the
    initializer's, so injecting again looked like a clash."""
    _create(kubectl, namespace, deployment("web", annotations=ASK))
    key = RECORD_ANNOTATION.replace("/", "~1")
    removed = kubectl("patch", "-n", namespace, "deployment/web", "--type=json", "-p",
                      json.dumps([{"op": "remove",
                                   "path": f"/spec/template/metadata/annotations/{key}"}]),
                      check=False)
    assert removed.returncode == 0, removed.stderr
    template = _deployment(kubectl, namespace)["spec"]["template"]
    assert [c["name"] for c in template["spec"]["containers"]] == ["app", "logging-agent"]
    assert list(parse_record(template["metadata"]["annotations"][RECORD_ANNOTATION])) == [
        "logging-agent"]


def test_annotated_pod_gets_sidecar_and_init_container(kubectl: Kubectl, logging_agent: str,
                                                       namespace: str) -> None:
    created = json.loads(_create(kubectl, namespace, pod("app", ASK)).stdout)
    assert [c["name"] for c in created["spec"]["containers"]] == ["app", "logging-agent"]
    assert [c["name"] for c in created["spec"]["initContainers"]] == ["log-setup"]
    assert created["status"]["phase"] == "Pending"  # no nodes here


def test_unannotated_pod_is_not_even_sent_to_the_webhook(
        kubectl: Kubectl, logging_agent: str, namespace: str, vmgroup_webhook: Webhook) -> None:
    created = json.loads(_create(kubectl, namespace, pod("plain")).stdout)
    assert [c["name"] for c in created["spec"]["containers"]] == ["app"]
    assert RECORD_ANNOTATION not in (created["metadata"].get("annotations") or {})
    assert not [e for e in vmgroup_webhook.process.log_entries()  # matchConditions kept it
                if e.get("object") == "plain" and e.get("namespace") == namespace]  # from us


def test_unknown_initializer_is_refused_with_our_message(kubectl: Kubectl, logging_agent: str,
                                                         namespace: str) -> None:
    result = _create(kubectl, namespace, pod("x", {"initializer.kubernetes.io/envoy": "true"}),
                     check=False)
    assert result.returncode == 1
    assert ('admission webhook "inject.pods.vm.codeconnect.vmworld.com" denied the request: '
            "annotation initializer.kubernetes.io/envoy: no initializer named 'envoy' "
            "(known initializers: logging-agent)") in result.stderr


def test_editing_the_configmap_changes_the_next_pod_without_restart(
        kubectl: Kubectl, logging_agent: str, namespace: str, vmgroup_webhook: Webhook) -> None:
    workers = vmgroup_webhook.process.pid
    edited = {**LOGGING_AGENT, "containers": [
        {**LOGGING_AGENT["containers"][0], "image": "fluent/fluent-bit:4.0"}]}
    kubectl("apply", "-f", "-", stdin=json.dumps(
        configmap("logging-agent-initializer", edited, OPERATOR_NS)))

    def new_image() -> bool:  # several requests, so every worker is asked
        answers = [_dry_run_pod(kubectl, namespace, ASK) for _ in range(4)]
        return all(isinstance(a, dict) and a["spec"]["containers"][1]["image"]
                   == "fluent/fluent-bit:4.0" for a in answers)

    poll(new_image, timeout=20, what="every worker to serve the edited initializer")
    assert vmgroup_webhook.process.pid == workers

    kubectl("delete", "configmap", "-n", OPERATOR_NS, "logging-agent-initializer")
    poll(lambda: "no initializer named 'logging-agent'" in str(
        _dry_run_pod(kubectl, namespace, ASK)), timeout=20, what="the deletion to be seen")


def test_server_dry_run_injects_without_storing(kubectl: Kubectl, logging_agent: str,
                                                namespace: str) -> None:
    answer = _dry_run_pod(kubectl, namespace, ASK)
    assert [c["name"] for c in answer["spec"]["containers"]] == ["app", "logging-agent"]
    assert "NotFound" in kubectl("get", "pod", "probe", "-n", namespace, check=False).stderr


def test_namespace_can_opt_out(kubectl: Kubectl, logging_agent: str, namespace: str) -> None:
    kubectl("label", "namespace", namespace, "initializer.kubernetes.io/injection=disabled")
    created = json.loads(_create(kubectl, namespace, pod("app", ASK)).stdout)
    assert [c["name"] for c in created["spec"]["containers"]] == ["app"]


def test_invalid_configmap_is_reported_and_not_used(
        kubectl: Kubectl, operator_namespace: str, namespace: str,
        vmgroup_webhook: Webhook, webhook_http: requests.Session) -> None:
    kubectl("apply", "-f", "-", stdin=json.dumps(
        configmap("broken-initializer", {"containers": [{"name": "x"}]}, operator_namespace)))
    try:
        def event() -> str | None:
            out = kubectl("get", "events", "-n", operator_namespace, "-o", "json",
                          "--field-selector", "involvedObject.name=broken-initializer").stdout
            items = json.loads(out)["items"]
            return items[0]["message"] if items else None

        message = poll(event, timeout=20, what="a Warning Event on the ConfigMap")
        assert message == "containers[0].image must be a non-empty string"
        refused = _create(kubectl, namespace, pod("x", {"initializer.kubernetes.io/broken":
                                                        "true"}), check=False)
        assert "initializer 'broken' is defined but unusable: containers[0].image" in \
            refused.stderr
        metrics = webhook_http.get(vmgroup_webhook.url + "/metrics").text
        assert 'vmgroup_webhook_initializers{state="broken"} 1.0' in metrics
    finally:
        kubectl("delete", "configmap", "-n", operator_namespace, "broken-initializer")


# --- hypothesis: random Pods through the real API server -------------------------------------

names = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
containers = st.lists(st.builds(lambda n, img: {"name": n, "image": img}, names,
                                st.sampled_from(["nginx", "busybox:1.36"])),
                      min_size=1, max_size=3, unique_by=lambda c: c["name"])
volumes = st.lists(st.builds(lambda n: {"name": n, "emptyDir": {}},
                             names | st.just("varlog")), max_size=2, unique_by=lambda v: v["name"])
annotation_values = st.sampled_from(["true", "false", "yes", "", "TRUE"]) | st.text(max_size=5)
random_annotations = st.dictionaries(
    st.sampled_from(["initializer.kubernetes.io/logging-agent", "initializer.kubernetes.io/x",
                     "example.com/other", RECORD_ANNOTATION]), annotation_values, max_size=3)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(containers=containers, volumes=volumes, annotations=random_annotations)
def test_random_pods_never_get_a_patch_the_api_server_rejects(
        kubectl: Kubectl, logging_agent: str, namespace: str, containers: list[Any],
        volumes: list[Any], annotations: dict[str, str]) -> None:
    manifest = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "random", "annotations": annotations},
                "spec": {"containers": containers, "volumes": volumes}}
    result = _create(kubectl, namespace, manifest, "--dry-run=server", check=False)
    if result.returncode == 0:
        return
    # Refusals must be ours and deliberate, never a broken patch or a failed call.
    assert "denied the request" in result.stderr, result.stderr
    for sign in ("failed calling webhook", "JSON patch", "jsonpatch", "Internal error"):
        assert sign not in result.stderr, result.stderr
