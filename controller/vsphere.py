"""The thin vSphere adapter: observe a group's VMs in one query, carry out planned actions.

Everything vCenter-specific is here; the decisions are controller.planner's. Each group's VMs
live in their own folder, `<base folder>/<namespace>/<group>`, and carry the group's UID in
their extraConfig as the ownership marker, set in the clone spec itself, so no VM of ours ever
exists without it. Secrets (the password) are never logged or put in errors.

Round trips are what a real vCenter charges for, so: the session is pyVmomi's session-oriented
stub (an expired or terminated session is logged in again and the call retried, transparently),
which also counts every call by method in one place; inventory objects that do not move
(datacenter, pool, datastore, templates, folders) are looked up once and remembered until
vCenter says one is gone; tasks are followed through the property collector (pushed, not
polled).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import Any
from xml.parsers.expat import ExpatError

from vmgroup_api import OWNER_KEY

from . import metrics
from .planner import (
    Action,
    Clone,
    DeleteFolder,
    Destroy,
    Group,
    PowerOn,
    Reconfigure,
    Vm,
)
from .vmomi import SmartStubAdapter, VimSessionOrientedStub, vim, vmodl

log = logging.getLogger("vmgroup.controller.vsphere")

TASK_TIMEOUT = 600.0
TASK_WAIT_SECONDS = 10  # one long poll for a task's state answers at least this often
VM_PROPERTIES = ["name", "runtime.powerState", "config.hardware.numCPU",
                 "config.hardware.memoryMB", "config.extraConfig",
                 # for status.vms: what a user asks first about a VM
                 "guest.ipAddress", "guest.net", "runtime.host", "config.instanceUuid"]
TASK_PROPERTIES = ["info.state", "info.error", "info.result"]
PC = vmodl.query.PropertyCollector


# Calls that may be sent again when their answer is lost (a dropped connection): they only
# read. Any other call may have been carried out by vCenter although its answer never came;
# sent twice, a clone fails with DuplicateName and leaves its VM powered off, and a second
# WaitForUpdatesEx on one collector takes the update the first (abandoned) one was given.
# Those fail instead, and the next reconcile observes what is.
RESENDABLE = frozenset({"RetrieveContents", "RetrieveProperties", "RetrievePropertiesEx",
                        "ContinueRetrievePropertiesEx", "Fetch", "CurrentTime", "FindChild",
                        "FindByInventoryPath", "RetrieveServiceContent"})


class VSphereError(RuntimeError):
    """A vCenter call failed; the message is fit for a VmGroup's status (no secrets)."""

    def __init__(self, message: str, fault: Any = None, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.fault = fault  # the vSphere fault, when a task failed with one
        self.unreachable = unreachable  # vCenter did not answer (down, frozen, cut off)


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
    timeout: float = 30.0  # seconds one call may take before it counts as failed


def _ssl_context(config: VCenterConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.ca_file)
    if config.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _Stub(VimSessionOrientedStub):
    """pyVmomi's session stub (log in on first use and again after NotAuthenticated), counting
    every call by method and remembering when the last one was made (for the keep-alive)."""

    def __init__(self, soap: Any, login: Callable[[Any], None], host: str) -> None:
        super().__init__(soap, login)  # type: ignore[no-untyped-call]
        self.last_call = time.monotonic()
        self._host = host

    def InvokeMethod(self, mo: Any, info: Any, args: Any) -> Any:
        """pyVmomi's loop, but for what it sends again: one re-login after NotAuthenticated
        for every call; a second try after a lost answer only for calls in RESENDABLE."""
        # Property reads come here too: every round trip is counted.
        metrics.VCENTER_CALLS.labels(info.wsdlName).inc()
        self.last_call = time.monotonic()
        for attempt in (1, 2):
            try:
                if self.state == self.STATE_UNAUTHENTICATED:
                    self._CallLoginMethod()  # type: ignore[no-untyped-call]
                status, result = self.soapStub.InvokeMethod(mo, info, args, self)
            except (OSError, HTTPException, ExpatError) as exc:  # down, hung, not vCenter
                # A dropped connection (a pooled one the server closed) is worth a second
                # try; a timeout is not: vCenter is hung, and it would only double the wait.
                if attempt == 1 and info.wsdlName in RESENDABLE and \
                        not isinstance(exc, TimeoutError):
                    time.sleep(0.2)
                    continue
                raise VSphereError(f"vCenter {self._host} did not answer: "
                                   f"{exc or type(exc).__name__}", unreachable=True) from None
            if status == 200:
                return result
            if attempt == 1 and isinstance(result, self.SESSION_EXCEPTIONS):
                self._SetStateUnauthenticated()  # type: ignore[no-untyped-call]
                continue  # expired or terminated: log in again, once
            raise result
        raise AssertionError("unreachable")


def connect(config: VCenterConfig, *, timeout: float | None = None,
            pool_size: int = 5) -> Any:
    """A ServiceInstance on a logged-in session that logs itself in again when it expires."""

    def login(soap: Any) -> None:
        metrics.VCENTER_CALLS.labels("Login").inc()
        content: Any = vim.ServiceInstance("ServiceInstance", soap).RetrieveContent()
        content.sessionManager.Login(config.username, config.password, None)

    try:
        soap = SmartStubAdapter(host=config.host, port=config.port,
                                sslContext=_ssl_context(config), poolSize=pool_size,
                                httpConnectionTimeout=timeout or config.timeout)
        si = vim.ServiceInstance("ServiceInstance", _Stub(soap, login, config.host))
        si.RetrieveContent()  # logs in
    except vim.fault.InvalidLogin:
        raise VSphereError(f"vCenter {config.host} refused the login of "
                           f"{config.username}") from None
    except VSphereError:
        raise
    except ssl.SSLCertVerificationError as exc:  # reachable, but not to be trusted
        raise VSphereError(f"cannot reach vCenter {config.host}: {exc}") from None
    except OSError as exc:  # refused, unreachable, timed out
        raise VSphereError(f"cannot reach vCenter {config.host}: {exc}",
                           unreachable=True) from None
    except Exception as exc:  # pyVim's "is down or is not a VIM server", HTTP errors
        raise VSphereError(f"cannot talk to vCenter {config.host}: {exc}") from None
    return si


def _addresses(props: dict[str, Any]) -> tuple[str, ...]:
    """The guest's IP addresses as VMware Tools reports them: the primary one first, then every
    other address of every NIC, once each."""
    found = [props.get("guest.ipAddress") or ""]
    found += [ip for nic in props.get("guest.net") or [] for ip in nic.ipAddress or []]
    return tuple(dict.fromkeys(ip for ip in found if ip))


def _task_error(fault: Any) -> VSphereError:
    return VSphereError(getattr(fault, "msg", None) or type(fault).__name__, fault)


class VSphere:
    """One vCenter session and the inventory objects the controller uses."""

    def __init__(self, config: VCenterConfig, tasks: threading.Semaphore | None = None, *,
                 timeout: float | None = None) -> None:
        self.config = config
        # A task's long poll answers well within the call timeout, or a quiet task would look
        # like an unanswered call.
        self._task_wait = max(1, min(TASK_WAIT_SECONDS, int((timeout or config.timeout) / 2)))
        # Shared by every session of the process: at most this many vCenter tasks at once.
        self._tasks = tasks or threading.Semaphore(config.max_tasks)
        # Enough pooled connections for every task being followed plus the workers' reads.
        self.si = connect(config, timeout=timeout, pool_size=config.max_tasks + 8)
        self.content = self.si.RetrieveContent()
        self._lock = threading.Lock()
        self._creating = threading.Lock()
        self._looking = threading.RLock()  # a lookup may look up its parent
        self._known: dict[tuple[str, ...], Any] = {}  # lookups that do not change
        self._collectors: list[Any] = []  # idle property collectors for following tasks
        self.datacenter = self._datacenter()
        self.vm_folder = self.datacenter.vmFolder

    @property
    def idle_seconds(self) -> float:
        return float(time.monotonic() - self.si._stub.last_call)

    def keep_alive(self) -> None:
        """The cheapest call there is: it keeps the session from expiring while idle."""
        self.si.CurrentTime()

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a dead session needs no logout
            self.content.sessionManager.Logout()

    # --- lookups -----------------------------------------------------------------------------

    def _remember(self, key: tuple[str, ...], lookup: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._known:
                return self._known[key]
        # One lookup at a time: the parallel clones of a cold start would each make it.
        with self._looking:
            with self._lock:
                if key in self._known:
                    return self._known[key]
            found = lookup()
            if found is not None:
                with self._lock:
                    self._known[key] = found
            return found

    def forget(self) -> None:
        """Drop every remembered object (one of them is gone from vCenter)."""
        with self._lock:
            self._known.clear()

    def _named(self, vimtype: Any, name: str, root: Any) -> Any | None:
        """The object of `vimtype` called `name` anywhere under `root`, in one query."""
        view = self.content.viewManager.CreateContainerView(root, [vimtype], True)
        try:
            result = self.content.propertyCollector.RetrieveContents([PC.FilterSpec(
                objectSet=[PC.ObjectSpec(obj=view, skip=True, selectSet=[PC.TraversalSpec(
                    name="view", path="view", skip=False, type=vim.view.ContainerView)])],
                propSet=[PC.PropertySpec(type=vimtype, pathSet=["name"])])])
        finally:
            view.Destroy()
        return next((o.obj for o in result if o.propSet[0].val == name), None)

    def _datacenter(self) -> Any:
        if self.config.datacenter:
            dc = self.content.searchIndex.FindChild(self.content.rootFolder,
                                                    self.config.datacenter)
            if not isinstance(dc, vim.Datacenter):
                raise VSphereError(f"datacenter {self.config.datacenter!r} not found")
            return dc
        dcs = [e for e in self.content.rootFolder.childEntity if isinstance(e, vim.Datacenter)]
        if len(dcs) != 1:
            raise VSphereError(f"{len(dcs)} datacenters: name the one to use")
        return dcs[0]

    def _pool(self) -> Any:
        def lookup() -> Any:
            if self.config.resource_pool:
                pool = self._named(vim.ResourcePool, self.config.resource_pool, self.datacenter)
                if pool is None:
                    raise VSphereError(f"resource pool {self.config.resource_pool!r} not found")
                return pool
            for entity in self.datacenter.hostFolder.childEntity:
                if isinstance(entity, vim.ComputeResource):
                    return entity.resourcePool
            raise VSphereError("no cluster or host in the datacenter to run VMs on")

        return self._remember(("pool",), lookup)

    def _datastore(self) -> Any | None:
        name = self.config.datastore
        if not name:
            return None
        datastore = self._remember(("datastore", name),
                                   lambda: self._named(vim.Datastore, name, self.datacenter))
        if datastore is None:
            raise VSphereError(f"datastore {name!r} not found")
        return datastore

    def template(self, name: str) -> Any:
        template = self._remember(("template", name),
                                  lambda: self._named(vim.VirtualMachine, name, self.vm_folder))
        if template is None:
            raise VSphereError(f"template {name!r} not found in datacenter "
                               f"{self.datacenter.name!r}")
        return template

    def _folder(self, path: tuple[str, ...], *, create: bool) -> Any | None:
        """The VM folder at `path` under the datacenter's VM folder, one level at a time."""
        if create:
            with self._creating:  # one CreateFolder per folder, not one per parallel clone
                return self._walk(path, create=True)
        return self._walk(path, create=False)

    def _walk(self, path: tuple[str, ...], *, create: bool) -> Any | None:
        folder = self.vm_folder
        for depth in range(1, len(path) + 1):
            parent, name = folder, path[depth - 1]

            def lookup(parent: Any = parent, name: str = name) -> Any | None:
                child = self.content.searchIndex.FindChild(parent, name)
                if child is None and create:
                    try:
                        child = parent.CreateFolder(name)
                    except vim.fault.DuplicateName as exc:  # made meanwhile by another worker
                        child = exc.object
                return child

            folder = self._remember(("folder", *path[:depth]), lookup)
            if folder is None:
                return None
        return folder

    def base_folder(self, *, create: bool = False) -> Any | None:
        return self._folder((self.config.base_folder,), create=create)

    def group_folder(self, group: Group, *, create: bool = False) -> Any | None:
        return self._folder((self.config.base_folder, group.namespace, group.name),
                            create=create)

    # --- observing ---------------------------------------------------------------------------

    def observe(self, group: Group, *, retry: bool = True) -> list[Vm]:
        """Every VM in the group's folder, in one property-collector call."""
        folder = self.group_folder(group)
        if folder is None:
            return []
        try:
            result = self.content.propertyCollector.RetrieveContents([PC.FilterSpec(
                objectSet=[PC.ObjectSpec(obj=folder, skip=True, selectSet=[PC.TraversalSpec(
                    name="children", path="childEntity", skip=False, type=vim.Folder)])],
                propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=VM_PROPERTIES)])])
        except vmodl.fault.ManagedObjectNotFound:
            if not retry:
                raise
            self.forget()  # the folder went behind our back: look it up afresh
            return self.observe(group, retry=False)
        if any(isinstance(missing.fault, vim.fault.NotAuthenticated)
               for obj in result for missing in obj.missingSet or []):
            # Property reads on a dead session may answer "not authenticated" per property
            # instead of failing the call (vcsim does), which the stub cannot see: log in.
            if not retry:
                raise VSphereError("vCenter does not let this session read the VMs")
            self._relogin()
            return self.observe(group, retry=False)
        vms = []
        for obj in result:
            props = {p.name: p.val for p in obj.propSet}
            owner = next((o.value for o in props.get("config.extraConfig") or []
                          if o.key == OWNER_KEY), None)
            power = str(props.get("runtime.powerState") or "")
            vms.append(Vm(name=props["name"], owner_uid=owner, powered_on=power == "poweredOn",
                          cpu=int(props.get("config.hardware.numCPU", 0)),
                          memory_mb=int(props.get("config.hardware.memoryMB", 0)),
                          power_state=power, addresses=_addresses(props),
                          host=self._host_name(props.get("runtime.host")),
                          instance_uuid=str(props.get("config.instanceUuid") or ""),
                          moid=obj.obj._moId))
        return vms

    def _host_name(self, host: Any) -> str:
        """The name of a host, asked once per host (hosts are renamed only by hand)."""
        if host is None:
            return ""
        return str(self._remember(("host", host._moId), lambda: host.name))

    def _relogin(self) -> None:
        """Log in again on the next call; the old session's collectors went with it."""
        self.si._stub._SetStateUnauthenticated()
        with self._lock:
            self._collectors.clear()

    def _vm(self, group: Group, name: str) -> Any:
        folder = self.group_folder(group)
        vm = self.content.searchIndex.FindChild(folder, name) if folder else None
        if vm is None:
            raise VSphereError(f"VM {name!r} is gone")
        return vm

    # --- acting ------------------------------------------------------------------------------

    def execute(self, group: Group, action: Action) -> None:
        """Carry out one planned action and wait for it here. The controller runs VM actions
        through controller.tasks instead, which waits for nobody; this is for the folders, and
        for tests that want each action done before the next."""
        if isinstance(action, DeleteFolder):
            self.delete_folders(group)
            return
        result = None
        try:
            for step in self.steps(group, action):
                if (task := step(result)) is not None:
                    with self._tasks:
                        result = self._wait(task)
        except VSphereError as exc:
            if not self.done_anyway(exc):
                raise

    def delete_folders(self, group: Group) -> None:
        """The group's folder, then its namespace folder when no other group uses it."""
        with self._looked_up_again():
            self._delete_folders(group)

    def _task(self, obj: Any, method: str, **kwargs: Any) -> Any:
        """Run `obj.method(**kwargs)`, a vSphere task, and wait for it, within the process's
        cap on tasks at once."""
        with self._tasks:
            return self._wait(getattr(obj, method)(**kwargs))

    def _wait(self, task: Any) -> Any:
        """A task's result, or VSphereError with its fault. Followed through a property
        collector of this session: vCenter answers when the task's state changes."""
        for attempt in (1, 2):
            with self._lock:
                collector = self._collectors.pop() if self._collectors else None
            if collector is None:
                collector = self.content.propertyCollector.CreatePropertyCollector()
            try:
                result = self._follow(collector, task, self._task_wait)
            except VSphereError as exc:
                if exc.fault is not None:  # the task failed; the collector is fine
                    self._give_back(collector)
                raise  # else vCenter did not answer: the collector may still be waiting
            except vmodl.fault.ManagedObjectNotFound as exc:
                if exc.obj == task or attempt == 2:
                    raise
                continue  # the collector died with an old session: take a new one
            self._give_back(collector)
            return result
        raise AssertionError("unreachable")

    def _give_back(self, collector: Any) -> None:
        with self._lock:
            self._collectors.append(collector)

    @staticmethod
    def _follow(collector: Any, task: Any, wait_seconds: int) -> Any:
        spec = PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=task)],
                             propSet=[PC.PropertySpec(type=vim.Task, pathSet=TASK_PROPERTIES)])
        task_filter = collector.CreateFilter(spec, partialUpdates=False)
        abandoned = False
        try:
            state: dict[str, Any] = {}
            version = ""  # "": the current state at once; then only changes
            options = PC.WaitOptions(maxWaitSeconds=wait_seconds)
            deadline = time.monotonic() + TASK_TIMEOUT
            while True:
                update = collector.WaitForUpdatesEx(version, options)
                if update is not None:
                    version = update.version
                    for change in (c for fu in update.filterSet for o in fu.objectSet
                                   for c in o.changeSet or []):
                        state[change.name] = change.val
                else:  # a quiet wait: ask the task itself, so no lost update holds us here
                    info = task.info
                    state.update({"info.state": info.state, "info.error": info.error,
                                  "info.result": info.result})
                match state.get("info.state"):
                    case vim.TaskInfo.State.success:
                        return state.get("info.result")
                    case vim.TaskInfo.State.error:
                        raise _task_error(state.get("info.error"))
                if time.monotonic() > deadline:
                    raise VSphereError(f"task {task._moId} timed out")
        except VSphereError as exc:
            # Unanswered: the filter goes with its collector, which is not used again (and
            # asking vCenter to destroy it now would only wait another timeout).
            abandoned = exc.unreachable
            raise
        finally:
            if not abandoned:
                task_filter.DestroyPropertyFilter()

    def steps(self, group: Group, action: Action) -> list[Callable[[Any], Any]]:
        """The vCenter tasks a VM action is, in order (controller.tasks runs them): each starts
        one, given the result of the task before it, or returns None when it has nothing to
        do. A step that fails (a template missing, a VM gone) fails the action."""
        match action:
            case Clone():
                # Powered on by a task of its own, not by the clone's (CloneSpec.powerOn): vcsim
                # holds the template's lock while its clone waits for that power-on, which
                # would make every clone of a template wait for the one before.
                return [self._guarded(lambda _: self._start_clone(group, action)),
                        self._guarded(lambda vm: vm.PowerOnVM_Task())]
            case PowerOn(name):
                return [self._guarded(lambda _: self._vm(group, name).PowerOnVM_Task())]
            case Reconfigure(name, cpu, memory_mb):
                vm: list[Any] = []  # looked up by the first step
                spec = vim.vm.ConfigSpec(numCPUs=cpu, memoryMB=memory_mb)
                return [self._guarded(lambda _: self._power_off(vm, group, name)),
                        self._guarded(lambda _: vm[0].ReconfigVM_Task(spec=spec)),
                        self._guarded(lambda _: vm[0].PowerOnVM_Task())]
            case Destroy(name):
                found: list[Any] = []
                return [self._guarded(lambda _: self._power_off(found, group, name)),
                        self._guarded(lambda _: found[0].Destroy_Task())]
        raise ValueError(f"{action} is not a VM action")

    def _power_off(self, into: list[Any], group: Group, name: str) -> Any:
        """Look the VM up (into `into`, for the steps after) and power it off if it is on."""
        into.append(self._vm(group, name))
        return into[0].PowerOffVM_Task() if into[0].runtime.powerState == "poweredOn" else None

    def _guarded(self, step: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def guarded(previous: Any) -> Any:
            try:
                with self._looked_up_again():
                    return step(previous)
            except vmodl.MethodFault as exc:
                raise _task_error(exc) from None
        return guarded

    @contextlib.contextmanager
    def _looked_up_again(self) -> Iterator[None]:
        """An object vCenter no longer has: a clear error, and everything remembered is
        forgotten, so the retry looks it up again."""
        try:
            yield
        except vmodl.fault.ManagedObjectNotFound as exc:
            self.forget()
            raise VSphereError(f"{exc.obj} is gone from vCenter") from None

    @staticmethod
    def done_anyway(error: BaseException) -> bool:
        """A clone that failed because its VM exists: made by an earlier attempt (a crash, or
        an answer lost in an outage), so the next observation decides what it needs."""
        return isinstance(error, VSphereError) and isinstance(error.fault, vim.fault.DuplicateName)

    def _start_clone(self, group: Group, action: Clone) -> Any:
        template = self.template(action.template)
        folder = self.group_folder(group, create=True)
        relocate = vim.vm.RelocateSpec(pool=self._pool())
        if (datastore := self._datastore()) is not None:
            relocate.datastore = datastore
        spec = vim.vm.CloneSpec(
            location=relocate, template=False, powerOn=False,
            config=vim.vm.ConfigSpec(
                numCPUs=action.cpu, memoryMB=action.memory_mb,
                extraConfig=[vim.option.OptionValue(key=OWNER_KEY, value=group.uid)]))
        return template.CloneVM_Task(folder=folder, name=action.name, spec=spec)

    def _delete_folders(self, group: Group) -> None:
        """The group's folder, then its namespace folder when no other group uses it."""
        for path in ((self.config.base_folder, group.namespace, group.name),
                     (self.config.base_folder, group.namespace)):
            folder = self._folder(path, create=False)
            if folder is None or folder.childEntity:
                return
            self._task(folder, "Destroy_Task")
            with self._lock:
                self._known.pop(("folder", *path), None)


@dataclass
class _Followed:
    task: Any
    ended: Callable[[Any, BaseException | None], None]
    silent: Callable[[BaseException], None]
    deadline: float
    watched: bool = False  # in the current collector's view
    state: dict[str, Any] = field(default_factory=dict)


class TaskWatch:
    """Every vCenter task in flight, followed by one property collector for the whole process:
    vCenter pushes each task's end through one long poll (WaitForUpdatesEx), and whoever
    started the task is told. A task followed is put in the collector's ListView, which its
    one filter covers, and its state is read once (it may have ended before); after that only
    vCenter's pushes count. Adding a task interrupts the long poll (CancelWaitForUpdates), so
    it is taken in at once. (One filter over a view, not a filter per task: vcsim collects
    every filter of a collector again for each filter and each inventory change.)

    A long poll that vCenter does not answer leaves its collector behind (a second poll on
    it would race the first for updates): the next round makes a new collector, filters every
    task again and reads their states. Tasks that do not end within TASK_TIMEOUT fail."""

    QUIET_WAIT = 2  # seconds: a long poll's wait while tasks are followed (a lost interrupt)

    def __init__(self, session: Callable[[], VSphere], *,
                 timeout: float = TASK_TIMEOUT) -> None:
        self._session = session
        self._timeout = timeout
        self._cond = threading.Condition()
        self._followed: dict[str, _Followed] = {}  # task moid -> what follows it
        self._collector: Any = None
        self._view: Any = None  # the collector's ListView of the tasks followed
        self._ended: list[Any] = []  # tasks that ended, still in the view
        self._polling = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-watch", daemon=True)

    def start(self) -> TaskWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._followed)

    def follow(self, task: Any, ended: Callable[[Any, BaseException | None], None],
               silent: Callable[[BaseException], None]) -> None:
        """Tell `ended` the task's result (or its failure as a VSphereError) when it ends, and
        `silent` when vCenter stops answering meanwhile (the task is still followed)."""
        with self._cond:
            self._followed[task._moId] = _Followed(task, ended, silent,
                                                   time.monotonic() + self._timeout)
            self._cond.notify_all()
            collector = self._collector if self._polling else None
        if collector is not None:
            with contextlib.suppress(Exception):  # lost: the poll's short wait takes it in
                collector.CancelWaitForUpdates()

    def _run(self) -> None:
        version, answered = "", True
        while not self._stop.is_set():
            with self._cond:
                while not self._followed and not self._stop.is_set():
                    self._cond.wait()
            try:
                version = self._round(version)
                answered = True
            except VSphereError as exc:
                if not exc.unreachable:
                    log.warning("following vCenter tasks failed", extra={"error": str(exc)})
                elif answered:  # the first silence of an outage: whoever waits should know
                    answered = False
                    with self._cond:
                        told = [f.silent for f in self._followed.values()]
                    for silent in told:
                        silent(exc)
                version = self._reset()
                self._stop.wait(1.0)
            except vmodl.fault.RequestCanceled:
                pass  # a task was added: take it in
            except vmodl.fault.ManagedObjectNotFound as exc:
                if not self._gone(exc.obj):  # not a task: the collector went with its session
                    version = self._reset()
            except Exception as exc:
                log.warning("following vCenter tasks failed", exc_info=True,
                            extra={"error": str(exc)})
                version = self._reset()
                self._stop.wait(1.0)

    def _gone(self, obj: Any) -> bool:
        """End the task `obj` if it is one followed: vCenter no longer has it (it forgets
        tasks a while after they end; an outage may last longer). Whether it was one."""
        moid = str(getattr(obj, "_moId", ""))
        with self._cond:
            followed = self._followed.get(moid)
        if followed is None:
            return False
        self._end(moid, None, VSphereError(f"task {moid} is gone from vCenter"))
        return True

    def _reset(self) -> str:
        """Start again on a new collector: every task is filtered and read afresh."""
        with self._cond:
            self._collector, self._view, self._polling = None, None, False
            self._ended.clear()
            for followed in self._followed.values():
                followed.watched = False
        return ""

    def _make_collector(self, session: VSphere) -> None:
        """A new collector, with a ListView for the tasks and one filter over it."""
        collector = session.content.propertyCollector.CreatePropertyCollector()
        view = session.content.viewManager.CreateListView(obj=[])
        collector.CreateFilter(PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=view, skip=True, selectSet=[PC.TraversalSpec(
                type=vim.view.ListView, path="view", skip=False)])],
            propSet=[PC.PropertySpec(type=vim.Task, pathSet=TASK_PROPERTIES)]),
            partialUpdates=False)
        with self._cond:
            self._collector, self._view = collector, view

    def _take_in(self, view: Any, new: list[_Followed]) -> None:
        """Put new tasks in the view; one vCenter no longer has ends at once."""
        unknown = {t._moId for t in view.ModifyListView(add=[f.task for f in new]) or []}
        for followed in new:
            followed.watched = True
            if followed.task._moId in unknown:
                self._gone(followed.task)

    def _round(self, version: str) -> str:
        """Take in new tasks, then wait once for vCenter's news; the version to wait from."""
        session = self._session()
        if self._collector is None:
            self._make_collector(session)
        collector, view = self._collector, self._view
        if self._ended:  # (an ended task left in the view costs nothing but its place)
            view.ModifyListView(remove=self._ended)
            self._ended = []
        with self._cond:
            new = [f for f in self._followed.values() if not f.watched]
        if new:
            self._take_in(view, new)
        if new and version:  # (the first poll of a collector answers with every state)
            self._read(session, new)
        self._expire()
        with self._cond:
            if any(not f.watched for f in self._followed.values()):
                return version  # more came meanwhile
            if not self._followed:
                return version
            self._polling = True
        try:
            update = collector.WaitForUpdatesEx(version, PC.WaitOptions(
                maxWaitSeconds=self.QUIET_WAIT))
        finally:
            with self._cond:
                self._polling = False
        if update is None:
            return version
        for change_set in update.filterSet:
            for obj in change_set.objectSet:
                if obj.kind == "leave":  # gone from vCenter (or from the view: then ended)
                    self._gone(obj.obj)
                else:
                    self._apply(obj.obj._moId, {c.name: c.val for c in obj.changeSet or []})
        return str(update.version)

    def _read(self, session: VSphere, followed: list[_Followed]) -> None:
        """The states of `followed` tasks, in one call."""
        try:
            found = session.content.propertyCollector.RetrieveContents([PC.FilterSpec(
                objectSet=[PC.ObjectSpec(obj=f.task) for f in followed],
                propSet=[PC.PropertySpec(type=vim.Task, pathSet=TASK_PROPERTIES)])])
        except vmodl.fault.ManagedObjectNotFound as exc:
            if not self._gone(exc.obj):
                raise
            return
        for obj in found:
            self._apply(obj.obj._moId, {p.name: p.val for p in obj.propSet})

    def _apply(self, moid: str, changes: dict[str, Any]) -> None:
        with self._cond:
            followed = self._followed.get(moid)
            if followed is None:
                return
            followed.state.update(changes)
            state = followed.state.get("info.state")
        if state == vim.TaskInfo.State.success:
            self._end(moid, followed.state.get("info.result"), None)
        elif state == vim.TaskInfo.State.error:
            self._end(moid, None, _task_error(followed.state.get("info.error")))

    def _expire(self) -> None:
        now = time.monotonic()
        with self._cond:
            late = [moid for moid, f in self._followed.items() if f.deadline < now]
        for moid in late:
            self._end(moid, None, VSphereError(f"task {moid} timed out"))

    def _end(self, moid: str, result: Any, error: BaseException | None) -> None:
        with self._cond:
            followed = self._followed.pop(moid, None)
        if followed is None:
            return
        if followed.watched:
            self._ended.append(followed.task)  # out of the view at the next round, together
        followed.ended(result, error)


class Sessions:
    """The workers' vCenter session: made on first use (vCenter may be down at start), kept
    alive while idle, logged in again by the stub when it expires anyway."""

    def __init__(self, config: VCenterConfig, *, keepalive_seconds: float = 300.0) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._session: VSphere | None = None
        self._tasks = threading.Semaphore(config.max_tasks)
        self._keepalive = keepalive_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep_alive, name="vcenter-keepalive",
                                        daemon=True)
        self._thread.start()

    def get(self) -> VSphere:
        with self._lock:
            if self._session is None:
                self._session = VSphere(self._config, self._tasks)
            return self._session

    def _keep_alive(self) -> None:
        while not self._stop.wait(self._keepalive / 4):
            session = self._session
            if session is None or session.idle_seconds < self._keepalive:
                continue  # in use: the calls themselves keep it alive
            try:
                session.keep_alive()
            except Exception as exc:  # the next real call logs in again
                log.warning("vCenter keep-alive failed", extra={"error": str(exc)})

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()
