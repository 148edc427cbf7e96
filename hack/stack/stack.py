"""The whole local stack as one object: start it, use it, stop it (also on failure)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol

from .components import (
    Controller,
    Etcd,
    KubeAPIServer,
    KubeControllerManager,
    Pki,
    VCSim,
    Webhook,
    bin_dir,
    debs_root,
    free_port,
    https_get,
    kubeconfig,
    write_kubeconfig,
)
from .node import ADDRESS, NODE_NAME, Node, Runtime
from .process import Process
from .vsphere import VCenterInfo

OPERATOR_NAMESPACE = "vmgroup-system"  # where the operator runs in `make dev`


class _Part(Protocol):
    process: Process

    def start(self) -> None: ...


Progress = Callable[[str], None]  # told a line whenever a part starts or is ready


class LocalStack:
    """etcd + kube-apiserver + kube-controller-manager and/or vcsim, and optionally a real node
    (containerd, kubelet, kube-scheduler, kube-proxy), under one work directory.

    `kube=False` or `vcenter=False` leaves that half out, so a test that needs only the
    simulator does not pay for the API server; only `node=True` pays for a node. With a node,
    the API server and vcsim listen on the node's bridge (Pods reach them there), and `images`
    (OCI archives, e.g. `make image`'s) are imported into its containerd.
    """

    def __init__(self, work: Path, *, log_dir: Path | None = None, kube: bool = True,
                 vcenter: bool = True, vcsim_method_delays: dict[str, int] | None = None,
                 vcsim_task_delays: dict[str, int] | None = None,
                 progress: Progress = lambda line: None, node: bool = False,
                 images: Sequence[Path] = ()) -> None:
        self.work = work
        self.progress = progress
        self.log_dir = log_dir or work / "logs"
        self.work.mkdir(parents=True, exist_ok=True)
        if node and not kube:
            raise ValueError("a node needs the API server: kube=True")
        address = ADDRESS if node else None
        self.pki = Pki.create(work / "pki", node=address)
        self.etcd = self.apiserver = self.controller_manager = None
        self.vcsim: VCSim | None = None
        self.webhook: Webhook | None = None
        self.controller: Controller | None = None
        self.node: Node | None = None
        self.kubeconfig = work / "kubeconfig"
        if kube:
            self.etcd = Etcd(self.pki, work, self.log_dir)
            self.apiserver = KubeAPIServer(self.pki, self.etcd, work, self.log_dir, node=address)
            self.controller_manager = KubeControllerManager(
                self.pki, self.apiserver, work, self.log_dir, node=node)
        if vcenter:
            self.vcsim = VCSim(self.pki, self.log_dir, method_delays=vcsim_method_delays,
                               task_delays=vcsim_task_delays, host=address or "127.0.0.1")
        if node and self.apiserver is not None:
            self.node = self._node(self.apiserver, images)

    def _node(self, apiserver: KubeAPIServer, images: Sequence[Path]) -> Node:
        configs = {}
        for user in ("kubelet", "kube-scheduler", "kube-proxy"):
            configs[user] = write_kubeconfig(self.work / f"{user}.kubeconfig", kubeconfig(
                apiserver.url, self.pki.ca, self.pki.pair(user), user))
        return Node(work=self.work, log_dir=self.log_dir, runtime=Runtime(debs_root()),
                    bin_dir=bin_dir(), ca=self.pki.ca,
                    kubeconfigs=configs, kubelet_serving=self.pki.pair("kubelet-serving"),
                    scheduler_serving=self.pki.pair("kube-scheduler-serving"),
                    free_port=free_port, images=list(images), progress=self.progress)

    def node_ready(self) -> bool:
        """Whether the node's Node object says Ready (read with the admin's certificate)."""
        if self.apiserver is None:
            return False
        node = json.loads(https_get(f"{self.apiserver.url}/api/v1/nodes/{NODE_NAME}",
                                    self.pki.ca, self.apiserver.admin_cert))
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in node.get("status", {}).get("conditions", []))

    @property
    def parts(self) -> list[_Part]:
        parts: list[_Part | None] = [self.etcd, self.apiserver, self.controller_manager,
                                     self.vcsim, self.webhook, self.controller]
        return [p for p in parts if p is not None]

    def processes(self) -> list[Process]:
        """Every process of the stack: its parts', and its node's."""
        return [p.process for p in self.parts] + (self.node.processes if self.node else [])

    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.processes() if p.pid is not None}

    @property
    def vcenter(self) -> VCenterInfo:
        if self.vcsim is None:
            raise RuntimeError("this stack was started without vcsim")
        return self.vcsim.info

    def _starting(self, part: _Part, start: Callable[[], None]) -> None:
        """Run `start` (which waits until `part` is ready), telling progress before and after."""
        began = time.monotonic()
        self.progress(f"starting {part.process.name} ...")
        start()
        self.progress(f"{part.process.name} ready ({time.monotonic() - began:.1f}s)")

    def start(self) -> LocalStack:
        """Start every part and wait until each is ready; on any failure stop what started."""
        try:
            if self.node:
                self.node.prepare()  # the bridge the API server and vcsim listen on
            if self.vcsim:
                self.vcsim.process.start()  # it boots while etcd and the API server do
            if self.etcd and self.apiserver and self.controller_manager:
                self._starting(self.etcd, self.etcd.start)
                self._starting(self.apiserver, self.apiserver.start)
                write_kubeconfig(self.kubeconfig, kubeconfig(
                    self.apiserver.url, self.pki.ca, self.apiserver.admin_cert, "admin"))
                self._starting(self.controller_manager, self.controller_manager.start)
            if self.node:
                self.node.start(self.node_ready)
            if self.vcsim:
                self._starting(self.vcsim, self.vcsim.wait_ready)
        except BaseException:
            self.stop()
            raise
        return self

    def dead(self) -> list[str]:
        """The names of the processes that were started and have exited since."""
        return [p.name for p in self.processes() if p.pid is not None and not p.running()]

    def restart_dead(self) -> list[str]:
        """Start again, in order of dependency and on their own ports and data, the parts
        that have died; return their names. (vcsim keeps its inventory in memory: a restarted
        one has the template again, and the controller clones the groups' VMs anew.)"""
        restarted = []
        for part in self.parts:
            if part.process.pid is not None and not part.process.running():
                part.process.stop()  # reap it, and whatever of its group is left
                self._starting(part, part.start)
                restarted.append(part.process.name)
        for process in self.node.processes if self.node else []:
            if process.pid is not None and not process.running():
                process.stop()
                process.start()  # the node's parts need no readiness wait of ours
                restarted.append(process.name)
        return restarted

    def start_webhook(self, args: Sequence[str] = (),
                      operator_namespace: str = OPERATOR_NAMESPACE) -> Webhook:
        """Start vmgroup-webhook with `args` and register it with this stack's API server."""
        if self.apiserver is None:
            raise RuntimeError("a webhook needs the API server: start the stack with kube=True")
        # Initializers are read from the operator's namespace, with the admin's credentials
        # here (the chart gives the webhook a Role of its own).
        args = [f"--namespace={operator_namespace}", f"--kubeconfig={self.kubeconfig}", *args]
        webhook = Webhook(self.pki.ca, self.pki.pair("webhook"), self.log_dir, args)
        self.webhook = webhook  # from now on stop() stops it too
        self._starting(webhook, webhook.start)
        webhook.register(self.kubeconfig, operator_namespace)
        return webhook

    def start_controller(self, args: Sequence[str] = ()) -> Controller:
        """Start vmgroup-controller against this stack's API server and vcsim."""
        controller = Controller(self.kubeconfig, self.vcenter, self.log_dir, args)
        self.controller = controller  # from now on stop() stops it too
        self._starting(controller, controller.start)
        return controller

    def stop(self) -> None:
        """Stop in reverse order of dependency; never raises, so teardown always completes.
        The node (and its Pods) go before vcsim and the API server, its bridge with it."""
        for part in reversed(self.parts):
            if part is self.vcsim and self.node:
                self.node.stop()  # its Pods first: vcsim waits for their long polls to end
            with contextlib.suppress(Exception):
                part.process.stop()
        if self.node:
            self.node.stop()  # idempotent: the network, if an earlier step failed

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
