"""A real node for the local stack: containerd + runc + CNI, kubelet, kube-scheduler, kube-proxy.

Debian's containerd, runc, CNI plugins and iptables come unpacked from hack/debs.sh; kubelet,
kube-scheduler and kube-proxy are built by hack/testbin.sh at the API server's version. The node
lives on a bridge of its own (`BRIDGE`, `SUBNET`), on which the API server and vcsim listen too,
so Pods reach them at the bridge's address; the Service range is routed onto the bridge before
anything starts, so no Service address can ever leave the machine, and a guard chain refuses to
forward anything between the bridge and another interface.

Everything the node creates is removed by `stop()`: processes (containerd's shims outlive
containerd and are found by its socket), mounts (under the work directory), the kubepods
cgroups, kube-proxy's and our iptables chains, the bridge and its route, files kubelet and the
CNI library write at fixed paths, and the sysctls kubelet changes. kube-proxy owns the whole
machine's KUBE-* chains, so one node runs on a machine at a time (`MachineLock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from hack.image.oci import File, write_image, write_layer_of

from .process import Process, StackError, exited, poll

BRIDGE = "vgo0"
SUBNET = ipaddress.ip_network("10.197.0.0/24")
ADDRESS = str(SUBNET[1])  # the host's address on the bridge: API server, vcsim, kubelet
SERVICE_RANGE = ipaddress.ip_network("10.0.0.0/24")
NODE_NAME = "vmgroup-node"
PAUSE_IMAGE = "localhost/vmgroup-stack/pause:1"
GUARD_CHAIN = "VMGROUP-NODE-GUARD"
LOCK_FILE = Path("/run/lock/vmgroup-operator-node.lock")
# Set by kubelet once at start (protectKernelDefaults=false), never checked again: put back.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
# Paths kubelet, containerd and the CNI library use whatever their configuration says.
FIXED_DIRS = (Path("/var/lib/kubelet/device-plugins"), Path("/var/lib/kubelet"),
              Path("/var/log/containers"), Path("/var/lib/cni/results"), Path("/var/lib/cni"),
              Path("/run/containerd/s"), Path("/run/containerd"))
START_TIMEOUT = 90.0


def _run(*argv: str, check: bool = True, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise StackError(f"{' '.join(argv)} failed ({result.returncode}): "
                         f"{result.stderr.strip() or result.stdout.strip()}")
    return result


class MachineLock:
    """One node per machine: kube-proxy and kubelet act on machine-wide state."""

    def __init__(self) -> None:
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        handle = LOCK_FILE.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise StackError(f"node: another local node runs on this machine ({owner}); stop it "
                             "first (`make dev-down`), one node can run at a time") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the lock
            self._file = None


@dataclass
class Runtime:
    """Where hack/debs.sh unpacked Debian's packages, and the tools built on them."""

    root: Path

    @property
    def lib(self) -> Path:
        return self.root / "usr/lib/x86_64-linux-gnu"

    def path(self, wrappers: Path) -> str:
        return ":".join([str(wrappers), str(self.root / "usr/bin"), str(self.root / "usr/sbin"),
                         os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])

    def write_wrappers(self, directory: Path) -> Path:
        """iptables & co. as kube-proxy and kubelet call them: the unpacked nft backend with its
        libraries (this machine may have neither iptables nor the libraries)."""
        directory.mkdir(parents=True, exist_ok=True)
        multi = self.root / "usr/sbin/xtables-nft-multi"
        tools = {f"{family}{suffix}": f"{family}{suffix}" for family in ("iptables", "ip6tables")
                 for suffix in ("", "-save", "-restore")}
        env = (f"export LD_LIBRARY_PATH={self.lib} XTABLES_LIBDIR={self.lib / 'xtables'}\n")
        for name, applet in tools.items():
            script = directory / name
            script.write_text(f"#!/bin/sh\n{env}exec {multi} {applet} \"$@\"\n")
            script.chmod(0o755)
        conntrack = directory / "conntrack"
        conntrack.write_text(f"#!/bin/sh\n{env}exec {self.root / 'usr/sbin/conntrack'} \"$@\"\n")
        conntrack.chmod(0o755)
        return directory


def _cgroup_leftovers() -> list[Path]:
    """The kubepods cgroups kubelet made, in every hierarchy (v1 controllers, named, unified),
    deepest first."""
    found = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        with contextlib.suppress(OSError):
            for top in hierarchy.glob("kubepods*"):
                found += [Path(d) for d, _, _ in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _no_process_in(procs: Path) -> bool:
    return not procs.read_text().strip()


def unmount_under(directory: Path) -> None:
    """Unmount everything at or below `directory`, deepest first (lazily if busy)."""
    for point in _mounts_under(directory):
        if _run("umount", point, check=False).returncode != 0:
            _run("umount", "-l", point, check=False)


def _mounts_under(directory: Path) -> list[str]:
    """Mount points at or below `directory`, deepest first."""
    prefix = str(directory.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


@dataclass
class Node:
    """containerd, kubelet, kube-scheduler and kube-proxy of one stack, on `BRIDGE`."""

    work: Path
    log_dir: Path
    runtime: Runtime
    bin_dir: Path
    ca: Path
    kubeconfigs: dict[str, Path]  # kubelet, kube-scheduler, kube-proxy
    kubelet_serving: tuple[Path, Path]
    scheduler_serving: tuple[Path, Path]
    free_port: Callable[[], int]
    images: list[Path] = field(default_factory=list)  # OCI archives to import
    progress: Callable[[str], None] = lambda line: None

    def __post_init__(self) -> None:
        self.dir = self.work / "node"
        self.containerd_dir = self.dir / "containerd"
        self.socket = self.containerd_dir / "containerd.sock"
        self.pods_logs = self.dir / "pods"
        self._lock = MachineLock()
        self._active = False  # between prepare() and stop(): there is something to undo
        self._sysctls: dict[str, str] = {}
        self._created_dirs: list[Path] = []
        self.processes: list[Process] = []

    # --- network -------------------------------------------------------------------------------

    def _iptables(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(str(self.dir / "bin" / "iptables"), *args, check=check)

    def _network_up(self) -> None:
        taken = _run("ip", "-j", "route", "show", "table", "all").stdout
        for route in json.loads(taken or "[]"):
            dst = route.get("dst", "")
            with contextlib.suppress(ValueError):
                network = ipaddress.ip_network(dst, strict=False)
                if network.version == 4 and not network.is_loopback and dst != "default" and (
                        network.overlaps(SUBNET) or network.overlaps(SERVICE_RANGE)):
                    raise StackError(f"node: {dst} is routed already ({route.get('dev')}); "
                                     f"the node needs {SUBNET} and {SERVICE_RANGE}")
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{ADDRESS}/{SUBNET.prefixlen}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # Before anything starts: a Service address never follows the default route off the
        # machine, even while kube-proxy has no rule for it yet.
        _run("ip", "route", "add", str(SERVICE_RANGE), "dev", BRIDGE)
        # A Pod reaching a Service (DNAT to another Pod) is routed through the host: forwarding
        # on the bridge only (it goes with the bridge); the guard forwards nothing elsewhere.
        Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/forwarding").write_text("1")
        self._iptables("-N", GUARD_CHAIN)
        self._iptables("-A", GUARD_CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "REJECT")
        self._iptables("-A", GUARD_CHAIN, "-o", BRIDGE, "!", "-i", BRIDGE, "-j", "DROP")
        self._iptables("-I", "FORWARD", "1", "-j", GUARD_CHAIN)

    def _network_down(self) -> None:
        wrappers = self.dir / "bin"
        if (wrappers / "iptables").exists():
            self._iptables("-D", "FORWARD", "-j", GUARD_CHAIN, check=False)
            self._iptables("-F", GUARD_CHAIN, check=False)
            self._iptables("-X", GUARD_CHAIN, check=False)
            self._remove_kube_chains(wrappers)
        ports = _run("ip", "-o", "link", "show", "master", BRIDGE, check=False).stdout
        for line in ports.splitlines():  # the Pods' veths, should a netns have outlived them
            _run("ip", "link", "del", line.split(":")[1].strip().split("@")[0], check=False)
        _run("ip", "link", "del", BRIDGE, check=False)  # its address and route go with it

    @staticmethod
    def _remove_kube_chains(wrappers: Path) -> None:
        """kube-proxy --cleanup keeps KUBE-FIREWALL and the jumps to it: every KUBE-* goes."""
        for family in ("iptables", "ip6tables"):
            for table in ("filter", "nat", "mangle", "raw"):
                dump = _run(str(wrappers / f"{family}-save"), "-t", table, check=False).stdout
                chains = [line[1:].split()[0] for line in dump.splitlines()
                          if line.startswith(":KUBE-")]
                for line in dump.splitlines():
                    if line.startswith("-A ") and " -j KUBE-" in line and not line.startswith(
                            "-A KUBE-"):
                        _run(str(wrappers / family), "-t", table, "-D", *line[3:].split(),
                             check=False)
                for chain in chains:
                    _run(str(wrappers / family), "-t", table, "-F", chain, check=False)
                for chain in chains:
                    _run(str(wrappers / family), "-t", table, "-X", chain, check=False)

    # --- configuration -------------------------------------------------------------------------

    def _write_configs(self) -> dict[str, Path]:
        etc = self.dir / "etc"
        (etc / "cni").mkdir(parents=True, exist_ok=True)
        runtime, node = self.runtime.root, self.dir
        containerd = etc / "containerd.toml"
        containerd.write_text(f"""version = 2
root = "{self.containerd_dir / 'root'}"
state = "{self.containerd_dir / 'state'}"
oom_score = 0
# opt would create /opt/containerd; the other snapshotters and tracing only add noise
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  address = "{self.containerd_dir / 'debug.sock'}"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # root here lacks CAP_SYS_RESOURCE: runc must not try to lower a container's oom_score_adj
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runtime / 'usr/sbin/runc'}"
        Root = "{node / 'runc'}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{runtime / 'usr/lib/cni'}"
    conf_dir = "{etc / 'cni'}"
    max_conf_num = 1
""")
        # isGateway false: the bridge's address is ours already, and the plugin would switch
        # on forwarding for the whole machine; no masquerade: nothing leaves the machine.
        (etc / "cni" / f"10-{BRIDGE}.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": NODE_NAME,
            "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": False,
                         "ipMasq": False, "hairpinMode": True,
                         "ipam": {"type": "host-local", "dataDir": str(node / "ipam"),
                                  "ranges": [[{"subnet": str(SUBNET),
                                               "rangeStart": str(SUBNET[10]),
                                               "gateway": ADDRESS}]],
                                  "routes": [{"dst": "0.0.0.0/0", "gw": ADDRESS}]}}]}))
        self.kubelet_port = self.free_port()
        kubelet = etc / "kubelet.yaml"
        kubelet.write_text(yaml.safe_dump({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # this kernel mounts cgroup v1
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "address": ADDRESS, "port": self.kubelet_port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": self.free_port(),
            "tlsCertFile": str(self.kubelet_serving[0]),
            "tlsPrivateKeyFile": str(self.kubelet_serving[1]),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.ca)}},
            "authorization": {"mode": "Webhook"},
            "podLogsDir": str(self.pods_logs), "volumePluginDir": str(node / "volume-plugins"),
            "resolvConf": "",  # no DNS server of the host's inside Pods
            "failSwapOn": False, "oomScoreAdj": 0, "makeIPTablesUtilChains": False,
            "podCIDR": str(SUBNET), "maxPods": 32,
            # a nearly full disk of a developer's must not evict the stack's Pods
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%",
                             "nodefs.inodesFree": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False, "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s", "fileCheckFrequency": "10s",
        }))
        proxy = etc / "kube-proxy.yaml"
        proxy.write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfigs["kube-proxy"])},
            "hostnameOverride": NODE_NAME, "mode": "iptables", "clusterCIDR": str(SUBNET),
            "healthzBindAddress": f"127.0.0.1:{self.free_port()}",
            "metricsBindAddress": f"127.0.0.1:{self.free_port()}",
            "nodePortAddresses": [f"{ADDRESS}/32"], "oomScoreAdj": 0,
            # no route_localnet, and the machine's conntrack sysctls left alone
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
        }))
        return {"containerd": containerd, "kubelet": kubelet, "kube-proxy": proxy}

    def _pause_image(self) -> Path:
        out = self.dir / "images"
        layer = out / "pause.layer.tar"
        out.mkdir(parents=True, exist_ok=True)
        write_layer_of([File("pause", (self.bin_dir / "pause").read_bytes(), 0o755),
                        File("etc/passwd", b"root:x:0:0:root:/:/pause\n"),
                        File("etc/group", b"root:x:0:\n")], layer)
        archive = out / "pause.oci.tar"
        write_image(out / "pause", [layer], {"Entrypoint": ["/pause"], "WorkingDir": "/"},
                    PAUSE_IMAGE, history=["the stack's pause binary (hack/tools/pause)"],
                    archive=archive)
        return archive

    # --- processes -----------------------------------------------------------------------------

    def _start(self, name: str, argv: list[str]) -> Process:
        env = {"PATH": self.runtime.path(self.dir / "bin")}
        process = Process(name, argv, self.log_dir, env=env).start()
        self.processes.append(process)
        return process

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(str(self.runtime.root / "usr/bin/ctr"), f"--address={self.socket}",
                    "-n", "k8s.io", *args, check=check, timeout=300)

    def import_image(self, archive: Path) -> None:
        self.ctr("images", "import", str(archive))

    def _check_binaries(self) -> None:
        """Fail before touching anything when a part of the node is missing."""
        root = self.runtime.root
        needed = {"containerd": root / "usr/bin/containerd", "runc": root / "usr/sbin/runc",
                  "ctr": root / "usr/bin/ctr", "CNI bridge plugin": root / "usr/lib/cni/bridge",
                  "iptables": root / "usr/sbin/xtables-nft-multi"}
        for name in ("kubelet", "kube-scheduler", "kube-proxy", "pause"):
            needed[name] = self.bin_dir / name
        for name, path in needed.items():
            if not os.access(path, os.X_OK):
                fix = "make debs" if path.is_relative_to(root) else "make testbin"
                raise StackError(f"node: {name} is missing ({path}): run `{fix}`")

    def prepare(self) -> None:
        """The machine's lock and the bridge, before the API server and vcsim listen on it."""
        self._check_binaries()
        self._lock.acquire()
        self._active = True
        try:
            self._clean_leftovers()
            self.dir.mkdir(parents=True, exist_ok=True)
            self.runtime.write_wrappers(self.dir / "bin")
            self._sysctls = {k: Path(f"/proc/sys/{k}").read_text() for k in KUBELET_SYSCTLS}
            self._created_dirs = [d for d in FIXED_DIRS if not d.exists()]
            self._network_up()
        except BaseException:
            self.stop()
            raise

    def start(self, ready: Callable[[], bool]) -> None:
        """containerd (with the images), kubelet, kube-scheduler, kube-proxy; returns once
        `ready()` (the Node object says Ready). On failure everything is undone."""
        try:
            configs = self._write_configs()
            began = time.monotonic()
            self.progress("starting containerd ...")
            containerd = self._start("containerd", [
                str(self.runtime.root / "usr/bin/containerd"), f"--config={configs['containerd']}"])
            poll(lambda: self.ctr("version").returncode == 0, timeout=30,
                 what="containerd", alive=containerd.check_alive)
            for archive in [self._pause_image(), *self.images]:
                self.import_image(archive)
            # pinned: kubelet's image garbage collection never removes the sandbox image
            self.ctr("images", "label", PAUSE_IMAGE, "io.cri-containerd.pinned=pinned")
            self.progress("starting kubelet, kube-scheduler, kube-proxy ...")
            kubelet = self._start("kubelet", [
                str(self.bin_dir / "kubelet"), f"--config={configs['kubelet']}",
                f"--kubeconfig={self.kubeconfigs['kubelet']}", f"--root-dir={self.dir / 'kubelet'}",
                f"--hostname-override={NODE_NAME}", f"--node-ip={ADDRESS}", "--v=1"])
            scheduler = self._start("kube-scheduler", [
                str(self.bin_dir / "kube-scheduler"),
                *(f"--{flag}={self.kubeconfigs['kube-scheduler']}" for flag in (
                    "kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig")),
                "--bind-address=127.0.0.1", f"--secure-port={self.free_port()}",
                f"--tls-cert-file={self.scheduler_serving[0]}",
                f"--tls-private-key-file={self.scheduler_serving[1]}",
                "--leader-elect=false", "--profiling=false", "--v=1"])
            proxy = self._start("kube-proxy", [
                str(self.bin_dir / "kube-proxy"), f"--config={configs['kube-proxy']}", "--v=1"])

            def alive() -> None:
                for process in (containerd, kubelet, scheduler, proxy):
                    process.check_alive()

            poll(ready, timeout=START_TIMEOUT, what=f"node {NODE_NAME} to be Ready", alive=alive)
            self._restore_sysctls()
            self.progress(f"node {NODE_NAME} ready ({time.monotonic() - began:.1f}s)")
        except BaseException:
            self.stop()
            raise

    def _restore_sysctls(self) -> None:
        for key, value in self._sysctls.items():
            path = Path(f"/proc/sys/{key}")
            if path.read_text() != value:
                path.write_text(value)

    # --- teardown ------------------------------------------------------------------------------

    def _kill_containers(self) -> None:
        """Every container and sandbox of this node's containerd, then its shims (they are not
        containerd's children and outlive it)."""
        if self.socket.exists() and self.ctr("version", check=False).returncode == 0:
            for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
                self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
            for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
                self.ctr("tasks", "delete", "-f", task, check=False)
        for pid in self._shims():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _shims(self) -> list[int]:
        marker = f"-address {self.socket}".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
                    if b"containerd-shim" in cmdline and marker in cmdline:
                        pids.append(int(proc.name))
        return pids

    def _kill_cgroups(self) -> None:
        """What still runs in the kubepods cgroups dies; then the cgroups go, deepest first."""
        for group in _cgroup_leftovers():
            procs = group / "cgroup.procs"
            with contextlib.suppress(OSError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        for group in _cgroup_leftovers():
            procs = group / "cgroup.procs"
            with contextlib.suppress(OSError, StackError):
                poll(functools.partial(_no_process_in, procs), timeout=10,
                     what=f"{group} to empty")
                group.rmdir()

    def _remove_fixed_paths(self) -> None:
        """kubelet's and the CNI library's files at fixed paths: ours only."""
        for link in Path("/var/log/containers").glob("*"):
            with contextlib.suppress(OSError):
                if os.readlink(link).startswith(str(self.pods_logs)):
                    link.unlink()
        for result in Path("/var/lib/cni/results").glob(f"{NODE_NAME}-*"):
            result.unlink(missing_ok=True)
        Path("/var/lib/kubelet/device-plugins/kubelet.sock").unlink(missing_ok=True)
        listening = _run("ss", "-xlnH", check=False).stdout
        for sock in Path("/run/containerd/s").glob("*"):
            if str(sock) not in listening:
                sock.unlink(missing_ok=True)
        for directory in self._created_dirs:  # only those that did not exist before
            with contextlib.suppress(OSError):
                directory.rmdir()

    def stop(self) -> None:
        """Undo everything; never raises, so teardown always completes. Idempotent."""
        if not self._active:
            return
        steps: list[tuple[str, Callable[[], None]]] = [
            ("kubelet", lambda: self._stop_process("kubelet")),
            ("containers", self._kill_containers),
            ("processes", self._stop_processes),
            ("kube-proxy rules", self._proxy_cleanup),
            ("shims", self._kill_containers),
            ("cgroups", self._kill_cgroups),
            ("mounts", lambda: unmount_under(self.work)),
            ("network", self._network_down),
            ("sysctls", self._restore_sysctls),
            ("files", self._remove_fixed_paths),
        ]
        for _what, step in steps:
            with contextlib.suppress(Exception):
                step()
        self._active = False
        self._lock.release()

    def _stop_process(self, name: str) -> None:
        for process in self.processes:
            if process.name == name:
                process.stop()

    def _stop_processes(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def _proxy_cleanup(self) -> None:
        if (self.bin_dir / "kube-proxy").exists() and (self.dir / "bin").exists():
            _run(str(self.bin_dir / "kube-proxy"), "--cleanup", "--v=0", check=False,
                 env={"PATH": self.runtime.path(self.dir / "bin")})

    def _clean_leftovers(self) -> None:
        """A node whose owner was killed outright (no stop()) left its state behind: the lock is
        ours now, so whatever a node left on this machine is a leftover."""
        stale = (self.dir / "bin").exists() or _run(
            "ip", "link", "show", BRIDGE, check=False).returncode == 0 or bool(_cgroup_leftovers())
        if stale:
            self.progress("removing what an earlier node left behind ...")
            self._kill_containers()
            self._kill_cgroups()
            unmount_under(self.work)
            self.dir.joinpath("bin").mkdir(parents=True, exist_ok=True)
            self.runtime.write_wrappers(self.dir / "bin")
            self._network_down()
            self._remove_fixed_paths()

    def leftovers(self) -> dict[str, Any]:
        """What of this node is still on the machine (empty when stop() did its work)."""
        wrappers = self.dir / "bin"
        chains = []
        if (wrappers / "iptables-save").exists():
            for family in ("iptables", "ip6tables"):
                for table in ("filter", "nat", "mangle", "raw"):
                    dump = _run(str(wrappers / f"{family}-save"), "-t", table, check=False).stdout
                    chains += [f"{family} {table} {line.split()[0]}" for line in dump.splitlines()
                               if line.startswith((":KUBE-", f":{GUARD_CHAIN}"))]
        found: dict[str, Any] = {
            "processes": [p.name for p in self.processes if p.pid and not exited(p.pid)]
            + [f"shim {pid}" for pid in self._shims()],
            "mounts": _mounts_under(self.work),
            "cgroups": [str(c) for c in _cgroup_leftovers()],
            "bridge": _run("ip", "link", "show", BRIDGE, check=False).returncode == 0,
            "iptables": chains,
            "sysctls": {k: v for k, v in self._sysctls.items()
                        if Path(f"/proc/sys/{k}").read_text() != v},
        }
        return {k: v for k, v in found.items() if v}

