"""Shared pytest fixtures: the real local stack, started once per session and only when needed.

A test that asks for `api_client`, `kubeconfig` or `kubectl` gets the real kube-apiserver (with
etcd and kube-controller-manager); one that asks for `vcenter` or `vsphere_si` gets VMware's
vcsim. Unit tests ask for neither and start nothing.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from kubernetes import client, config

from hack.stack import CRD_PATH, LocalStack, VCenterInfo, binary, poll, vsphere
from hack.stack.components import Webhook

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def kube_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("kube"), vcenter=False) as stack:
        yield stack


@pytest.fixture(scope="session")
def vcsim_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("vcsim"), kube=False) as stack:
        yield stack


@pytest.fixture(scope="session")
def kubeconfig(kube_stack: LocalStack) -> Path:
    return kube_stack.kubeconfig


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    yield api
    api.close()


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    """Run the real kubectl against the stack: kubectl("get", "vg", check=False)."""
    exe = binary("kubectl")

    def run(*args: str, check: bool = True, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([exe, f"--kubeconfig={kubeconfig}", *args], input=stdin,
                                capture_output=True, text=True, timeout=timeout,
                                check=False)
        if check and result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                        f"{result.stderr}{result.stdout}")
        return result

    return run


@pytest.fixture(scope="session")
def vmgroup_crd(kubectl: Kubectl) -> str:
    """The VmGroup CRD from the repository, installed and Established."""
    kubectl("apply", "--server-side", "-f", str(CRD_PATH))
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            "crd/vmgroups.vm.codeconnect.vmworld.com")
    return "vmgroups.vm.codeconnect.vmworld.com"


@pytest.fixture
def namespace(api_client: client.ApiClient) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (finalized by the real kcm)."""
    core = client.CoreV1Api(api_client)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods need the namespace's default ServiceAccount, which kube-controller-manager creates.
    poll(lambda: core.read_namespaced_service_account("default", name), timeout=30,
         what=f"ServiceAccount default in {name}")
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def vcenter(vcsim_stack: LocalStack) -> VCenterInfo:
    return vcsim_stack.vcenter


@pytest.fixture(scope="session")
def vsphere_si(vcenter: VCenterInfo) -> Iterator[Any]:
    """A pyvmomi ServiceInstance logged into vcsim with TLS verified."""
    si = vsphere.connect(vcenter)
    yield si
    vsphere.disconnect(si)


# The e2e webhook runs with a policy stricter than the defaults, so tests see it applied.
WEBHOOK_POLICY = {"max_cpu": 16, "max_memory": 64, "max_replicas": 50}


@pytest.fixture(scope="session")
def vmgroup_webhook(kube_stack: LocalStack, kubectl: Kubectl, vmgroup_crd: str) -> Webhook:
    """The real vmgroup-webhook under gunicorn, registered with the API server by URL."""
    webhook = kube_stack.start_webhook(
        [f"--{k.replace('_', '-')}={v}" for k, v in WEBHOOK_POLICY.items()])
    probe = ("apiVersion: vm.codeconnect.vmworld.com/v1alpha1\nkind: VmGroup\n"
             "metadata: {name: probe, namespace: default}\nspec: {template: t}\n")

    def defaulted() -> bool:
        out = kubectl("create", "--dry-run=server", "-o", "jsonpath={.spec.cpu}", "-f", "-",
                      stdin=probe, check=False)
        return out.stdout == "1"

    # The API server picks up new webhook configurations asynchronously.
    poll(defaulted, timeout=30, what="the API server to call the registered webhook")
    return webhook


@pytest.fixture(scope="session")
def webhook_http(vmgroup_webhook: Webhook) -> Iterator[requests.Session]:
    """An HTTPS session to the webhook that trusts the stack's CA (keep-alive, like the API
    server's)."""
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would beat `verify`
    session.verify = str(vmgroup_webhook.ca)
    yield session
    session.close()
