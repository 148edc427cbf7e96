"""The thin vSphere adapter: observe a group's VMs in one query, carry out planned actions.

Everything vCenter-specific is here; the decisions are controller.planner's. Each group's VMs
live in their own folder, `<base folder>/<namespace>/<group>`, and carry the group's UID in
their extraConfig as the ownership marker, set in the clone spec itself, so no VM of ours ever
exists without it. Secrets (the password) are never logged or put in errors.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from . import metrics
from .planner import (
    Action,
    AddFinalizer,
    Clone,
    DeleteFolder,
    Destroy,
    Group,
    PowerOn,
    Reconfigure,
    RemoveFinalizer,
    Vm,
)

log = logging.getLogger("vmgroup.controller.vsphere")

OWNER_KEY = "vmgroup.codeconnect.vmworld.com.uid"  # extraConfig key of the ownership marker
TASK_TIMEOUT = 600.0


class VSphereError(RuntimeError):
    """A vCenter call failed; the message is fit for a VmGroup's status (no secrets)."""

    def __init__(self, message: str, fault: Any = None) -> None:
        super().__init__(message)
        self.fault = fault  # the vSphere fault, when a task failed with one


@dataclass(frozen=True)
class VCenterConfig:
    host: str
    username: str
    password: str = field(repr=False)  # never in a repr, a log line or an error
    port: int = 443
    ca_file: str | None = None  # None: the system's trust store
    insecure: bool = False  # explicit opt-out of TLS verification
    datacenter: str | None = None  # None: the only one
    base_folder: str = "vmgroup-operator"
    resource_pool: str | None = None  # None: the first cluster's root pool
    datastore: str | None = None  # None: the template's
    max_tasks: int = 10  # vCenter tasks (clone, power, reconfigure, destroy) at once


def _ssl_context(config: VCenterConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.ca_file)
    if config.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _wait(task: Any, timeout: float = TASK_TIMEOUT) -> Any:
    """Wait for a vSphere task; return its result or raise VSphereError with its fault."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        info = task.info
        if info.state == vim.TaskInfo.State.success:
            return info.result
        if info.state == vim.TaskInfo.State.error:
            fault = info.error
            raise VSphereError(getattr(fault, "msg", None) or type(fault).__name__, fault)
        if time.monotonic() > deadline:
            raise VSphereError(f"task {info.descriptionId or task._moId} timed out")
        time.sleep(delay)  # task progress has no push here; the controller's feed is separate
        delay = min(delay * 2, 1.0)


class VSphere:
    """One logged-in vCenter session and the inventory objects the controller uses."""

    def __init__(self, config: VCenterConfig, tasks: threading.Semaphore | None = None) -> None:
        self.config = config
        # Shared by every session of the process: at most this many vCenter tasks at once.
        self._tasks = tasks or threading.Semaphore(config.max_tasks)
        try:
            self.si = SmartConnect(host=config.host, port=config.port, user=config.username,
                                   pwd=config.password, sslContext=_ssl_context(config),
                                   connectionPoolTimeout=30)
        except vim.fault.InvalidLogin:
            raise VSphereError(f"vCenter {config.host} refused the login of "
                               f"{config.username}") from None
        except (OSError, ssl.SSLError) as exc:
            raise VSphereError(f"cannot reach vCenter {config.host}: {exc}") from None
        self.content = self.si.RetrieveContent()
        self.datacenter = self._datacenter()

    def close(self) -> None:
        Disconnect(self.si)

    # --- lookups -----------------------------------------------------------------------------

    def _find(self, vimtype: Any, name: str, root: Any = None) -> Any | None:
        view = self.content.viewManager.CreateContainerView(
            root or self.content.rootFolder, [vimtype], True)
        try:
            return next((obj for obj in view.view if obj.name == name), None)
        finally:
            view.Destroy()

    def _datacenter(self) -> Any:
        if self.config.datacenter:
            dc = self._find(vim.Datacenter, self.config.datacenter)
            if dc is None:
                raise VSphereError(f"datacenter {self.config.datacenter!r} not found")
            return dc
        dcs = [e for e in self.content.rootFolder.childEntity if isinstance(e, vim.Datacenter)]
        if len(dcs) != 1:
            raise VSphereError(f"{len(dcs)} datacenters: name the one to use")
        return dcs[0]

    def _pool(self) -> Any:
        if self.config.resource_pool:
            pool = self._find(vim.ResourcePool, self.config.resource_pool, self.datacenter)
            if pool is None:
                raise VSphereError(f"resource pool {self.config.resource_pool!r} not found")
            return pool
        for entity in self.datacenter.hostFolder.childEntity:
            if isinstance(entity, vim.ComputeResource):
                return entity.resourcePool
        raise VSphereError("no cluster or host in the datacenter to run VMs on")

    def template(self, name: str) -> Any:
        template = self._find(vim.VirtualMachine, name, self.datacenter.vmFolder)
        if template is None:
            raise VSphereError(f"template {name!r} not found in datacenter "
                               f"{self.datacenter.name!r}")
        return template

    @staticmethod
    def _child_folder(parent: Any, name: str, create: bool) -> Any | None:
        for child in parent.childEntity:
            if isinstance(child, vim.Folder) and child.name == name:
                return child
        if not create:
            return None
        try:
            return parent.CreateFolder(name)
        except vim.fault.DuplicateName as exc:  # made meanwhile by another worker
            return exc.object

    def base_folder(self, *, create: bool = False) -> Any | None:
        return self._child_folder(self.datacenter.vmFolder, self.config.base_folder, create)

    def group_folder(self, group: Group, *, create: bool = False) -> Any | None:
        folder = self.base_folder(create=create)
        for name in (group.namespace, group.name):
            if folder is None:
                return None
            folder = self._child_folder(folder, name, create)
        return folder

    # --- observing ---------------------------------------------------------------------------

    def observe(self, group: Group) -> list[Vm]:
        """Every VM in the group's folder, in one property-collector call."""
        folder = self.group_folder(group)
        if folder is None:
            return []
        view = self.content.viewManager.CreateContainerView(folder, [vim.VirtualMachine], False)
        try:
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[vmodl.query.PropertyCollector.ObjectSpec(
                    obj=view, skip=True, selectSet=[vmodl.query.PropertyCollector.TraversalSpec(
                        name="view", path="view", skip=False, type=vim.view.ContainerView)])],
                propSet=[vmodl.query.PropertyCollector.PropertySpec(
                    type=vim.VirtualMachine, pathSet=[
                        "name", "runtime.powerState", "config.hardware.numCPU",
                        "config.hardware.memoryMB", "config.extraConfig"])])
            metrics.VCENTER_CALLS.labels("RetrieveContents").inc()
            result = self.content.propertyCollector.RetrieveContents([spec])
        finally:
            view.Destroy()
        vms = []
        for obj in result:
            props = {p.name: p.val for p in obj.propSet}
            owner = next((o.value for o in props.get("config.extraConfig") or []
                          if o.key == OWNER_KEY), None)
            vms.append(Vm(name=props["name"], owner_uid=owner,
                          powered_on=props.get("runtime.powerState") == "poweredOn",
                          cpu=int(props.get("config.hardware.numCPU", 0)),
                          memory_mb=int(props.get("config.hardware.memoryMB", 0))))
        return vms

    def _vm(self, group: Group, name: str) -> Any:
        folder = self.group_folder(group)
        vm = self._find(vim.VirtualMachine, name, folder) if folder else None
        if vm is None:
            raise VSphereError(f"VM {name!r} is gone")
        return vm

    # --- acting ------------------------------------------------------------------------------

    def execute(self, group: Group, action: Action) -> None:
        """Carry out one planned action (finalizers are the Kubernetes side's)."""
        match action:
            case Clone():
                self._clone(group, action)
            case PowerOn(name):
                self._task(self._vm(group, name), "PowerOnVM_Task")
            case Reconfigure(name, cpu, memory_mb):
                vm = self._vm(group, name)
                if vm.runtime.powerState == "poweredOn":
                    self._task(vm, "PowerOffVM_Task")
                self._task(vm, "ReconfigVM_Task",
                           spec=vim.vm.ConfigSpec(numCPUs=cpu, memoryMB=memory_mb))
                self._task(vm, "PowerOnVM_Task")
            case Destroy(name):
                vm = self._vm(group, name)
                if vm.runtime.powerState == "poweredOn":
                    self._task(vm, "PowerOffVM_Task")
                self._task(vm, "Destroy_Task")
            case DeleteFolder():
                self._delete_folders(group)
            case AddFinalizer() | RemoveFinalizer():
                raise ValueError(f"{action} is not a vSphere action")

    def _task(self, obj: Any, method: str, **kwargs: Any) -> Any:
        """Run `obj.method(**kwargs)`, a vSphere task, and wait for it, within the process's
        cap on tasks at once."""
        metrics.VCENTER_CALLS.labels(method).inc()
        with self._tasks:
            return _wait(getattr(obj, method)(**kwargs))

    def _clone(self, group: Group, action: Clone) -> None:
        template = self.template(action.template)
        folder = self.group_folder(group, create=True)
        relocate = vim.vm.RelocateSpec(pool=self._pool())
        if self.config.datastore:
            datastore = self._find(vim.Datastore, self.config.datastore, self.datacenter)
            if datastore is None:
                raise VSphereError(f"datastore {self.config.datastore!r} not found")
            relocate.datastore = datastore
        spec = vim.vm.CloneSpec(
            location=relocate, template=False, powerOn=False,
            config=vim.vm.ConfigSpec(
                numCPUs=action.cpu, memoryMB=action.memory_mb,
                extraConfig=[vim.option.OptionValue(key=OWNER_KEY, value=group.uid)]))
        try:
            clone = self._task(template, "CloneVM_Task", folder=folder, name=action.name,
                               spec=spec)
        except VSphereError as exc:
            if not isinstance(exc.fault, vim.fault.DuplicateName):
                raise
            # Made by an earlier attempt (a crash after the clone): the next observation
            # decides what to do with it.
            return
        self._task(clone, "PowerOnVM_Task")  # explicitly, as its own tracked task

    def _delete_folders(self, group: Group) -> None:
        """The group's folder, then its namespace folder when no other group uses it."""
        folder = self.group_folder(group)
        if folder is not None and not folder.childEntity:
            self._task(folder, "Destroy_Task")
        base = self.base_folder()
        namespace = self._child_folder(base, group.namespace, False) if base else None
        if namespace is not None and not namespace.childEntity:
            self._task(namespace, "Destroy_Task")


class Sessions:
    """One vCenter session shared by the workers: made on first use, and made again after a
    failure (vCenter restarted, the session expired or was terminated)."""

    def __init__(self, config: VCenterConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._session: VSphere | None = None
        self._tasks = threading.Semaphore(config.max_tasks)  # survives re-logins

    def get(self) -> VSphere:
        with self._lock:
            if self._session is None:
                self._session = VSphere(self._config, self._tasks)
            return self._session

    def reset(self) -> None:
        """Forget the session after a failure; the next get() logs in again."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(Exception):  # it may be dead already: that is why
                session.close()
