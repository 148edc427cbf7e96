"""`make dev` / `make dev-down`: run the local stack in the background for a developer.

    python -m hack.stack up     [--state .dev] [--mode node|host]
                                                start (or find running, and restart what died)
    python -m hack.stack down   [--state .dev]  stop everything `up` started
    python -m hack.stack status [--state .dev]  every part: running or dead, pid, address, log

`up` starts a detached supervisor (`serve`) that owns every process of the stack; children die
with it (PR_SET_PDEATHSIG), so `down` only has to stop the supervisor, and a crashed supervisor
leaves nothing behind either. The supervisor notices a part that exits (status shows it); `up`
asks it (SIGUSR1) to start the dead parts again, on their own ports and data.

Modes: `node` (the default) runs a real node and installs the operator from its own image
(`make image`) with its own chart, as users run it; `host` runs the webhook and the controller
as processes of this machine, registered by URL: quicker to iterate on the code.
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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hack.image.oci import full_name

from .components import REPO, bin_dir, debs_root, install_crd, kubectl
from .node import unmount_under
from .operator import RELEASE, Operator, build_image
from .process import StackError, exited, poll, write_private
from .stack import OPERATOR_NAMESPACE, LocalStack

EXAMPLE = REPO / "examples" / "vmgroup.yaml"
UP_TIMEOUT = 240.0
PROGRESS = "progress: "  # supervisor log lines that `up` repeats to the developer


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

    def info(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.info_file.read_text()))
        except (OSError, ValueError):
            return None

    def dead_parts(self, info: dict[str, Any]) -> list[str]:
        """The parts the running stack recorded whose process is gone."""
        return [name for name, pid in info.get("pids", {}).items()
                if not _runs_from(int(pid), self.work)]


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


def _progress(line: str) -> None:
    print(f"{PROGRESS}{line}", flush=True)


def _addresses(stack: LocalStack, operator: Operator | None = None) -> dict[str, str]:
    """Every address a developer may need, by part."""
    found = {"kube-apiserver": stack.apiserver.url if stack.apiserver else None,
             "vcsim": stack.vcenter.url,
             "webhook": stack.webhook.url if stack.webhook else None,
             "controller": f"{stack.controller.url}/metrics" if stack.controller else None}
    if operator is not None:  # in the cluster: Pods, reached on the bridge
        found["webhook"] = (f"https://{operator.fullname}-webhook.{operator.namespace}.svc "
                            "(Service, in the cluster)")
        found["controller"] = " ".join(f"http://{ip}:8080/metrics" for ip in operator.kubectl(
            "-n", operator.namespace, "get", "pods", "-l",
            "app.kubernetes.io/component=controller", "-o",
            "jsonpath={.items[*].status.podIP}").stdout.split())
    return {name: url for name, url in found.items() if url}


def _publish(state: State, stack: LocalStack, restarts: int, error: str | None = None,
             operator: Operator | None = None) -> None:
    info = {"mode": "node" if stack.node else "host",
            "addresses": _addresses(stack, operator), "pids": stack.pids(),
            "logs": {p.name: str(p.log_path) for p in stack.processes()},
            "restarts": restarts, "error": error}
    partial = state.info_file.with_suffix(".partial")
    partial.write_text(json.dumps(info, indent=2))
    partial.replace(state.info_file)  # readers never see half a file


def serve(state: State, image: Path | None = None, image_ref: str | None = None) -> int:
    """The supervisor: start the stack, publish how to reach it, watch over its parts (SIGUSR1:
    start the dead ones again), run until SIGTERM/SIGINT. With `image`, the stack has a node and
    the operator runs from that image, installed with its chart."""
    stop, restart, wake = threading.Event(), threading.Event(), threading.Event()

    def on_signal(flag: threading.Event) -> Callable[..., None]:
        def handler(*_: object) -> None:
            flag.set()
            wake.set()  # the watch loop acts at once
        return handler

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal(stop))
    signal.signal(signal.SIGUSR1, on_signal(restart))
    unmount_under(state.work)  # a stack killed outright may have left its node's mounts
    shutil.rmtree(state.work, ignore_errors=True)
    stack = LocalStack(state.work, log_dir=state.logs, progress=_progress,
                       node=image is not None, images=[image] if image else [])
    operator = None
    try:
        stack.start()
        if image is not None and image_ref:
            operator = Operator(stack.kubeconfig, state.work / "home", OPERATOR_NAMESPACE)
            _progress(f"helm install {operator.release} charts/vmgroup-operator ({image_ref}) ...")
            began = time.monotonic()
            operator.install(stack.vcenter, image_ref)
            _progress(f"operator ready ({time.monotonic() - began:.1f}s)")
        else:
            _progress("installing the VmGroup CRD and the operator namespace ...")
            _install_api(stack.kubeconfig)  # the controller lists VmGroups as soon as it starts
            stack.start_webhook()
            stack.start_controller()
        write_private(state.kubeconfig, stack.kubeconfig.read_bytes())
        write_private(state.env_file, _env_file(state, stack))
        _publish(state, stack, restarts=0, operator=operator)
        print(f"stack ready: {json.dumps(_addresses(stack, operator))}", flush=True)
        _watch_over(state, stack, stop, restart, wake, operator=operator)
    finally:
        print("stopping the stack", flush=True)
        stack.stop()
        state.info_file.unlink(missing_ok=True)
        shutil.rmtree(state.work, ignore_errors=True)
    return 0


def _watch_over(state: State, stack: LocalStack, stop: threading.Event,
                restart: threading.Event, wake: threading.Event, *,
                operator: Operator | None) -> None:
    """Log each part that dies, once; on a restart request start the dead ones again."""
    reported: set[str] = set()
    restarts = 0
    while not stop.is_set():
        wake.wait(1.0)
        wake.clear()
        if stop.is_set():
            return
        if restart.is_set():
            restart.clear()
            error = None
            try:
                if names := stack.restart_dead():
                    _progress(f"restarted {', '.join(names)}")
            except Exception as exc:  # a part that cannot start again: say so, keep the rest
                error = f"restart failed: {exc}"
                print(error, flush=True)
            restarts += 1
            reported.clear()
            _publish(state, stack, restarts, error, operator)
        for name in set(stack.dead()) - reported:
            print(f"{name} has exited; `make dev` starts it again", flush=True)
            reported.add(name)


def _install_api(config: Path) -> None:
    """Idempotent: the CRD (as the repository has it now) and the operator namespace."""
    install_crd(config)
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


def up(state: State, mode: str = "node") -> int:
    with _exclusive(state):
        _ensure_supervisor(state, mode)
        _set_up_cluster(state)
    info = state.info() or {}
    addresses = info.get("addresses", {})
    env = os.path.relpath(state.env_file)
    if info.get("mode") == "node":
        parts = f"""  webhook    : {addresses.get('webhook')}
  controller : {addresses.get('controller')} (leader and standby Pods)
  operator   : helm release {RELEASE} in {OPERATOR_NAMESPACE}, from its image on the node
  logs       : {os.path.relpath(state.logs)}/ (the node's parts), kubectl logs (the operator's)

Next:
  source {env} && kubectl get vg
  kubectl -n {OPERATOR_NAMESPACE} get pods -o wide
  kubectl -n {OPERATOR_NAMESPACE} logs -l app.kubernetes.io/component=controller
  helm -n {OPERATOR_NAMESPACE} upgrade {RELEASE} charts/vmgroup-operator --reuse-values --set ...
  govc find / -type m -name vm-operator-template"""
    else:
        parts = f"""  webhook    : {addresses.get('webhook')} (vmgroup-webhook, registered by URL)
  controller : {addresses.get('controller')} (vmgroup-controller: /metrics, /healthz, /readyz)
  logs       : {os.path.relpath(state.logs)}/

Next:
  source {env} && kubectl get vg
  govc find / -type m -name vm-operator-template"""
    print(f"""
  API server : {addresses.get('kube-apiserver')}
  vCenter    : {addresses.get('vcsim')} (vcsim, template vm-operator-template)
{parts}
  make dev-status  # every part: running or dead
  make dev-down    # stops everything
""")
    return 0


class _Follower:
    """Repeats the supervisor's progress lines as they are written."""

    def __init__(self, log: Path) -> None:
        self._log = log
        self._offset = log.stat().st_size if log.exists() else 0

    def __call__(self) -> None:
        try:
            with self._log.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        complete = data[:data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if line.startswith(PROGRESS):
                print(f"  {line.removeprefix(PROGRESS)}", flush=True)


def _ensure_supervisor(state: State, mode: str) -> None:
    pid = state.supervisor_pid()
    if pid is not None:
        info = poll(state.info, timeout=UP_TIMEOUT, what="the running local stack")
        print(f"local stack already running (supervisor pid {pid}, {info.get('mode')} mode)")
        if info.get("mode") != mode:
            print(f"  (not switched to {mode} mode: `make dev-down` first)")
        if dead := state.dead_parts(info):
            _restart(state, pid, info, dead)
        return
    serve_args = []
    if mode == "node":
        print("  building the image (make image) ...", flush=True)
        archive, ref = build_image()
        serve_args = ["--image", str(archive), "--image-ref", ref]
    state.logs.mkdir(parents=True, exist_ok=True)
    state.info_file.unlink(missing_ok=True)
    follow = _Follower(state.logs / "supervisor.log")
    with (state.logs / "supervisor.log").open("ab") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "hack.stack", "serve", "--state", str(state.root),
             *serve_args],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)  # outlives `make dev`, immune to its terminal's Ctrl-C
    state.pid_file.write_text(str(supervisor.pid))

    def supervisor_alive() -> None:
        follow()
        if supervisor.poll() is not None:
            tail = (state.logs / "supervisor.log").read_text(errors="replace")[-3000:]
            raise StackError(f"the stack failed to start:\n{tail}")

    poll(state.info, timeout=UP_TIMEOUT, what="the local stack", alive=supervisor_alive)
    follow()
    print(f"local stack started (supervisor pid {supervisor.pid})")


def _restart(state: State, pid: int, info: dict[str, Any], dead: list[str]) -> None:
    """Ask the supervisor to start the dead parts again, and wait until it has."""
    print(f"  {', '.join(dead)} had exited: starting again")
    follow = _Follower(state.logs / "supervisor.log")
    os.kill(pid, signal.SIGUSR1)
    done = poll(lambda: (new := state.info()) and new.get("restarts") != info.get("restarts")
                and new, timeout=UP_TIMEOUT, what="the dead parts to start again", alive=follow)
    follow()
    if done.get("error"):
        raise StackError(f"{done['error']} (logs in {state.logs})")


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
        pids = dict(info.get("pids", {}))
        for name, child in pids.items():
            if _runs_from(int(child), state.work):
                print(f"{name} (pid {child}) outlived its supervisor; killing it")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(child), signal.SIGKILL)
        # Nothing may point at a stack that is gone.
        for path in (state.pid_file, state.info_file, state.env_file, state.kubeconfig):
            path.unlink(missing_ok=True)
    print("local stack stopped" if pid else "local stack was not running")
    return 0


def image(state: State) -> int:
    """`make image`: build (cached), and when the stack runs a node, import the image into it
    and restart the operator's Deployments if it changed."""
    archive, ref = build_image()
    print(f"image {ref}: {archive}")
    info = state.info()
    if state.supervisor_pid() is None or not info or info.get("mode") != "node":
        return 0
    socket = state.work / "node" / "containerd" / "containerd.sock"
    ctr = [str(debs_root() / "usr/bin/ctr"), f"--address={socket}", "-n", "k8s.io", "images"]

    def target() -> str:  # the digest the node knows the image's name by
        return subprocess.run([*ctr, "ls", f"name=={full_name(ref)}"], capture_output=True,
                              text=True, check=True).stdout

    before = target()
    subprocess.run([*ctr, "import", str(archive)], check=True, capture_output=True)
    if target() == before:
        print("the running node has this image already")
        return 0
    operator = Operator(state.kubeconfig, state.work / "home", OPERATOR_NAMESPACE)
    for component in ("webhook", "controller"):
        operator.kubectl("-n", OPERATOR_NAMESPACE, "rollout", "restart",
                         f"deployment/{operator.fullname}-{component}")
    print("imported into the running node; the operator's Pods roll to it")
    return 0


def status(state: State) -> int:
    """One line per part; exit 1 when the stack is not running, 3 when a part of it died."""
    pid, info = state.supervisor_pid(), state.info()
    if pid is None or info is None:
        print("local stack: not running")
        return 1
    dead = state.dead_parts(info)
    print(f"local stack: supervisor pid {pid}, {len(info['pids'])} parts"
          + (f", {len(dead)} dead: run `make dev` to start them again" if dead else ""))
    for name, part_pid in info["pids"].items():
        state_word = "DEAD" if name in dead else "running"
        address = info["addresses"].get(name, "")
        log = os.path.relpath(info["logs"][name])
        print(f"  {name:<24} {state_word:<8} pid {part_pid:<8} {address:<40} {log}")
    return 3 if dead else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hack.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "image", "serve"])
    parser.add_argument("--state", type=Path, default=REPO / ".dev",
                        help="state directory (default: .dev/)")
    parser.add_argument("--mode", choices=["node", "host"],
                        default=os.environ.get("VMGROUP_DEV_MODE", "node"),
                        help="up: the operator in Pods from its image and chart (node, the "
                             "default), or as processes of this machine (host)")
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)  # serve: up's image
    parser.add_argument("--image-ref", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    state = State(args.state)
    commands: dict[str, Callable[[], int]] = {
        "up": lambda: up(state, args.mode), "down": lambda: down(state),
        "status": lambda: status(state), "image": lambda: image(state),
        "serve": lambda: serve(state, args.image, args.image_ref)}
    try:
        return commands[args.command]()
    except (StackError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or ""
        print(f"error: {exc}\n{detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
