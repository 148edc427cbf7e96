"""`make dev` / `make dev-down`: run the local stack in the background for a developer.

    python -m hack.stack up   [--state .dev]   start (or find running) and set up the stack
    python -m hack.stack down [--state .dev]   stop everything `up` started
    python -m hack.stack status [--state .dev]

`up` starts a detached supervisor (`serve`) that owns every process of the stack; children die
with it (PR_SET_PDEATHSIG), so `down` only has to stop the supervisor, and a crashed supervisor
leaves nothing behind either.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from .components import CRD_PATH, REPO, bin_dir, kubectl
from .process import StackError, exited, poll, write_private
from .stack import OPERATOR_NAMESPACE, LocalStack

EXAMPLE = REPO / "examples" / "vmgroup.yaml"
UP_TIMEOUT = 240.0


class State:
    """The files of one developer stack under its state directory (default .dev/)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.logs = self.root / "logs"
        self.work = self.root / "work"
        self.pid_file = self.root / "supervisor.pid"
        self.info_file = self.root / "stack.json"  # written once everything is ready
        self.kubeconfig = self.root / "kubeconfig"
        self.env_file = self.root / "env"

    def supervisor_pid(self) -> int | None:
        """The pid of a live supervisor of this state directory, else None."""
        try:
            pid = int(self.pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"hack.stack" in cmdline and b"serve" in cmdline else None

    def info(self) -> dict[str, object] | None:
        try:
            return dict(json.loads(self.info_file.read_text()))
        except (OSError, ValueError):
            return None


def _env_file(state: State, stack: LocalStack) -> str:
    vc = stack.vcenter
    values = {
        "KUBECONFIG": str(state.kubeconfig),
        "GOVC_URL": vc.url,
        "GOVC_USERNAME": vc.username,
        "GOVC_PASSWORD": vc.password,
        # The simulator's certificate is signed by the stack's CA: verify it instead of
        # switching verification off.
        "GOVC_INSECURE": "false",
        "GOVC_TLS_CA_CERTS": str(vc.ca_file),
        "VMGROUP_NAMESPACE": OPERATOR_NAMESPACE,
        "VMGROUP_TESTBIN": str(bin_dir()),
    }
    lines = [f"export {k}={shlex.quote(v)}" for k, v in values.items()]
    lines.append(f'export PATH={shlex.quote(str(bin_dir()))}:"$PATH"')
    return "# Written by `make dev`; source it: . .dev/env\n" + "\n".join(lines) + "\n"


def serve(state: State) -> int:
    """The supervisor: start the stack, publish how to reach it, run until SIGTERM/SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    shutil.rmtree(state.work, ignore_errors=True)
    stack = LocalStack(state.work, log_dir=state.logs)
    try:
        stack.start()
        _install_api(stack.kubeconfig)  # the controller lists VmGroups as soon as it starts
        webhook = stack.start_webhook()
        stack.start_controller()
        write_private(state.kubeconfig, stack.kubeconfig.read_bytes())
        write_private(state.env_file, _env_file(state, stack))
        info = {"apiserver": stack.apiserver.url if stack.apiserver else None,
                "vcenter": stack.vcenter.url, "webhook": webhook.url, "pids": stack.pids()}
        state.info_file.write_text(json.dumps(info, indent=2))
        print(f"stack ready: {json.dumps(info)}", flush=True)
        stop.wait()
    finally:
        print("stopping the stack", flush=True)
        stack.stop()
        state.info_file.unlink(missing_ok=True)
        shutil.rmtree(state.work, ignore_errors=True)
    return 0


def _install_api(config: Path) -> None:
    """Idempotent: the CRD (as the repository has it now) and the operator namespace."""
    kubectl(config, "apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    kubectl(config, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/vmgroups.vm.codeconnect.vmworld.com")
    namespace = kubectl(config, "create", "namespace", OPERATOR_NAMESPACE,
                        "--dry-run=client", "-o", "yaml")
    kubectl(config, "apply", "-f", "-", stdin=namespace)


def _set_up_cluster(state: State) -> None:
    """Idempotent: the CRD again (it may have changed since the stack started), the example."""
    _install_api(state.kubeconfig)
    kubectl(state.kubeconfig, "apply", "-f", str(EXAMPLE))


@contextlib.contextmanager
def _exclusive(state: State) -> Iterator[None]:
    """One `up` or `down` at a time per state directory (two `make dev` at once would start
    two supervisors on one work directory)."""
    state.root.mkdir(parents=True, exist_ok=True)
    with (state.root / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def up(state: State) -> int:
    with _exclusive(state):
        _ensure_supervisor(state)
        _set_up_cluster(state)
    info = state.info() or {}
    print(f"""
  API server : {info.get('apiserver')}
  vCenter    : {info.get('vcenter')} (vcsim, template vm-operator-template)
  webhook    : {info.get('webhook')} (vmgroup-webhook, registered by URL)
  controller : vmgroup-controller (logs/controller.log)
  logs       : {state.logs}/

Next:
  source {os.path.relpath(state.env_file)} && kubectl get vg
  govc find / -type m -name vm-operator-template
  make dev-down    # stops everything
""")
    return 0


def _ensure_supervisor(state: State) -> None:
    pid = state.supervisor_pid()
    if pid is not None:
        poll(state.info, timeout=UP_TIMEOUT, what="the running local stack")
        print(f"local stack already running (supervisor pid {pid})")
        return
    state.logs.mkdir(parents=True, exist_ok=True)
    state.info_file.unlink(missing_ok=True)
    with (state.logs / "supervisor.log").open("ab") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "hack.stack", "serve", "--state", str(state.root)],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)  # outlives `make dev`, immune to its terminal's Ctrl-C
    state.pid_file.write_text(str(supervisor.pid))

    def supervisor_alive() -> None:
        if supervisor.poll() is not None:
            tail = (state.logs / "supervisor.log").read_text(errors="replace")[-3000:]
            raise StackError(f"the stack failed to start:\n{tail}")

    poll(state.info, timeout=UP_TIMEOUT, what="the local stack", alive=supervisor_alive)
    print(f"local stack started (supervisor pid {supervisor.pid})")


def _runs_from(pid: int, directory: Path) -> bool:
    """Whether `pid` is a live process of ours: every part of the stack has `directory` (its
    work directory) in its command line; a pid reused by something else has not."""
    try:
        return not exited(pid) and str(directory).encode() in Path(
            f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def down(state: State) -> int:
    with _exclusive(state):
        pid = state.supervisor_pid()
        info = state.info() or {}
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            try:
                poll(lambda: state.supervisor_pid() is None, timeout=60,
                     what="the supervisor to exit")
            except StackError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # children then get PR_SET_PDEATHSIG's SIGTERM
        # Belt and braces: whatever the supervisor recorded must be gone.
        pids = dict(info.get("pids", {}))  # type: ignore[call-overload]
        for name, child in pids.items():
            if _runs_from(int(child), state.work):
                print(f"{name} (pid {child}) outlived its supervisor; killing it")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(child), signal.SIGKILL)
        state.pid_file.unlink(missing_ok=True)
        state.info_file.unlink(missing_ok=True)
    print("local stack stopped" if pid else "local stack was not running")
    return 0


def status(state: State) -> int:
    pid, info = state.supervisor_pid(), state.info()
    if pid is None or info is None:
        print("local stack: not running")
        return 1
    print(json.dumps({"supervisor": pid, **info}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hack.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "serve"])
    parser.add_argument("--state", type=Path, default=REPO / ".dev",
                        help="state directory (default: .dev/)")
    args = parser.parse_args(argv)
    state = State(args.state)
    command = {"up": up, "down": down, "status": status, "serve": serve}[args.command]
    try:
        return command(state)
    except (StackError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or ""
        print(f"error: {exc}\n{detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
