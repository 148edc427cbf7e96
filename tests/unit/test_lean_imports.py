"""What the controller's process loads: only the parts of the kubernetes client and pyVmomi
it uses (kubekit.cli.client_parts_only, controller.vmomi), and those parts still work.

Each case runs in a fresh interpreter, as the controller starts: what a test process has
imported already would hide what a fresh one loads. The controller in a real Pod, reading its
real service account, is tests/e2e/test_operator_pods.py; here the service account's two files
are written to a temporary directory and the client's loader pointed at them, the one stand-in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from hack.stack.pki import CertificateAuthority

# Loaded by the kubernetes package's __init__ and the kubeconfig loader, unused in a Pod.
NOT_IN_A_POD = ("kubernetes.config.kube_config", "requests", "requests_oauthlib", "oauthlib",
                "websocket", "kubernetes.stream", "kubernetes.dynamic")
UNUSED_VMOMI = ("eam", "pbm", "sms", "vslm", "vsanhealth")

# The controller's modules, imported after the client is configured, as main() does.
CONTROLLER = """
import controller.echo, controller.feed, controller.informer, controller.metrics
import controller.reconciler, controller.recovery, controller.tasks, controller.vsphere
import kubekit.events, kubekit.leader, kubekit.watch
from kubernetes import client
client.CustomObjectsApi(api), client.CoordinationV1Api(api)
from controller.vmomi import vim, vmodl
used = [vim.VirtualMachine, vim.Folder, vim.vm.CloneSpec, vim.vm.RelocateSpec,
        vim.vm.ConfigSpec, vim.option.OptionValue, vim.TaskInfo.State,
        vmodl.query.PropertyCollector.FilterSpec, vim.fault.DuplicateName]
"""
REPORT = """
import json, sys
print(json.dumps({
    "host": api.configuration.host,
    "auth": api.configuration.auth_settings(),
    "modules": sorted(m for m, v in sys.modules.items() if v is not None),
    "blocked": sorted(m for m, v in sys.modules.items() if v is None),
}))
"""


def _fresh_python(script: str) -> str:
    """What `script` prints, run in an interpreter of its own."""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _controller_start(body: str) -> dict[str, Any]:
    out = _fresh_python("from controller.__main__ import _lean_process\n_lean_process()\n"
                        + textwrap.dedent(body) + CONTROLLER + REPORT)
    return dict(json.loads(out.splitlines()[-1]))


def test_in_a_pod_the_controller_loads_no_kubeconfig_machinery(tmp_path: Path) -> None:
    ca = CertificateAuthority("test-ca")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    (tmp_path / "token").write_text("the-service-account-token")
    seen = _controller_start(f"""
        import os
        os.environ.update(KUBERNETES_SERVICE_HOST="10.96.0.1", KUBERNETES_SERVICE_PORT="443")
        from kubernetes.config import incluster_config
        incluster_config.SERVICE_TOKEN_FILENAME = {str(tmp_path / "token")!r}
        incluster_config.SERVICE_CERT_FILENAME = {str(tmp_path / "ca.crt")!r}
        from kubekit.cli import kube_client
        api = kube_client(None, "--kubeconfig")
    """)
    assert seen["host"] == "https://10.96.0.1:443"
    assert seen["auth"]["BearerToken"]["value"].lower() == "bearer the-service-account-token"
    assert "kubernetes.config.incluster_config" in seen["modules"]
    assert not set(NOT_IN_A_POD) & set(seen["modules"])
    _only_vsphere_types(seen)


def test_with_a_kubeconfig_the_official_loader_reads_it(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "a-token"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    seen = _controller_start(f"""
        from kubekit.cli import kube_client
        api = kube_client({str(kubeconfig)!r}, "--kubeconfig")
    """)
    assert seen["host"] == "https://127.0.0.1:6443"
    assert seen["auth"]["BearerToken"]["value"] == "Bearer a-token"
    assert "kubernetes.config.kube_config" in seen["modules"]
    assert "websocket" not in seen["modules"]  # the client's stream part: still left out
    _only_vsphere_types(seen)


def _only_vsphere_types(seen: dict[str, Any]) -> None:
    assert "pyVmomi._typeinfo_vim" in seen["modules"]
    assert sorted(f"pyVmomi._typeinfo_{name}" for name in UNUSED_VMOMI) == sorted(
        m for m in seen["blocked"] if m.startswith("pyVmomi._typeinfo_"))


def test_a_process_that_imported_the_client_already_keeps_it_whole() -> None:
    script = """
import kubernetes, pyVmomi, sys
from kubekit.cli import client_parts_only
client_parts_only()
import controller.vmomi
from kubernetes import config
print(hasattr(config, "load_kube_config"), "pyVmomi._typeinfo_pbm" in sys.modules and
      sys.modules["pyVmomi._typeinfo_pbm"] is not None)
"""
    assert _fresh_python(script).split() == ["True", "True"]
