"""A mistake in a flag, in the environment or in what a flag points at: one line on stderr that
names the problem and the fix, exit code 2, no traceback. Run as a user runs the commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONTROLLER = ["--vcenter-host=vc.example.com", "--vcenter-username=u"]
WEBHOOK = ["--tls-cert-file=/etc/hostname", "--tls-key-file=/etc/hostname"]


def _run(command: str, *args: str, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("VMGROUP_", "KUBERNETES_"))}
    return subprocess.run([sys.executable, "-m", command, *args], capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**base, **(env or {})})


def _one_line(result: subprocess.CompletedProcess[str], prog: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # no traceback, no usage dump
    assert lines[0].startswith(f"{prog}: ")
    return lines[0]


PASSWORD = {"VMGROUP_VCENTER_PASSWORD": "x"}


@pytest.mark.parametrize(("args", "env", "says"), [
    (["--log-level=verbose"], PASSWORD,
     "argument --log-level: invalid choice: 'verbose' (choose from 'debug', 'info', 'warning', "
     "'error')"),
    ([], {**PASSWORD, "VMGROUP_CONTROLLER_LOG_LEVEL": "loud"},
     "VMGROUP_CONTROLLER_LOG_LEVEL='loud': choose from debug, info, warning, error"),
    ([], {**PASSWORD, "VMGROUP_CONTROLLER_VCENTER_PORT": "https"},
     "VMGROUP_CONTROLLER_VCENTER_PORT='https' is not a valid int"),
    ([], PASSWORD, "no kubeconfig, and not in a Pod (KUBERNETES_SERVICE_HOST is not set): give "
                   "--kubeconfig or VMGROUP_CONTROLLER_KUBECONFIG"),
    (["--kubeconfig=/no/such/kubeconfig"], PASSWORD,
     "cannot read kubeconfig /no/such/kubeconfig: no such file"),
    ([], {**PASSWORD, "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
     "the Pod's service account is not usable: Service token file does not exist."),
    (["--vcenter-password-file=/no/such/password"], {},
     "cannot read the vCenter password file /no/such/password: No such file or directory "
     "(mount the Secret there, or set VMGROUP_VCENTER_PASSWORD)"),
    ([], {}, "no vCenter password: give --vcenter-password-file or VMGROUP_VCENTER_PASSWORD"),
])
def test_the_controller_says_what_is_wrong_in_one_line(args: list[str], env: dict[str, str],
                                                       says: str) -> None:
    line = _one_line(_run("controller", *CONTROLLER, *args, env=env), "vmgroup-controller")
    assert says in line


def test_a_kubeconfig_that_is_no_kubeconfig_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("this: is not a kubeconfig\n")
    line = _one_line(_run("controller", *CONTROLLER, f"--kubeconfig={bad}", env=PASSWORD),
                     "vmgroup-controller")
    assert f"kubeconfig {bad} is not usable" in line


@pytest.mark.parametrize(("args", "says"), [
    (["--log-level=verbose"], "argument --log-level: invalid choice: 'verbose'"),
    (["--namespace=vmgroup-system"],
     "no kubeconfig, and not in a Pod (KUBERNETES_SERVICE_HOST is not set): give --kubeconfig "
     "or VMGROUP_WEBHOOK_KUBECONFIG"),
    (["--workers=two"], "argument --workers: invalid int value: 'two'"),
])
def test_the_webhook_says_what_is_wrong_in_one_line(args: list[str], says: str) -> None:
    line = _one_line(_run("webhook", *WEBHOOK, *args), "vmgroup-webhook")
    assert says in line
