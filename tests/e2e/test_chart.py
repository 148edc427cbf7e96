"""The Helm chart: lint, schema, rendering with each toggle, and install / upgrade / uninstall
into a real API server of its own (the webhook Pods cannot run here: there are no nodes, but
every object is created and checked)."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from initializers.spec import initializer_name, parse
from tests.stack import REPO, LocalStack, bin_dir, binary, poll
from tests.stack.components import kubectl
from webhook import registration

pytestmark = pytest.mark.kube

CHART = REPO / "charts" / "vmgroup-operator"
RELEASE, NAMESPACE = "vgo", "vmgroup-system"
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


def _render(helm: Helm, *args: str) -> list[dict[str, Any]]:
    out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("toggle", TOGGLES)
def test_lint_strict(helm: Helm, toggle: str) -> None:
    result = helm("lint", "--strict", str(CHART), *TOGGLES[toggle])
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
])
def test_wrong_values_are_refused_by_the_schema(helm: Helm, values: list[str],
                                                message: str) -> None:
    result = helm("template", RELEASE, str(CHART), *values, check=False)
    assert result.returncode != 0
    assert message in result.stderr


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


def test_pods_are_locked_down_by_default(helm: Helm) -> None:
    (deployment,) = _by_kind(_render(helm), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is True  # the ConfigMap watch; see the RBAC test
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["memory"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    # Endpoints are removed everywhere before gunicorn stops listening.
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert pod["terminationGracePeriodSeconds"] > container["lifecycle"]["preStop"]["sleep"][
        "seconds"]


def test_a_single_replica_gets_no_pdb_that_would_block_drains(helm: Helm) -> None:
    assert _by_kind(_render(helm), "PodDisruptionBudget")
    assert not _by_kind(_render(helm, "--set", "webhook.replicas=1"), "PodDisruptionBudget")


# --- against a real API server ---------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An API server of the chart tests' own: a release registers webhooks whose Pods cannot
    run here, which would refuse VmGroups in a shared one."""
    with LocalStack(tmp_path_factory.mktemp("chart"), vcenter=False) as stack:
        config = stack.kubeconfig
        kubectl(config, "create", "namespace", NAMESPACE)
        crds = bin_dir().parent / "crds" / "cert-manager"
        kubectl(config, "apply", "--server-side", "-f", str(crds))
        yield config


@pytest.mark.parametrize("toggle", TOGGLES)
def test_every_rendered_manifest_is_accepted_by_the_api_server(helm: Helm, cluster: Path,
                                                               toggle: str) -> None:
    manifests = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                     "--include-crds", *TOGGLES[toggle]).stdout
    out = kubectl(cluster, "apply", "--dry-run=server", "-f", "-", stdin=manifests)
    assert "mutatingwebhookconfiguration.admissionregistration.k8s.io/vgo-vmgroup-operator" in out


def _get(config: Path, *args: str) -> dict[str, Any]:
    return dict(yaml.safe_load(kubectl(config, "get", "-o", "yaml", *args)))


def test_install_upgrade_keeps_certificates_uninstall_removes(helm: Helm, cluster: Path) -> None:
    helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, kubeconfig=cluster)
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

        helm("upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE,
             "--set", "webhook.replicas=3", kubeconfig=cluster)
        after = _get(cluster, "-n", NAMESPACE, "secret", "vgo-vmgroup-operator-webhook-tls")
        assert after["data"] == secret["data"]  # the same CA and serving pair
        assert _get(cluster, "-n", NAMESPACE, "deployment",
                    "vgo-vmgroup-operator-webhook")["spec"]["replicas"] == 3

        who = f"--as=system:serviceaccount:{NAMESPACE}:vgo-vmgroup-operator-webhook"
        for verb in ("get", "list", "watch"):
            assert kubectl(cluster, "auth", "can-i", verb, "configmaps", "-n", NAMESPACE,
                           who).strip() == "yes"
        assert kubectl(cluster, "auth", "can-i", "create", "events", "-n", NAMESPACE,
                       who).strip() == "yes"
        for verb, resource, namespace in [("get", "secrets", NAMESPACE),
                                          ("list", "configmaps", "default"),
                                          ("update", "configmaps", NAMESPACE),
                                          ("list", "secrets", "default"),
                                          ("list", "pods", NAMESPACE),
                                          ("create", "pods", "default"),
                                          ("list", "vmgroups", "default")]:
            answer = subprocess.run(
                [binary("kubectl"), f"--kubeconfig={cluster}", "auth", "can-i", verb,
                 resource, "-n", namespace, who], capture_output=True, text=True, check=False)
            assert answer.stdout.strip() == "no", (verb, resource, namespace)
    finally:
        helm("uninstall", RELEASE, "--namespace", NAMESPACE, kubeconfig=cluster)

    def gone() -> bool:
        left = kubectl(cluster, "get", "-n", NAMESPACE, "deployment,service,secret,pdb,sa",
                       "-l", "app.kubernetes.io/instance=vgo", "-o", "name")
        hooks = kubectl(cluster, "get", "mutatingwebhookconfiguration,"
                        "validatingwebhookconfiguration", "-o", "name")
        return not left.strip() and "vgo-vmgroup-operator" not in hooks

    poll(gone, timeout=30, what="helm uninstall to remove the release's objects")
