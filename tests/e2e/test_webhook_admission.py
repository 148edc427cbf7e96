"""VmGroup admission through the real API server to the real webhook, driven with kubectl."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import yaml

from hack.stack import REPO
from hack.stack.components import Webhook
from hack.stack.stack import OPERATOR_NAMESPACE
from tests.conftest import Kubectl

pytestmark = pytest.mark.kube

EXAMPLE = REPO / "examples" / "vmgroup.yaml"


def _manifest(name: str = "vg-1", **spec: Any) -> str:
    return yaml.safe_dump({"apiVersion": "vm.codeconnect.vmworld.com/v1alpha1",
                           "kind": "VmGroup", "metadata": {"name": name}, "spec": spec})


def _spec(kubectl: Kubectl, namespace: str, name: str = "vg-1") -> dict[str, Any]:
    out = kubectl("get", "vg", name, "-n", namespace, "-o", "jsonpath={.spec}").stdout
    return dict(json.loads(out))


def test_example_is_accepted_verbatim(kubectl: Kubectl, vmgroup_webhook: Webhook,
                                      namespace: str) -> None:
    kubectl("create", "-n", namespace, "-f", str(EXAMPLE))
    assert _spec(kubectl, namespace) == yaml.safe_load(EXAMPLE.read_text())["spec"]


def test_only_template_comes_back_defaulted(kubectl: Kubectl, vmgroup_webhook: Webhook,
                                            namespace: str) -> None:
    kubectl("create", "-n", namespace, "-f", "-", stdin=_manifest(template="tpl"))
    assert _spec(kubectl, namespace) == {"cpu": 1, "memory": 1, "replicas": 1, "template": "tpl"}


@pytest.mark.parametrize(("spec", "message"), [
    ({"template": "t", "cpu": 17},
     "spec.cpu: Invalid value: 17: must be from 1 to 16 (this cluster's policy)"),
    ({"template": "t", "memory": 65},
     "spec.memory: Invalid value: 65: must be from 1 to 64 (this cluster's policy)"),
    ({"template": "t", "replicas": 51},
     "spec.replicas: Invalid value: 51: must be from 0 to 50 (this cluster's policy)"),
    ({"cpu": 2}, "spec.template: Required value: name of the vSphere template to clone"),
    ({"template": "a/b"}, "spec.template: Invalid value: \"a/b\": must not contain '/'"),
])
def test_invalid_spec_is_refused_with_our_message(kubectl: Kubectl, vmgroup_webhook: Webhook,
                                                  namespace: str, spec: dict[str, Any],
                                                  message: str) -> None:
    result = kubectl("create", "-n", namespace, "-f", "-", stdin=_manifest(**spec), check=False)
    assert result.returncode == 1
    assert (f'admission webhook "validate.vmgroups.vm.codeconnect.vmworld.com" denied the '
            f"request: {message}") in result.stderr


def test_vm_names_longer_than_vsphere_allows_are_refused(
        kubectl: Kubectl, vmgroup_webhook: Webhook, namespace: str) -> None:
    # namespace (12) + "-" + name + "-" + ordinal: 65 characters of name leave room for 0..9.
    name = "n" * 65
    kubectl("create", "-n", namespace, "-f", "-", stdin=_manifest(name, template="t",
                                                                  replicas=10))
    result = kubectl("scale", "vg", name, "-n", namespace, "--replicas=11", check=False)
    assert result.returncode == 1
    assert "VM names would be up to 81 characters" in result.stderr


def test_template_cannot_change(kubectl: Kubectl, vmgroup_webhook: Webhook,
                                namespace: str) -> None:
    kubectl("create", "-n", namespace, "-f", str(EXAMPLE))
    result = kubectl("patch", "vg", "vg-1", "-n", namespace, "--type=merge",
                     "-p", '{"spec": {"template": "other"}}', check=False)
    assert result.returncode == 1
    assert 'spec.template: Invalid value: "other": field is immutable ' \
           '(was "vm-operator-template")' in result.stderr
    kubectl("patch", "vg", "vg-1", "-n", namespace, "--type=merge", "-p", '{"spec": {"cpu": 2}}')
    assert _spec(kubectl, namespace)["cpu"] == 2


def test_server_dry_run_defaults_and_validates_without_storing(
        kubectl: Kubectl, vmgroup_webhook: Webhook, namespace: str) -> None:
    out = kubectl("create", "-n", namespace, "--dry-run=server", "-o", "json", "-f", "-",
                  stdin=_manifest(template="tpl")).stdout
    assert json.loads(out)["spec"] == {"cpu": 1, "memory": 1, "replicas": 1, "template": "tpl"}
    refused = kubectl("create", "-n", namespace, "--dry-run=server", "-f", "-",
                      stdin=_manifest(template="t", cpu=99), check=False)
    assert "spec.cpu: Invalid value: 99" in refused.stderr
    assert "NotFound" in kubectl("get", "vg", "vg-1", "-n", namespace, check=False).stderr


def test_kubectl_scale_obeys_the_replicas_policy(kubectl: Kubectl, vmgroup_webhook: Webhook,
                                                 namespace: str) -> None:
    kubectl("create", "-n", namespace, "-f", str(EXAMPLE))
    kubectl("scale", "vg", "vg-1", "-n", namespace, "--replicas=5")
    assert _spec(kubectl, namespace)["replicas"] == 5
    refused = kubectl("scale", "vg", "vg-1", "-n", namespace, "--replicas=51", check=False)
    assert "spec.replicas: Invalid value: 51: must be from 0 to 50" in refused.stderr
    assert _spec(kubectl, namespace)["replicas"] == 5


def test_zero_replicas_is_accepted_with_a_warning(kubectl: Kubectl, vmgroup_webhook: Webhook,
                                                  namespace: str) -> None:
    result = kubectl("create", "-n", namespace, "-f", "-",
                     stdin=_manifest(template="t", replicas=0))
    assert "Warning: spec.replicas is 0: the group will have no VMs" in result.stderr


def test_a_group_being_deleted_can_always_lose_its_finalizer(
        kubectl: Kubectl, vmgroup_webhook: Webhook, namespace: str) -> None:
    manifest = yaml.safe_load(_manifest(template="t"))
    manifest["metadata"]["finalizers"] = ["vm.codeconnect.vmworld.com/test"]
    kubectl("create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest))
    kubectl("delete", "vg", "vg-1", "-n", namespace, "--wait=false")
    # Even an edit the policy would otherwise refuse (cpu 40 > 16) goes through now. (The
    # template stays immutable: the CRD's own rule, which no webhook decision lifts.)
    kubectl("patch", "vg", "vg-1", "-n", namespace, "--type=json", "-p",
            '[{"op": "remove", "path": "/metadata/finalizers"},'
            ' {"op": "replace", "path": "/spec/cpu", "value": 40}]')
    assert "NotFound" in kubectl("get", "vg", "vg-1", "-n", namespace, check=False).stderr


@pytest.mark.parametrize("system_namespace", ["kube-system", OPERATOR_NAMESPACE])
def test_the_policy_holds_in_system_and_operator_namespaces(
        kubectl: Kubectl, vmgroup_webhook: Webhook, system_namespace: str) -> None:
    """No namespace is a way around the policy: the VmGroup webhooks see every one (it was
    possible to clone a 500-vCPU VM from kube-system)."""
    kubectl("create", "namespace", system_namespace, check=False)  # the operator's may be new
    name = f"policy-{uuid.uuid4().hex[:8]}"
    refused = kubectl("create", "-n", system_namespace, "-f", "-",
                      stdin=_manifest(name, template="t", cpu=500), check=False)
    assert refused.returncode == 1
    assert "spec.cpu: Invalid value: 500: must be from 1 to 16 (this cluster's policy)" in \
        refused.stderr
    kubectl("create", "-n", system_namespace, "-f", "-", stdin=_manifest(name, template="t"))
    try:
        assert _spec(kubectl, system_namespace, name)["cpu"] == 1  # defaulted there too
        changed = kubectl("patch", "vg", name, "-n", system_namespace, "--type=merge",
                          "-p", '{"spec": {"template": "other"}}', check=False)
        assert changed.returncode == 1
        assert 'field is immutable (was "t")' in changed.stderr
    finally:
        kubectl("delete", "vg", name, "-n", system_namespace, "--wait=false")
