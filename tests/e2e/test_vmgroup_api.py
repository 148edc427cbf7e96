"""The VmGroup API served by the real API server from the repository's CRD file."""

from __future__ import annotations

import functools
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch

from hack.stack import CRD_PATH, REPO, LocalStack
from hack.stack.components import kubectl
from tests.conftest import Kubectl

pytestmark = pytest.mark.kube

GROUP, VERSION, PLURAL = "vm.codeconnect.vmworld.com", "v1alpha1", "vmgroups"
EXAMPLE = REPO / "examples" / "vmgroup.yaml"


def _example() -> dict[str, Any]:
    return dict(yaml.safe_load(EXAMPLE.read_text()))


def test_kubectl_get_vg_prints_the_contract_header(kubectl: Kubectl, vmgroup_crd: str,
                                                   namespace: str) -> None:
    kubectl("create", "-n", namespace, "-f", str(EXAMPLE))
    lines = kubectl("get", "vg", "-n", namespace).stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "CURRENT", "DESIRED", "CPU", "MEMORY",
                                "TEMPLATE", "LAST_MESSAGE"]
    assert lines[1].split() == ["vg-1", "1", "1", "vm-operator-template"]  # no status yet
    wide = kubectl("get", "vmgroups", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-1] == "AGE"


def test_create_get_list_watch_and_patch_status(api_client: client.ApiClient,
                                                vmgroup_crd: str, namespace: str) -> None:
    api = client.CustomObjectsApi(api_client)
    created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _example())
    assert created["spec"] == _example()["spec"]
    assert api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "vg-1")[
        "metadata"]["uid"] == created["metadata"]["uid"]
    listed = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["vg-1"]

    # Watch from the list's resourceVersion, then write status from another thread.
    seen: list[dict[str, Any]] = []
    stream = watch.Watch()
    status = {"phase": "RUNNING", "currentReplicas": 3, "desiredReplicas": 3,
              "lastMessage": "successfully reconciled VmGroup", "observedGeneration": 1}

    def patch_status() -> None:
        api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "vg-1",
                                                  {"status": status})

    writer = threading.Timer(0.5, patch_status)
    writer.start()
    try:
        for event in stream.stream(api.list_namespaced_custom_object, GROUP, VERSION, namespace,
                                   PLURAL, resource_version=listed["metadata"]["resourceVersion"],
                                   timeout_seconds=30):
            seen.append(event)
            if event["type"] == "MODIFIED" and event["object"].get("status"):
                stream.stop()
    finally:
        writer.join()
    assert seen[-1]["object"]["status"] == status

    # The status subresource writes status only; the main resource ignores status.
    after = api.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "vg-1", {"spec": {"replicas": 9}})
    assert after["spec"]["replicas"] == 3
    after = api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "vg-1", {"status": {"phase": "ERROR"}})
    assert after["status"]["phase"] == "RUNNING"


def test_kubectl_scale_uses_the_scale_subresource(kubectl: Kubectl, vmgroup_crd: str,
                                                  namespace: str) -> None:
    kubectl("create", "-n", namespace, "-f", str(EXAMPLE))
    kubectl("scale", "vg", "vg-1", "-n", namespace, "--replicas=5")
    replicas = kubectl("get", "vg", "vg-1", "-n", namespace, "-o",
                       "jsonpath={.spec.replicas}").stdout
    assert replicas == "5"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("cpu", 0, "spec.cpu: Invalid value: 0: spec.cpu in body should be greater than or equal to 1"),
    ("memory", 24577, "spec.memory in body should be less than or equal to 24576"),
    ("replicas", -1, "spec.replicas in body should be greater than or equal to 0"),
    ("template", "x" * 81, "spec.template: Too long"),
])
def test_schema_enforces_vsphere_hard_bounds(kubectl: Kubectl, vmgroup_crd: str, namespace: str,
                                             field: str, value: object, message: str) -> None:
    manifest = _example()
    manifest["spec"][field] = value
    result = kubectl("create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest),
                     check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_the_template_is_immutable_even_without_the_webhook(tmp_path: Path) -> None:
    """A CEL rule in the CRD itself: it holds when the webhook is bypassed, down under
    failurePolicy Ignore, or not installed at all (this API server has none)."""
    with LocalStack(tmp_path, vcenter=False) as stack:
        run = functools.partial(kubectl, stack.kubeconfig)
        run("apply", "--server-side", "-f", str(CRD_PATH))
        run("wait", "--for=condition=Established", "crd/vmgroups.vm.codeconnect.vmworld.com")
        run("create", "-n", "kube-system", "-f", str(EXAMPLE))
        with pytest.raises(subprocess.CalledProcessError) as refused:
            run("patch", "vg", "vg-1", "-n", "kube-system", "--type=merge",
                "-p", '{"spec": {"template": "other"}}')
        assert ('spec.template: Invalid value: "other": field is immutable '
                '(was "vm-operator-template"); create a new VmGroup to use another template'
                ) in refused.value.stderr
        run("patch", "vg", "vg-1", "-n", "kube-system", "--type=merge",
            "-p", '{"spec": {"cpu": 2}}')  # the rest stays editable
