"""The parts of the local stack: etcd, kube-apiserver, kube-controller-manager and vcsim.

Each part is a real binary from `hack/testbin.sh`, served over TLS on a free 127.0.0.1 port with
certificates from one throw-away CA, and started with a readiness wait that has a deadline and
fails fast (with the log tail) if the binary exits.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pyVmomi import vim

from webhook import registration

from . import vsphere
from .node import NODE_NAME, SERVICE_RANGE
from .pki import CertificateAuthority, signing_key_pem
from .process import Process, StackError, poll, write_private
from .vsphere import VCenterInfo

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "charts/vmgroup-operator/crds/vmgroups.vm.codeconnect.vmworld.com.yaml"

START_TIMEOUT = 90.0  # the API server's first start (RBAC bootstrap) takes ~10 s on 2 cores


@functools.cache
def bin_dir() -> Path:
    """Where `make testbin` put the binaries (VMGROUP_TESTBIN, else asked of hack/testbin.sh)."""
    configured = os.environ.get("VMGROUP_TESTBIN")
    if configured:
        return Path(configured)
    out = subprocess.run(
        [str(REPO / "hack" / "testbin.sh"), "dir"], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip())


@functools.cache
def debs_root() -> Path:
    """Where hack/debs.sh unpacked Debian's node packages (fetched now if they are missing)."""
    out = subprocess.run([str(REPO / "hack" / "debs.sh")], check=True, capture_output=True,
                         text=True)
    return Path(out.stdout.strip())


def binary(name: str) -> str:
    path = bin_dir() / name
    if not os.access(path, os.X_OK):
        raise StackError(f"{path} is missing: run `make testbin` first")
    return str(path)


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    """Run the real kubectl; raise CalledProcessError (with its stderr) when it fails."""
    return subprocess.run([binary("kubectl"), f"--kubeconfig={kubeconfig}", *args], input=stdin,
                          check=True, capture_output=True, text=True, timeout=120).stdout


def install_crd(kubeconfig: Path) -> None:
    """The VmGroup CRD as the repository has it now (idempotent), once it is Established."""
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
            f"crd/{CRD_PATH.stem}")


def free_port() -> int:
    """A port that was free a moment ago (each part binds it right after; clashes fail loudly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def https_get(url: str, ca: Path, cert: tuple[Path, Path] | None = None) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:  # noqa: S310
        return bytes(resp.read())


@dataclass(frozen=True)
class Pki:
    """Files of the stack's CA and of every certificate the parts use."""

    dir: Path
    ca: Path

    def pair(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "service-account.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "service-account.pub"

    @classmethod
    def create(cls, directory: Path, *, node: str | None = None) -> Pki:
        """The stack's certificates; with `node` (the bridge address), also those of a node,
        and the API server's and vcsim's valid on the bridge, where Pods reach them."""
        directory.mkdir(parents=True, exist_ok=True)
        authority = CertificateAuthority()
        ca = directory / "ca.crt"
        ca.write_bytes(authority.cert_pem)
        for name in ("etcd", "kcm-serving", "webhook", "kube-scheduler-serving"):
            authority.serving(name).write(directory, name)
        on_bridge = (node,) if node else ()
        # Pods know the API server as the `kubernetes` Service (its first address).
        authority.issue("kube-apiserver", server=True, dns_names=(
            "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local"),
            ip_addresses=("127.0.0.1", *on_bridge, str(SERVICE_RANGE[1]))).write(
            directory, "kube-apiserver")
        authority.issue("vcsim", server=True, dns_names=("localhost",),
                        ip_addresses=("127.0.0.1", *on_bridge)).write(directory, "vcsim")
        if node:
            authority.issue("kubelet", server=True, dns_names=(NODE_NAME,),
                            ip_addresses=(node,)).write(directory, "kubelet-serving")
            # the API server's client certificate towards the kubelet: kubectl logs and exec
            authority.issue("kube-apiserver-kubelet-client", organizations=("system:masters",),
                            client=True).write(directory, "apiserver-kubelet-client")
            for name, user, groups in (("kubelet", f"system:node:{NODE_NAME}", ("system:nodes",)),
                                       ("kube-scheduler", "system:kube-scheduler", ()),
                                       ("kube-proxy", "system:kube-proxy", ())):
                authority.issue(user, organizations=groups, client=True).write(directory, name)
        authority.issue("kube-apiserver-etcd-client", client=True).write(
            directory, "etcd-client")
        # The admin user is in system:masters; kube-controller-manager has its bootstrap RBAC user.
        authority.issue("admin", organizations=("system:masters",), client=True).write(
            directory, "admin")
        authority.issue("system:kube-controller-manager", client=True).write(
            directory, "kube-controller-manager")
        private, public = signing_key_pem()
        write_private(directory / "service-account.key", private)
        (directory / "service-account.pub").write_bytes(public)
        return cls(directory, ca)


def kubeconfig(server: str, ca: Path, cert: tuple[Path, Path], user: str) -> dict[str, Any]:
    """A self-contained kubeconfig (data inlined, so it can be copied anywhere)."""

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(cert[0]), "client-key-data": b64(cert[1])}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }


def write_kubeconfig(path: Path, config: dict[str, Any]) -> Path:
    return write_private(path, yaml.safe_dump(config, sort_keys=False))


class Etcd:
    def __init__(self, pki: Pki, work: Path, log_dir: Path) -> None:
        self.port, peer = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        crt, key = pki.pair("etcd")
        self._pki = pki
        data = work / "etcd"
        self.process = Process("etcd", [
            binary("etcd"),
            "--name=default",
            f"--data-dir={data}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls=https://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=https://127.0.0.1:{peer}",
            f"--initial-cluster=default=https://127.0.0.1:{peer}",
            f"--cert-file={crt}", f"--key-file={key}",
            f"--trusted-ca-file={pki.ca}", "--client-cert-auth",
            f"--peer-cert-file={crt}", f"--peer-key-file={key}",
            f"--peer-trusted-ca-file={pki.ca}", "--peer-client-cert-auth",
            "--listen-metrics-urls=",
            # Throw-away data: skipping fsync makes the API server ~5x faster on slow disks.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ], log_dir)

    def start(self) -> None:
        self.process.start()
        poll(lambda: b'"health":"true"' in https_get(
                f"{self.url}/health", self._pki.ca, self._pki.pair("etcd-client")),
             timeout=START_TIMEOUT, what="etcd /health", alive=self.process.check_alive)


class KubeAPIServer:
    def __init__(self, pki: Pki, etcd: Etcd, work: Path, log_dir: Path, *,
                 node: str | None = None) -> None:
        self.port = free_port()
        address = node or "127.0.0.1"
        self.url = f"https://{address}:{self.port}"
        self._pki = pki
        crt, key = pki.pair("kube-apiserver")
        etcd_crt, etcd_key = pki.pair("etcd-client")
        if node:
            # On the bridge, published as the `kubernetes` Service's endpoint (Pods reach it
            # there), with a client certificate for the kubelet's logs and exec.
            kubelet_crt, kubelet_key = pki.pair("apiserver-kubelet-client")
            serving = ["--endpoint-reconciler-type=lease",
                       f"--kubelet-client-certificate={kubelet_crt}",
                       f"--kubelet-client-key={kubelet_key}",
                       f"--kubelet-certificate-authority={pki.ca}",
                       "--kubelet-preferred-address-types=InternalIP"]
        else:
            # 127.0.0.1 may not be an Endpoints address: the API server must not publish itself.
            serving = ["--endpoint-reconciler-type=none"]
        self.process = Process("kube-apiserver", [
            binary("kube-apiserver"),
            f"--etcd-servers={etcd.url}",
            f"--etcd-cafile={pki.ca}", f"--etcd-certfile={etcd_crt}", f"--etcd-keyfile={etcd_key}",
            f"--bind-address={address}", f"--secure-port={self.port}",
            f"--advertise-address={address}",
            *serving,
            f"--tls-cert-file={crt}", f"--tls-private-key-file={key}",
            f"--client-ca-file={pki.ca}",
            f"--cert-dir={work / 'apiserver-certs'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,"
            "MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            "--allow-privileged=false",
            "--profiling=false",
            "--v=1",
        ], log_dir, grace=3.0 if node else 15.0)
        # (With a node, its endpoint reconciler's shutdown never ends: the stack's data is
        # thrown away, so it gets a short grace before SIGKILL.)

    @property
    def admin_cert(self) -> tuple[Path, Path]:
        return self._pki.pair("admin")

    def start(self) -> None:
        self.process.start()
        poll(lambda: https_get(f"{self.url}/readyz", self._pki.ca, self.admin_cert) == b"ok",
             timeout=START_TIMEOUT, what="kube-apiserver /readyz", alive=self.process.check_alive)

    def restart(self) -> None:
        """Stop and start again on the same port, with the same etcd: an upgrade or a crash."""
        self.process.stop()
        self.start()


class KubeControllerManager:
    def __init__(self, pki: Pki, apiserver: KubeAPIServer, work: Path, log_dir: Path, *,
                 node: bool = False) -> None:
        self.port = free_port()
        self._pki = pki
        self._apiserver = apiserver
        config = write_kubeconfig(work / "kube-controller-manager.kubeconfig", kubeconfig(
            apiserver.url, pki.ca, pki.pair("kube-controller-manager"),
            "system:kube-controller-manager"))
        self.process = Process("kube-controller-manager", [
            binary("kube-controller-manager"),
            f"--kubeconfig={config}",
            f"--authentication-kubeconfig={config}",
            f"--authorization-kubeconfig={config}",
            "--bind-address=127.0.0.1", f"--secure-port={self.port}",
            f"--tls-cert-file={pki.pair('kcm-serving')[0]}",
            f"--tls-private-key-file={pki.pair('kcm-serving')[1]}",
            # Each controller acts as its own ServiceAccount, as in a real cluster.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca}",
            "--leader-elect=false",
            # The HPA controller looks at its targets every 2 s, not 15: tests do not wait.
            "--horizontal-pod-autoscaler-sync-period=2s",
            # No cloud, no volumes; without a node, node lifecycle would only log noise (with
            # one, it lifts the not-ready taint that keeps Pods Pending).
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-persistentvolume-binder,"
            "-attachdetach,-service-lb-controller,-node-route-controller"
            + ("" if node else ",-nodelifecycle"),
            "--profiling=false",
            "--v=1",
        ], log_dir)

    def start(self) -> None:
        admin = self._apiserver
        self.process.start()
        poll(lambda: https_get(f"https://127.0.0.1:{self.port}/healthz", self._pki.ca) == b"ok",
             timeout=START_TIMEOUT, what="kube-controller-manager /healthz",
             alive=self.process.check_alive)
        # Really ready: its controllers work (the default ServiceAccount, which Pods need).
        poll(lambda: https_get(
                f"{admin.url}/api/v1/namespaces/default/serviceaccounts/default",
                self._pki.ca, admin.admin_cert),
             timeout=START_TIMEOUT, what="the default ServiceAccount",
             alive=self.process.check_alive)


class VCSim:
    """VMware's vCenter simulator, seeded with the example's template VM."""

    USERNAME = "vmgroup-operator"

    def __init__(self, pki: Pki, log_dir: Path, *, method_delays: dict[str, int] | None = None,
                 task_delays: dict[str, int] | None = None, password: str | None = None,
                 host: str = "127.0.0.1") -> None:
        self.port = free_port()
        crt, key = pki.pair("vcsim")
        self.info = VCenterInfo(
            host=host, port=self.port, username=self.USERNAME,
            password=password or base64.urlsafe_b64encode(os.urandom(12)).decode(),
            ca_file=pki.ca)
        argv = [
            binary("vcsim"),
            f"-l={host}:{self.port}",
            f"-tlscert={crt}", f"-tlskey={key}",
            f"-username={self.info.username}",
            # One DC, one cluster of two hosts, no standalone host, no stock VMs: a small
            # inventory keeps property-collector answers fast and lets tests count VMs exactly.
            "-dc=1", "-cluster=1", "-host=2", "-standalone-host=0", "-vm=0", "-ds=1",
        ]
        # Method delays make a call slow; task delays make its task slow (as in a real vCenter,
        # whose calls return at once), keyed by task name: {"CloneVm": 2000}.
        for flag, delays in (("method-delay", method_delays), ("task-delay", task_delays)):
            if delays:
                argv.append(f"-{flag}=" + ",".join(f"{m}:{ms}" for m, ms in delays.items()))
        # The password travels in the environment, not in argv, which any local user can read.
        # A graceful vcsim waits for every open long poll (the controllers' change feeds) to
        # end; its inventory is thrown away anyway: a short grace, then SIGKILL.
        self.process = Process("vcsim", argv, log_dir, env={"VCSIM_PASSWORD": self.info.password},
                               grace=3.0)

    def start(self) -> None:
        self.process.start()
        self.wait_ready()

    def wait_ready(self) -> None:
        """Wait for a working login, then seed the template (idempotent)."""
        si = poll(lambda: vsphere.connect(self.info), timeout=START_TIMEOUT,
                  what="vcsim login", alive=self.process.check_alive,
                  fatal=(vim.fault.InvalidLogin,))
        try:
            vsphere.seed_template(si, self.info)
        finally:
            vsphere.disconnect(si)


class Webhook:
    """`vmgroup-webhook` (gunicorn over TLS) as the chart runs it, on a free loopback port."""

    def __init__(self, ca: Path, cert: tuple[Path, Path], log_dir: Path,
                 args: Sequence[str] = (), *, name: str = "webhook") -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = ca
        crt, key = cert
        self.process = Process(name, [
            sys.executable, "-m", "webhook",
            f"--tls-cert-file={crt}", f"--tls-key-file={key}",
            f"--bind=127.0.0.1:{self.port}", *args,
        ], log_dir)

    def start(self) -> None:
        self.process.start()
        poll(lambda: https_get(f"{self.url}/readyz", self.ca) == b"ok",
             timeout=START_TIMEOUT, what="vmgroup-webhook /readyz", alive=self.process.check_alive)

    def worker_pids(self) -> list[int]:
        """gunicorn's workers (the children of its master process)."""
        master = self.process.pid
        if master is None:
            return []
        return [int(pid) for pid in
                Path(f"/proc/{master}/task/{master}/children").read_text().split()]

    def connections_per_worker(self) -> list[int]:
        """How many established connections to the webhook each worker holds, read from /proc:
        with keep-alive, which worker serves each connection."""
        port = f":{self.port:04X}"
        established = {fields[9] for fields in (
            line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
            if fields[1].endswith(port) and fields[3] == "01"}  # socket inodes, ESTABLISHED
        counts = []
        for pid in self.worker_pids():
            sockets = set()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:  # closed meanwhile
                    continue
                if target.startswith("socket:["):
                    sockets.add(target[len("socket:["):-1])
            counts.append(len(sockets & established))
        return counts

    def register(self, kubeconfig: Path, operator_namespace: str) -> None:
        """Register by URL with a caBundle, as the local stack does (the chart uses a Service)."""
        configs = registration.configurations(
            registration.url_client_config(self.url, self.ca.read_bytes()), operator_namespace)
        kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", "-",
                stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": configs}))


class Controller:
    """`vmgroup-controller` against this stack's API server and vcsim."""

    def __init__(self, kubeconfig: Path, vcenter: VCenterInfo, log_dir: Path,
                 args: Sequence[str] = (), *, name: str = "controller") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"  # health and metrics, loopback only
        self.process = Process(name, [
            sys.executable, "-m", "controller", f"--kubeconfig={kubeconfig}",
            f"--health-bind=127.0.0.1:{self.port}",
            f"--vcenter-host={vcenter.host}", f"--vcenter-port={vcenter.port}",
            f"--vcenter-username={vcenter.username}", f"--vcenter-ca-file={vcenter.ca_file}",
            f"--datacenter={vcenter.datacenter}", *args,
        ], log_dir, env={"VMGROUP_VCENTER_PASSWORD": vcenter.password})

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:  # noqa: S310
            return bytes(resp.read())

    def start(self) -> None:
        self.process.start()
        poll(lambda: self.get("/readyz") == b"ok", timeout=START_TIMEOUT,
             what="vmgroup-controller /readyz", alive=self.process.check_alive)
