"""The Helm chart: lint, schema, rendering with each toggle, and install / upgrade / uninstall
into a real API server of its own (the chart's Pods cannot run here: there are no nodes, but
every object is created and checked, and the controller is run next to it exactly as its
Deployment configures it, with its ServiceAccount's token)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from controller.__main__ import ENV_PREFIX as CONTROLLER_ENV
from controller.__main__ import parser as controller_parser
from hack.stack import REPO, LocalStack, bin_dir, binary, poll
from hack.stack.components import free_port, kubectl
from hack.stack.process import Process, write_private
from initializers.spec import initializer_name, parse
from webhook import registration

pytestmark = pytest.mark.kube

CHART = REPO / "charts" / "vmgroup-operator"
RELEASE, NAMESPACE = "vgo", "vmgroup-system"
CONTROLLER = "vgo-vmgroup-operator-controller"
PASSWORD = "Vc-pw-9f2a7c"  # of the chart-created Secret in the toggles: must be nowhere else
# The controller needs a vCenter and credentials: every render and install names them (later
# --set arguments override them).
VCENTER = ["--set", "controller.vcenter.server=vcenter.example.com",
           "--set", "controller.vcenter.credentials.existingSecret=vcenter-credentials"]
CREATED_SECRET = ["--set", "controller.vcenter.credentials.existingSecret=",
                  "--set-string", "controller.vcenter.credentials.username=vgo@vsphere.local",
                  "--set-string", f"controller.vcenter.credentials.password={PASSWORD}"]
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBczCCARmgAwIBAgIU\n-----END CERTIFICATE-----\n"
TOGGLES = {
    "defaults": [],
    "cert-manager": ["--set", "webhook.certManager.enabled=true"],
    "cert-manager-clusterissuer": [
        "--set", "webhook.certManager.enabled=true",
        "--set", "webhook.certManager.issuerRef.name=corp-ca",
        "--set", "webhook.certManager.issuerRef.kind=ClusterIssuer"],
    "no-pdb-one-replica": ["--set", "webhook.podDisruptionBudget.enabled=false",
                           "--set", "webhook.replicas=1"],
    "cert-manager-issuer-and-pdb-max": [
        "--set", "webhook.certManager.enabled=true",
        "--set", "webhook.certManager.issuerRef.name=team-issuer",
        "--set", "webhook.podDisruptionBudget.minAvailable=50%"],
    "initializers": ["--set", "initializers.configs.logging-agent.enabled=true",
                     "--set", "initializers.failurePolicy=Fail"],
    "policy": ["--set", "webhook.policy.maxCpu=8", "--set",
               "webhook.policy.defaultTemplate=golden", "--set",
               "webhook.excludedNamespaces={team-x}"],
    "created-secret-and-ca": [*CREATED_SECRET,
                              "--set-json", f"controller.vcenter.caBundle={json.dumps(CA_PEM)}"],
    "existing-secret-keys-and-ca-configmap": [
        "--set", "controller.vcenter.credentials.usernameKey=user",
        "--set", "controller.vcenter.credentials.passwordKey=pass",
        "--set", "controller.vcenter.existingCaConfigMap.name=corp-ca",
        "--set", "controller.vcenter.existingCaConfigMap.key=bundle.pem",
        "--set", "controller.vcenter.port=8443",
        "--set", "controller.vcenter.datacenter=DC1",
        "--set", "controller.vcenter.baseFolder=k8s/vmgroups",
        "--set", "controller.vcenter.resourcePool=/DC1/host/C1/Resources/k8s",
        "--set", "controller.vcenter.datastore=ds-k8s",
        "--set", "controller.workers=8", "--set", "controller.maxVcenterTasks=20",
        "--set", "controller.resyncSeconds=300", "--set", "controller.logLevel=debug",
        "--set", "controller.leaseName=vmgroups-leader"],
    "three-controllers-scheduled": [
        "--set", "controller.replicas=3",
        "--set", "controller.podDisruptionBudget.minAvailable=2",
        "--set", "controller.nodeSelector.pool=system",
        "--set", "controller.tolerations[0].key=dedicated",
        "--set", "controller.tolerations[0].operator=Exists",
        "--set", "controller.podAnnotations.team=platform",
        "--set", "controller.metrics.prometheusAnnotations=false"],
    "one-insecure-controller": ["--set", "controller.replicas=1",
                                "--set", "controller.vcenter.insecure=true"],
    "controller-disabled": ["--set", "controller.enabled=false",
                            "--set", "controller.vcenter.server=",
                            "--set", "controller.vcenter.credentials.existingSecret="],
}
Helm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    home = tmp_path_factory.mktemp("helm-home")  # no cache or config from the user's own helm

    def run(*args: str, check: bool = True, kubeconfig: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
        config = [f"--kubeconfig={kubeconfig}"] if kubeconfig else []
        result = subprocess.run([binary("helm"), *config, *args], capture_output=True,
                                text=True, timeout=120, check=False,
                                env={"PATH": "/usr/bin:/bin", "HOME": str(home)})
        if check and result.returncode != 0:
            pytest.fail(f"helm {' '.join(args)}:\n{result.stderr}")
        return result
    return run


def _chart(*values: str) -> list[str]:
    """The chart and its values: a vCenter first, then `values` (which may override it)."""
    return [str(CHART), "--namespace", NAMESPACE, *VCENTER, *values]


def _render(helm: Helm, *values: str) -> list[dict[str, Any]]:
    out = helm("template", RELEASE, *_chart(*values)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _component(docs: list[dict[str, Any]], component: str) -> list[dict[str, Any]]:
    return [d for d in docs
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component]


def _deployment(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    (deployment,) = _by_kind(_component(docs, component), "Deployment")
    return deployment


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("toggle", TOGGLES)
def test_lint_strict(helm: Helm, toggle: str) -> None:
    result = helm("lint", "--strict", *_chart(*TOGGLES[toggle]))
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(("values", "message"), [
    (["--set", "webhook.replicas=0"], "at '/webhook/replicas': minimum: got 0, want 1"),
    (["--set", "webhook.policy.maxCpu=1000"], "at '/webhook/policy/maxCpu': maximum"),
    (["--set", "webhook.logLevel=verbose"], "at '/webhook/logLevel'"),
    (["--set", "webhook.polcy.maxCpu=3"], "additional properties 'polcy' not allowed"),
    (["--set", "webhook.policy.defaultTemplate=a/b"], "at '/webhook/policy/defaultTemplate'"),
    (["--set", "webhook.timeoutSeconds=31"], "at '/webhook/timeoutSeconds': maximum"),
    (["--set", "webhook.certManager.issuerRef.nmae=x"], "additional properties 'nmae'"),
    (["--set", "initializers.failurePolicy=Sometimes"], "at '/initializers/failurePolicy'"),
    (["--set", "initializers.prefix=no-slash"], "at '/initializers/prefix'"),
    (["--set", "initializers.configs.Bad_Name.config.x=1"], "invalid propertyName 'Bad_Name'"),
    (["--set", "controller.replicas=-1"], "at '/controller/replicas': minimum: got -1, want 1"),
    (["--set", "controller.replicas=0"], "at '/controller/replicas': minimum: got 0, want 1"),
    (["--set", "controller.vcenter.server="],
     "at '/controller/vcenter/server': minLength: got 0, want 1"),
    (["--set", "controller.vcenter.server=https://vc.example.com/sdk"],
     "at '/controller/vcenter/server'"),
    (["--set", "controller.vcenter.credentials.existingSecret="],
     "at '/controller/vcenter/credentials': 'anyOf' failed"),
    (["--set", "controller.vcenter.credentials.existingSecret=",
      "--set", "controller.vcenter.credentials.username=u"],
     "at '/controller/vcenter/credentials/password': minLength: got 0, want 1"),
    (["--set-string", f"controller.vcenter.credentials.password={PASSWORD}"],
     "at '/controller/vcenter/credentials/password': maxLength"),
    (["--set", "controller.vcenter.credentials.username=u"],
     "at '/controller/vcenter/credentials/username': maxLength"),
    (["--set-json", f"controller.vcenter.caBundle={json.dumps(CA_PEM)}",
      "--set", "controller.vcenter.insecure=true"], "at '/controller/vcenter/insecure'"),
    (["--set-json", f"controller.vcenter.caBundle={json.dumps(CA_PEM)}",
      "--set", "controller.vcenter.existingCaConfigMap.name=corp-ca"],
     "at '/controller/vcenter/existingCaConfigMap/name': maxLength"),
    (["--set", "controller.vcenter.existingCaConfigMap.name=corp-ca",
      "--set", "controller.vcenter.insecure=true"], "at '/controller/vcenter/insecure'"),
    (["--set", "controller.vcenter.caBundle=not-a-pem"], "at '/controller/vcenter/caBundle'"),
    (["--set", "controller.vcenter.sever=vc"], "additional properties 'sever' not allowed"),
    (["--set", "controller.leaseName=Bad_Lease"], "at '/controller/leaseName'"),
    (["--set", "controller.logLevel=trace"], "at '/controller/logLevel'"),
    (["--set", "controller.vcenter.port=0"], "at '/controller/vcenter/port': minimum"),
])
def test_wrong_values_are_refused_by_the_schema(helm: Helm, values: list[str],
                                                message: str) -> None:
    result = helm("template", RELEASE, *_chart(*values), check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert PASSWORD not in result.stderr  # a refused password is not echoed


def test_a_disabled_controller_needs_no_vcenter_and_leaves_nothing(helm: Helm) -> None:
    docs = _render(helm, *TOGGLES["controller-disabled"])
    assert not _component(docs, "controller")
    assert _deployment(docs, "webhook")
    rules = [rule for role in _by_kind(docs, "ClusterRole") for rule in role["rules"]]
    assert not rules  # the webhook has no cluster-wide rights either


def test_initializers_from_values_are_valid_initializers(helm: Helm) -> None:
    docs = _render(helm, *TOGGLES["initializers"])
    (cm,) = _by_kind(docs, "ConfigMap")
    name = initializer_name(cm)
    assert name == "logging-agent"
    assert parse(name, cm).containers[0]["name"] == "logging-agent"
    assert not _by_kind(_render(helm), "ConfigMap")  # the example is off by default


def test_webhook_rules_are_those_of_registration_py(helm: Helm) -> None:
    """The chart (by Service) and the local stack (by URL) register the same webhooks."""
    docs = _render(helm)
    mutating = _by_kind(docs, "MutatingWebhookConfiguration")[0]["webhooks"][0]
    client_config = mutating["clientConfig"]
    expected = registration.configurations(lambda path: {}, NAMESPACE)
    for want in expected:
        (got,) = _by_kind(docs, want["kind"])
        for hook in [*got["webhooks"], *want["webhooks"]]:
            hook.pop("clientConfig")
        assert got["webhooks"] == want["webhooks"]
    service = _by_kind(docs, "Service")[0]
    assert client_config["service"] == {
        "name": service["metadata"]["name"], "namespace": NAMESPACE,
        "path": registration.MUTATE_PATH, "port": 443}


@pytest.mark.parametrize("component", ["webhook", "controller"])
def test_pods_are_locked_down_by_default(helm: Helm, component: str) -> None:
    deployment = _deployment(_render(helm), component)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # The webhook watches ConfigMaps, the controller VmGroups; see the RBAC test.
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == deployment["metadata"]["name"]
    container = _container(deployment)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}}
    assert container["command"] == [f"vmgroup-{component}"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["memory"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"] == \
        deployment["spec"]["selector"]["matchLabels"]


def test_the_webhook_stops_serving_only_once_it_is_out_of_the_service(helm: Helm) -> None:
    deployment = _deployment(_render(helm), "webhook")
    sleep = _container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep > 0
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > sleep


def test_the_controller_pod(helm: Helm) -> None:
    docs = _render(helm)
    deployment = _deployment(docs, "controller")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    env = {e["name"]: e for e in container["env"]}
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": 8080, "protocol": "TCP"}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"
    assert env["VMGROUP_CONTROLLER_HEALTH_BIND"]["value"] == "0.0.0.0:8080"
    # The Lease is in the Pod's namespace, where the controller's Role is.
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["VMGROUP_CONTROLLER_LEASE_NAME"]["value"] == CONTROLLER
    # Time to finish running reconciles and release the Lease after SIGTERM.
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                      "limits": {"memory": "256Mi"}}
    assert pod["securityContext"]["fsGroup"] == 65532  # the password file's group
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "8080",
                           "prometheus.io/path": "/metrics"}
    # An existing Secret: the chart creates none, and reads the default keys of the named one.
    assert not _by_kind(_component(docs, "controller"), "Secret")
    assert env["VMGROUP_CONTROLLER_VCENTER_USERNAME"]["valueFrom"] == {
        "secretKeyRef": {"name": "vcenter-credentials", "key": "username"}}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["vcenter-password"]["secret"] == {
        "secretName": "vcenter-credentials", "items": [{"key": "password", "path": "password"}],
        "defaultMode": 0o440}


def test_every_controller_setting_reaches_a_flag_of_vmgroup_controller(helm: Helm) -> None:
    """An environment variable the controller does not know would be ignored without a word."""
    deployment = _deployment(_render(helm, *TOGGLES["existing-secret-keys-and-ca-configmap"]),
                             "controller")
    container = _container(deployment)
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    flags = set(vars(controller_parser().parse_args(["--vcenter-host=h",
                                                     "--vcenter-username=u"])))
    unknown = [name for name in env
               if name.startswith(CONTROLLER_ENV)
               and name.removeprefix(CONTROLLER_ENV).lower() not in flags]
    assert not unknown
    assert {k: v for k, v in env.items() if k.startswith(CONTROLLER_ENV)} == {
        "VMGROUP_CONTROLLER_VCENTER_HOST": "vcenter.example.com",
        "VMGROUP_CONTROLLER_VCENTER_PORT": "8443",
        "VMGROUP_CONTROLLER_VCENTER_USERNAME": {
            "secretKeyRef": {"name": "vcenter-credentials", "key": "user"}},
        "VMGROUP_CONTROLLER_VCENTER_PASSWORD_FILE": "/etc/vmgroup-controller/vcenter/password",
        "VMGROUP_CONTROLLER_VCENTER_CA_FILE": "/etc/vmgroup-controller/vcenter-ca/ca.crt",
        "VMGROUP_CONTROLLER_VCENTER_INSECURE": "false",
        "VMGROUP_CONTROLLER_VCENTER_TIMEOUT": "30",
        "VMGROUP_CONTROLLER_VCENTER_KEEPALIVE_SECONDS": "300",
        "VMGROUP_CONTROLLER_DATACENTER": "DC1",
        "VMGROUP_CONTROLLER_BASE_FOLDER": "k8s/vmgroups",
        "VMGROUP_CONTROLLER_RESOURCE_POOL": "/DC1/host/C1/Resources/k8s",
        "VMGROUP_CONTROLLER_DATASTORE": "ds-k8s",
        "VMGROUP_CONTROLLER_WORKERS": "8",
        "VMGROUP_CONTROLLER_MAX_VCENTER_TASKS": "20",
        "VMGROUP_CONTROLLER_RESYNC_SECONDS": "300",
        "VMGROUP_CONTROLLER_HEALTH_BIND": "0.0.0.0:8080",
        "VMGROUP_CONTROLLER_LEASE_NAME": "vmgroups-leader",
        "VMGROUP_CONTROLLER_LOG_LEVEL": "debug",
    }
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["vcenter-password"]["secret"]["items"] == [{"key": "pass", "path": "password"}]
    assert volumes["vcenter-ca"]["configMap"] == {
        "name": "corp-ca", "items": [{"key": "bundle.pem", "path": "ca.crt"}]}


def test_the_password_is_only_in_the_secret(helm: Helm) -> None:
    docs = _render(helm, *TOGGLES["created-secret-and-ca"])
    (secret,) = _by_kind(_component(docs, "controller"), "Secret")
    assert base64.b64decode(secret["data"]["password"]).decode() == PASSWORD
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    for doc in docs:
        if doc is not secret:
            text = yaml.safe_dump(doc)
            assert PASSWORD not in text, doc["metadata"]["name"]
            assert encoded not in text, doc["metadata"]["name"]
    deployment = _deployment(docs, "controller")
    container = _container(deployment)
    assert not any(PASSWORD in arg for arg in container.get("args", []))
    env = {e["name"]: e for e in container["env"]}
    assert "VMGROUP_VCENTER_PASSWORD" not in env  # the controller's env fallback: never used
    assert env["VMGROUP_CONTROLLER_VCENTER_USERNAME"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"], "key": "username"}
    # The CA is not secret: a ConfigMap, mounted as a file, like the password.
    (config_map,) = _by_kind(_component(docs, "controller"), "ConfigMap")
    assert config_map["data"]["ca.crt"] == CA_PEM
    assert env["VMGROUP_CONTROLLER_VCENTER_CA_FILE"]["value"] == \
        "/etc/vmgroup-controller/vcenter-ca/ca.crt"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert set(annotations) >= {"checksum/vcenter-credentials", "checksum/vcenter-ca"}
    # Salted with a random value kept in the Secret: no hash of the password alone.
    again = _deployment(_render(helm, *TOGGLES["created-secret-and-ca"]), "controller")
    assert again["spec"]["template"]["metadata"]["annotations"][
        "checksum/vcenter-credentials"] != annotations["checksum/vcenter-credentials"]


@pytest.mark.parametrize("component", ["webhook", "controller"])
def test_a_single_replica_gets_no_pdb_that_would_block_drains(helm: Helm, component: str) -> None:
    (pdb,) = _by_kind(_component(_render(helm), component), "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == _deployment(_render(helm), component)["spec"]["selector"]
    one = _render(helm, "--set", f"{component}.replicas=1")
    assert not _by_kind(_component(one, component), "PodDisruptionBudget")


# --- against a real API server ---------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """An API server and a vcsim of the chart tests' own: a release registers webhooks whose
    Pods cannot run here, which would refuse VmGroups in a shared one."""
    with LocalStack(tmp_path_factory.mktemp("chart")) as local:
        kubectl(local.kubeconfig, "create", "namespace", NAMESPACE)
        crds = bin_dir().parent / "crds" / "cert-manager"
        kubectl(local.kubeconfig, "apply", "--server-side", "-f", str(crds))
        yield local


@pytest.fixture(scope="module")
def cluster(stack: LocalStack) -> Path:
    return stack.kubeconfig


@pytest.mark.parametrize("toggle", TOGGLES)
def test_every_rendered_manifest_is_accepted_by_the_api_server(helm: Helm, cluster: Path,
                                                               toggle: str) -> None:
    manifests = helm("template", RELEASE, *_chart("--include-crds", *TOGGLES[toggle])).stdout
    out = kubectl(cluster, "apply", "--dry-run=server", "-f", "-", stdin=manifests)
    assert "mutatingwebhookconfiguration.admissionregistration.k8s.io/vgo-vmgroup-operator" in out
    assert (f"deployment.apps/{CONTROLLER}" in out) == (toggle != "controller-disabled")


def _get(config: Path, *args: str) -> dict[str, Any]:
    return dict(yaml.safe_load(kubectl(config, "get", "-o", "yaml", *args)))


def _data(config: Path, namespace: str, kind: str, name: str) -> dict[str, bytes]:
    """The data of a Secret (decoded) or a ConfigMap, as the kubelet would mount it."""
    data = _get(config, "-n", namespace, kind, name)["data"]
    if kind == "secret":
        return {key: base64.b64decode(value) for key, value in data.items()}
    return {key: value.encode() for key, value in data.items()}


def _can(config: Path, account: str, *question: str) -> bool:
    """`kubectl auth can-i <question>` as a ServiceAccount of the release namespace."""
    answer = subprocess.run(
        [binary("kubectl"), f"--kubeconfig={config}", "auth", "can-i", *question,
         f"--as=system:serviceaccount:{NAMESPACE}:{account}"],
        capture_output=True, text=True, check=False)
    assert answer.stdout.strip() in ("yes", "no"), answer.stderr  # not an error read as "no"
    return answer.stdout.strip() == "yes"


def _uninstall(helm: Helm, cluster: Path) -> None:
    """helm uninstall, and wait until every object of the release is gone."""
    helm("uninstall", RELEASE, "--namespace", NAMESPACE, kubeconfig=cluster)

    def gone() -> bool:
        left = kubectl(cluster, "get", "-n", NAMESPACE, "deployment,service,secret,configmap,"
                       "pdb,sa,role,rolebinding", "-l", f"app.kubernetes.io/instance={RELEASE}",
                       "-o", "name")
        cluster_wide = kubectl(cluster, "get", "clusterrole,clusterrolebinding", "-l",
                               f"app.kubernetes.io/instance={RELEASE}", "-o", "name")
        hooks = kubectl(cluster, "get", "mutatingwebhookconfiguration,"
                        "validatingwebhookconfiguration", "-o", "name")
        return not left.strip() and not cluster_wide.strip() and "vgo-vmgroup-operator" not in hooks

    poll(gone, timeout=30, what="helm uninstall to remove the release's objects")


VMGROUPS = "vmgroups.vm.codeconnect.vmworld.com"
LEASES = "leases.coordination.k8s.io"
# What each ServiceAccount needs ("yes") and what it must not do ("no"): `kubectl auth can-i`.
RIGHTS = {
    "vgo-vmgroup-operator-webhook": [
        *[f"yes: {verb} configmaps -n {NAMESPACE}" for verb in ("get", "list", "watch")],
        f"yes: create events -n {NAMESPACE}",
        f"no: get secrets -n {NAMESPACE}",
        "no: list configmaps -n default",
        f"no: update configmaps -n {NAMESPACE}",
        "no: list secrets -n default",
        f"no: list pods -n {NAMESPACE}",
        "no: create pods -n default",
        f"no: list {VMGROUPS} -n default",
    ],
    CONTROLLER: [
        f"yes: list {VMGROUPS} --all-namespaces",
        f"yes: watch {VMGROUPS} --all-namespaces",
        f"yes: get {VMGROUPS} -n team-x",
        f"yes: patch {VMGROUPS} -n team-x",  # metadata.finalizers
        f"yes: patch {VMGROUPS} --subresource=status -n default",
        "yes: create events -n team-x",
        f"yes: create {LEASES} -n {NAMESPACE}",
        f"yes: get {LEASES}/{CONTROLLER} -n {NAMESPACE}",
        f"yes: update {LEASES}/{CONTROLLER} -n {NAMESPACE}",
        f"no: get secrets -n {NAMESPACE}",  # the password is a mounted file
        "no: get secrets -n default",
        "no: list secrets --all-namespaces",
        f"no: list pods -n {NAMESPACE}",
        "no: create pods -n default",
        f"no: create configmaps -n {NAMESPACE}",
        f"no: create {VMGROUPS} -n default",
        f"no: update {VMGROUPS} -n default",
        f"no: delete {VMGROUPS} -n default",
        # The /finalizers subresource only guards ownerReferences with blockOwnerDeletion
        # (OwnerReferencesPermissionEnforcement); the controller sets none.
        f"no: update {VMGROUPS} --subresource=finalizers -n default",
        f"no: update {LEASES}/{CONTROLLER} -n kube-system",
        f"no: create {LEASES} -n default",
        f"no: update {LEASES}/kube-scheduler -n {NAMESPACE}",  # only its own Lease
        f"no: delete {LEASES}/{CONTROLLER} -n {NAMESPACE}",
        "no: delete namespaces",
        "no: create clusterrolebindings",
    ],
}


def test_install_upgrade_keeps_certificates_uninstall_removes(helm: Helm, cluster: Path) -> None:
    helm("install", RELEASE, *_chart(*CREATED_SECRET), kubeconfig=cluster)
    try:
        secret = _get(cluster, "-n", NAMESPACE, "secret", "vgo-vmgroup-operator-webhook-tls")
        ca_pem = base64.b64decode(secret["data"]["ca.crt"])
        leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
        leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "vgo-vmgroup-operator-webhook.vmgroup-system.svc" in sans.get_values_for_type(
            x509.DNSName)
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            config = _get(cluster, kind, "vgo-vmgroup-operator")
            assert base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"]) == ca_pem
        for kind in ("deployment", "service", "serviceaccount", "poddisruptionbudget"):
            _get(cluster, "-n", NAMESPACE, kind, "vgo-vmgroup-operator-webhook")
        for kind in ("deployment", "serviceaccount", "poddisruptionbudget", "role",
                     "rolebinding"):
            _get(cluster, "-n", NAMESPACE, kind, CONTROLLER)
        for kind in ("clusterrole", "clusterrolebinding"):
            _get(cluster, kind, CONTROLLER)
        credentials = _data(cluster, NAMESPACE, "secret", f"{CONTROLLER}-vcenter")
        assert credentials["password"] == PASSWORD.encode()

        def checksum() -> str:
            return str(_get(cluster, "-n", NAMESPACE, "deployment", CONTROLLER)["spec"][
                "template"]["metadata"]["annotations"]["checksum/vcenter-credentials"])

        installed = checksum()
        helm("upgrade", RELEASE, *_chart(*CREATED_SECRET, "--set", "webhook.replicas=3"),
             kubeconfig=cluster)
        after = _get(cluster, "-n", NAMESPACE, "secret", "vgo-vmgroup-operator-webhook-tls")
        assert after["data"] == secret["data"]  # the same CA and serving pair
        assert _get(cluster, "-n", NAMESPACE, "deployment",
                    "vgo-vmgroup-operator-webhook")["spec"]["replicas"] == 3
        assert checksum() == installed  # the same credentials: the controller is not rolled

        helm("upgrade", RELEASE, *_chart(*CREATED_SECRET, "--set-string",
                                         "controller.vcenter.credentials.password=rotated"),
             kubeconfig=cluster)
        rotated = _data(cluster, NAMESPACE, "secret", f"{CONTROLLER}-vcenter")
        assert rotated["password"] == b"rotated"
        assert rotated["checksum-salt"] == credentials["checksum-salt"]
        assert checksum() != installed  # a new password rolls the controller's Pods

        for account, rights in RIGHTS.items():
            for right in rights:
                answer, _, question = right.partition(": ")
                assert _can(cluster, account, *question.split()) == (answer == "yes"), (
                    account, right)
    finally:
        _uninstall(helm, cluster)


TEAM = "team-a"
VMGROUP = f"""
apiVersion: vm.codeconnect.vmworld.com/v1alpha1
kind: VmGroup
metadata: {{name: vg-chart, namespace: {TEAM}}}
spec: {{cpu: 1, memory: 1, replicas: 2, template: vm-operator-template}}
"""


def _start_controller_pod(cluster: Path, deployment: dict[str, Any], root: Path
                          ) -> tuple[Process, str]:
    """Run the Deployment's container here as the kubelet would: its volumes as files under
    `root`, its environment resolved from the API server, its ServiceAccount's token as its
    credentials. Only the health port moves to a free loopback one (replicas share this
    machine). Returns the process and its health URL once it is ready."""
    namespace = deployment["metadata"]["namespace"]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounted: dict[str, str] = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        kind, source = (("secret", volume["secret"]) if "secret" in volume
                        else ("configmap", volume["configMap"]))
        data = _data(cluster, namespace, kind, source.get("secretName") or source["name"])
        directory = root / mount["mountPath"].lstrip("/")
        directory.mkdir(parents=True)
        for item in source["items"]:
            (directory / item["path"]).write_bytes(data[item["key"]])
            (directory / item["path"]).chmod(source["defaultMode"])
        mounted[mount["mountPath"]] = str(directory)

    env: dict[str, str] = {}
    for var in container["env"]:
        source = var.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            value = _data(cluster, namespace, "secret", ref["name"])[ref["key"]].decode()
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.namespace"
            value = namespace
        else:
            value = var.get("value", "")  # the API server drops empty values
            for path, directory in mounted.items():
                if value.startswith(path + "/"):
                    value = directory + value.removeprefix(path)
        env[var["name"]] = value

    (port,) = container["ports"]
    assert env[f"{CONTROLLER_ENV}HEALTH_BIND"] == f"0.0.0.0:{port['containerPort']}"
    local_port = free_port()
    env[f"{CONTROLLER_ENV}HEALTH_BIND"] = f"127.0.0.1:{local_port}"
    account = pod["serviceAccountName"]
    config = yaml.safe_load(cluster.read_text())
    config["users"] = [{"name": account, "user": {"token": kubectl(
        cluster, "create", "token", account, "-n", namespace).strip()}}]
    config["contexts"][0]["context"]["user"] = account
    env[f"{CONTROLLER_ENV}KUBECONFIG"] = str(write_private(root / "kubeconfig",
                                                           yaml.safe_dump(config)))

    command = [str(Path(sys.executable).parent / container["command"][0]),
               *container.get("args", [])]  # the console script, as in the image
    process = Process(f"controller-{root.name}", command, root, env=env).start()
    url = f"http://127.0.0.1:{local_port}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:  # noqa: S310
            return bool(response.read() == b"ok")

    try:
        poll(ready, timeout=60, what=f"{process.name} /readyz", alive=process.check_alive)
    except BaseException:
        process.stop()
        raise
    return process, url


def test_the_controller_reconciles_as_its_deployment_and_rbac_allow(
        helm: Helm, stack: LocalStack, tmp_path: Path) -> None:
    """The real controller, configured only by what the chart installed (the Secret and CA
    ConfigMap it created, the Deployment's environment and mounts) and acting as the chart's
    ServiceAccount, elects a leader, reconciles a VmGroup in another namespace against vcsim
    (finalizer, clones, status, Events), deletes it, and releases the Lease when stopped."""
    cluster, vcenter = stack.kubeconfig, stack.vcenter
    kubectl(cluster, "create", "namespace", TEAM)
    helm("install", RELEASE, *_chart(
        "--set", f"controller.vcenter.server={vcenter.host}",
        "--set", f"controller.vcenter.port={vcenter.port}",
        "--set", f"controller.vcenter.datacenter={vcenter.datacenter}",
        "--set-file", f"controller.vcenter.caBundle={vcenter.ca_file}",
        "--set", "controller.vcenter.credentials.existingSecret=",
        "--set-string", f"controller.vcenter.credentials.username={vcenter.username}",
        "--set-string", f"controller.vcenter.credentials.password={vcenter.password}"),
         kubeconfig=cluster)
    # The webhook's Pods cannot run here (no node; tests/e2e/test_operator_pods.py runs them),
    # and VmGroups of every namespace go to it: this test of the controller does without it.
    kubectl(cluster, "delete", "mutatingwebhookconfiguration,validatingwebhookconfiguration",
            f"{RELEASE}-vmgroup-operator")
    pods: list[tuple[Process, str]] = []
    try:
        deployment = _get(cluster, "-n", NAMESPACE, "deployment", CONTROLLER)
        for i in range(deployment["spec"]["replicas"]):
            pods.append(_start_controller_pod(cluster, deployment, tmp_path / f"pod-{i}"))
        holder = poll(lambda: _get(cluster, "-n", NAMESPACE, "lease", CONTROLLER)["spec"].get(
            "holderIdentity"), timeout=30, what="a leader")
        ((leader, metrics),) = [(p, url) for p, url in pods if holder.endswith(f"_{p.pid}")]

        kubectl(cluster, "apply", "-f", "-", stdin=VMGROUP)
        poll(lambda: kubectl(cluster, "get", "vg", "vg-chart", "-n", TEAM, "-o",
                             "jsonpath={.status.phase}/{.status.currentReplicas}") == "RUNNING/2",
             timeout=90, what="vg-chart RUNNING with 2 VMs", alive=leader.check_alive)
        created = kubectl(cluster, "get", "events", "-n", TEAM, "-o", "name", "--field-selector",
                          "involvedObject.name=vg-chart,reason=Created")
        assert len(created.split()) == 2
        with urllib.request.urlopen(f"{metrics}/metrics", timeout=5) as response:  # noqa: S310
            assert 'vmgroup_controller_reconciles_total{result="converged"}' in \
                response.read().decode()
        # Waits for the controller to destroy the VMs and release its finalizer.
        kubectl(cluster, "delete", "vg", "vg-chart", "-n", TEAM, "--timeout=90s")

        # SIGTERM, standbys first (none takes over from the leader), as the kubelet stops Pods.
        for process, _ in sorted(pods, key=lambda pod: pod[0] is leader):
            process.stop(grace=deployment["spec"]["template"]["spec"][
                "terminationGracePeriodSeconds"])
        lease = _get(cluster, "-n", NAMESPACE, "lease", CONTROLLER)
        assert not lease["spec"].get("holderIdentity")  # released, not left to expire
        for process, _ in pods:
            assert "Forbidden" not in process.log_path.read_text()
            assert not [e for e in process.log_entries() if e.get("status") == 403]
    finally:
        for process, _ in pods:
            process.stop()
        _uninstall(helm, cluster)
