"""The control plane is a real one: version, RBAC, admission webhooks, namespaces, GC, Pods."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hack.stack import REPO, poll
from tests.conftest import Kubectl

pytestmark = pytest.mark.kube


def _pinned_kubernetes_version() -> str:
    go_mod = (REPO / "hack/tools/kubernetes/go.mod").read_text()
    match = re.search(r"k8s\.io/kubernetes (v\d+\.\d+\.\d+)", go_mod)
    assert match, "hack/tools/kubernetes/go.mod pins no k8s.io/kubernetes version"
    return match.group(1)


def test_server_and_kubectl_report_the_pinned_version(kubectl: Kubectl) -> None:
    versions = json.loads(kubectl("version", "-o", "json").stdout)
    pinned = _pinned_kubernetes_version()
    assert versions["serverVersion"]["gitVersion"] == pinned
    assert versions["clientVersion"]["gitVersion"] == pinned


def test_every_namespace_gets_a_default_service_account_and_pods_stay_pending(
        api_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="p"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]))
    created = core.create_namespaced_pod(namespace, pod)
    assert created.spec.service_account_name == "default"  # ServiceAccount admission ran
    assert core.read_namespaced_pod("p", namespace).status.phase == "Pending"  # no scheduler


def test_deleted_namespace_is_finalized(api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    name = f"t-del-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(name, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="content")))
    core.delete_namespace(name)

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as exc:
            return exc.status == 404
        return False

    poll(gone, timeout=60, what=f"namespace {name} to be finalized")


def test_garbage_collector_deletes_owned_objects(api_client: client.ApiClient,
                                                 namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="owner")))
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(
        name="dependent",
        owner_references=[client.V1OwnerReference(
            api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)])))
    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        names = [c.metadata.name for c in core.list_namespaced_config_map(namespace).items]
        return "dependent" not in names

    poll(dependent_gone, timeout=60, what="the garbage collector to delete the dependent")


def test_rbac_is_enforced(kubectl: Kubectl, namespace: str) -> None:
    who = f"--as=system:serviceaccount:{namespace}:default"
    assert kubectl("auth", "can-i", "list", "secrets", "-n", namespace, who,
                   check=False).stdout.strip() == "no"
    assert kubectl("auth", "can-i", "list", "secrets", "-n", namespace).stdout.strip() == "yes"


def test_admission_webhooks_are_called(api_client: client.ApiClient, namespace: str) -> None:
    """A validating webhook registered by URL is consulted: with nothing listening, and
    failurePolicy Fail, the API server refuses the object and says it could not call us."""
    admission = client.AdmissionregistrationV1Api(api_client)
    core = client.CoreV1Api(api_client)
    core.patch_namespace(namespace, {"metadata": {"labels": {"webhook-probe": namespace}}})
    name = f"probe-{namespace}"
    admission.create_validating_webhook_configuration(client.V1ValidatingWebhookConfiguration(
        metadata=client.V1ObjectMeta(name=name),
        webhooks=[client.V1ValidatingWebhook(
            name="probe.vmgroup.test",
            client_config=client.AdmissionregistrationV1WebhookClientConfig(
                url="https://127.0.0.1:1/validate"),
            rules=[client.V1RuleWithOperations(operations=["CREATE"], api_groups=[""],
                                               api_versions=["v1"], resources=["configmaps"])],
            namespace_selector=client.V1LabelSelector(match_labels={"webhook-probe": namespace}),
            failure_policy="Fail", side_effects="None", admission_review_versions=["v1"],
            timeout_seconds=2)]))
    try:
        def refused() -> str | None:
            try:
                core.create_namespaced_config_map(namespace, client.V1ConfigMap(
                    metadata=client.V1ObjectMeta(generate_name="cm-")))
            except ApiException as exc:
                return str(exc.body) if "failed calling webhook" in str(exc.body) else None
            return None

        # The API server picks up new webhook configurations asynchronously.
        message = poll(refused, timeout=30, what="the webhook to be consulted")
        assert "probe.vmgroup.test" in message
    finally:
        admission.delete_validating_webhook_configuration(name)
