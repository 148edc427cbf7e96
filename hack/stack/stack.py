"""The whole local stack as one object: start it, use it, stop it (also on failure)."""

from __future__ import annotations

import contextlib
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
    kubeconfig,
    write_kubeconfig,
)
from .process import Process
from .vsphere import VCenterInfo

OPERATOR_NAMESPACE = "vmgroup-system"  # where the operator runs in `make dev`


class _Part(Protocol):
    process: Process

    def start(self) -> None: ...


Progress = Callable[[str], None]  # told a line whenever a part starts or is ready


class LocalStack:
    """etcd + kube-apiserver + kube-controller-manager and/or vcsim, under one work directory.

    `kube=False` or `vcenter=False` leaves that half out, so a test that needs only the
    simulator does not pay for the API server.
    """

    def __init__(self, work: Path, *, log_dir: Path | None = None, kube: bool = True,
                 vcenter: bool = True, vcsim_method_delays: dict[str, int] | None = None,
                 progress: Progress = lambda line: None) -> None:
        self.work = work
        self.progress = progress
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

    def _starting(self, part: _Part, start: Callable[[], None]) -> None:
        """Run `start` (which waits until `part` is ready), telling progress before and after."""
        began = time.monotonic()
        self.progress(f"starting {part.process.name} ...")
        start()
        self.progress(f"{part.process.name} ready ({time.monotonic() - began:.1f}s)")

    def start(self) -> LocalStack:
        """Start every part and wait until each is ready; on any failure stop what started."""
        try:
            if self.vcsim:
                self.vcsim.process.start()  # it boots while etcd and the API server do
            if self.etcd and self.apiserver and self.controller_manager:
                self._starting(self.etcd, self.etcd.start)
                self._starting(self.apiserver, self.apiserver.start)
                write_kubeconfig(self.kubeconfig, kubeconfig(
                    self.apiserver.url, self.pki.ca, self.apiserver.admin_cert, "admin"))
                self._starting(self.controller_manager, self.controller_manager.start)
            if self.vcsim:
                self._starting(self.vcsim, self.vcsim.wait_ready)
        except BaseException:
            self.stop()
            raise
        return self

    def dead(self) -> list[str]:
        """The names of the parts that were started and have exited since."""
        return [p.process.name for p in self.parts
                if p.process.pid is not None and not p.process.running()]

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
        """Stop in reverse order of dependency; never raises, so teardown always completes."""
        for part in reversed(self.parts):
            with contextlib.suppress(Exception):
                part.process.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
