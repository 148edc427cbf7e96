"""pyvmomi helpers for the simulator: log in with TLS verified, and seed the example's template."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

from .process import poll


@dataclass(frozen=True)
class VCenterInfo:
    """How to reach the simulator: what a controller or a test needs to log in."""

    host: str
    port: int
    username: str
    password: str
    ca_file: Path
    datacenter: str = "DC0"
    template: str = "vm-operator-template"
    template_folder: str = "templates"

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}/sdk"


def connect(info: VCenterInfo) -> Any:
    """A logged-in ServiceInstance; TLS is verified against the stack's CA."""
    context = ssl.create_default_context(cafile=str(info.ca_file))
    return SmartConnect(host=info.host, port=info.port, user=info.username,
                        pwd=info.password, sslContext=context, connectionPoolTimeout=10)


def wait_for_task(task: Any, timeout: float = 60.0) -> Any:
    """Wait for a vSphere task and return its result; raise its fault if it failed.

    (pyVim.task.WaitForTask trips over task names it cannot map to a method, which vcsim sends.)
    """
    info = poll(lambda: task.info.state in ("success", "error") and task.info,
                timeout=timeout, what=f"vSphere task {task._moId}", interval=0.05)
    if info.state == "error":
        raise info.error
    return info.result


def disconnect(si: Any) -> None:
    Disconnect(si)


def find_by_name(si: Any, vimtype: type, name: str) -> Any | None:
    """The managed object of `vimtype` called `name`, or None (one container-view query)."""
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vimtype], True)
    try:
        return next((obj for obj in view.view if obj.name == name), None)
    finally:
        view.Destroy()


def datacenter(si: Any, info: VCenterInfo) -> Any:
    dc = find_by_name(si, vim.Datacenter, info.datacenter)
    if dc is None:
        raise LookupError(f"datacenter {info.datacenter!r} not found")
    return dc


def seed_template(si: Any, info: VCenterInfo) -> Any:
    """Create `<datacenter>/vm/<template_folder>/<template>` as a template VM (idempotent)."""
    existing = find_by_name(si, vim.VirtualMachine, info.template)
    if existing is not None:
        return existing
    dc = datacenter(si, info)
    folder = next((f for f in dc.vmFolder.childEntity
                   if isinstance(f, vim.Folder) and f.name == info.template_folder), None)
    if folder is None:
        folder = dc.vmFolder.CreateFolder(info.template_folder)
    cluster = next(c for c in dc.hostFolder.childEntity
                   if isinstance(c, vim.ClusterComputeResource))
    datastore = dc.datastore[0]
    spec = vim.vm.ConfigSpec(
        name=info.template,
        guestId="otherLinux64Guest",
        numCPUs=1,
        memoryMB=512,
        files=vim.vm.FileInfo(vmPathName=f"[{datastore.name}]"),
        deviceChange=[
            vim.vm.device.VirtualDeviceSpec(
                operation=vim.vm.device.VirtualDeviceSpec.Operation.add,
                device=vim.vm.device.ParaVirtualSCSIController(key=1000, busNumber=0,
                                                               sharedBus="noSharing"),
            ),
            vim.vm.device.VirtualDeviceSpec(
                operation=vim.vm.device.VirtualDeviceSpec.Operation.add,
                fileOperation=vim.vm.device.VirtualDeviceSpec.FileOperation.create,
                device=vim.vm.device.VirtualDisk(
                    key=2000, controllerKey=1000, unitNumber=0, capacityInKB=1024 * 1024,
                    backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                        diskMode="persistent", thinProvisioned=True, fileName=""),
                ),
            ),
        ],
    )
    template = wait_for_task(folder.CreateVM_Task(config=spec, pool=cluster.resourcePool))
    template.MarkAsTemplate()
    return template
