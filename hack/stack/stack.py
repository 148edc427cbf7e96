"""The whole local stack as one object: start it, use it, stop it (also on failure)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
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
    kubeconfig,
    write_kubeconfig,
)
from .process import Process
from .vsphere import VCenterInfo

OPERATOR_NAMESPACE = "vmgroup-system"  # where the operator runs in `make dev`


class _Part(Protocol):
    process: Process


class LocalStack:
    """etcd + kube-apiserver + kube-controller-manager and/or vcsim, under one work directory.

    `kube=False` or `vcenter=False` leaves that half out, so a test that needs only the
    simulator does not pay for the API server.
    """

    def __init__(self, work: Path, *, log_dir: Path | None = None, kube: bool = True,
                 vcenter: bool = True, vcsim_method_delays: dict[str, int] | None = None) -> None:
        self.work = work
        self.log_dir = log_dir or work / "logs"
        self.work.mkdir(parents=True, exist_ok=True)
        self.pki = Pki.create(work / "pki")
        self.etcd = self.apiserver = self.controller_manager = None
        self.vcsim: VCSim | None = None
        self.webhook: Webhook | None = None
        self.controller: Controller | None = None
        if kube:
            self.etcd = Etcd(self.pki, work, self.log_dir)
            self.apiserver = KubeAPIServer(self.pki, self.etcd, work, self.log_dir)
            self.controller_manager = KubeControllerManager(
                self.pki, self.apiserver, work, self.log_dir)
        if vcenter:
            self.vcsim = VCSim(self.pki, self.log_dir, method_delays=vcsim_method_delays)
        self.kubeconfig = work / "kubeconfig"

    @property
    def parts(self) -> list[_Part]:
        parts: list[_Part | None] = [self.etcd, self.apiserver, self.controller_manager,
                                     self.vcsim, self.webhook, self.controller]
        return [p for p in parts if p is not None]

    @property
    def vcenter(self) -> VCenterInfo:
        if self.vcsim is None:
            raise RuntimeError("this stack was started without vcsim")
        return self.vcsim.info

    def pids(self) -> dict[str, int]:
        return {p.process.name: p.process.pid for p in self.parts if p.process.pid is not None}

    def start(self) -> LocalStack:
        """Start every part and wait until each is ready; on any failure stop what started."""
        try:
            if self.vcsim:
                self.vcsim.process.start()  # it boots while etcd and the API server do
            if self.etcd and self.apiserver and self.controller_manager:
                self.etcd.start()
                self.apiserver.start()
                write_kubeconfig(self.kubeconfig, kubeconfig(
                    self.apiserver.url, self.pki.ca, self.apiserver.admin_cert, "admin"))
                self.controller_manager.start(self.apiserver)
            if self.vcsim:
                self.vcsim.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

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
        webhook.start()
        webhook.register(self.kubeconfig, operator_namespace)
        return webhook

    def start_controller(self, args: Sequence[str] = ()) -> Controller:
        """Start vmgroup-controller against this stack's API server and vcsim."""
        controller = Controller(self.kubeconfig, self.vcenter, self.log_dir, args)
        self.controller = controller  # from now on stop() stops it too
        controller.start()
        return controller

    def stop(self) -> None:
        """Stop in reverse order of dependency; never raises, so teardown always completes."""
        for part in reversed(self.parts):
            with contextlib.suppress(Exception):
                part.process.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
