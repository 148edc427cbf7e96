"""vCenter's change feed: which groups' VMs changed, so drift is repaired in seconds.

vCenter tells what happens to the VMs under the base folder in its events: a VM powered off,
resized, created or destroyed behind the controller's back (or by it). The feed keeps an event
collector of its own and one long poll (WaitForUpdatesEx) on the collector's newest event: when
it moves, the new events are read, then the VMs they name, in one property read, and a VM that
changed puts its group's key on the work queue. The VM's folder says which group it is in
(`<base>/<namespace>/<group>`), asked of vCenter once per folder and remembered (the folders
are the controller's own). No polling: while nothing happens, the only traffic is the long poll.

The VMs events name are also followed for a few seconds, through a ListView and one property
filter over it on the same long poll: a change may land just after its event. A guest's
address has no event (VMware Tools reports it a while after power-on), so a VM powered on
without one stays in the view until it has one, for ADDRESS_WAIT at most (a guest without
Tools never reports one; the periodic resync reads it then).

Why events, and not one property filter over every VM: for every change to any object while a
long poll waits, vcsim collects every filter of that collector again, once per filter. Over
the whole inventory that cost it, at 1000 groups of 3, more CPU than all the clones
(bench.controller). What events do not say is left to the resync: a VM moved between folders,
and a guest's address changing while it runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import metrics
from .vmomi import vim, vmodl
from .vsphere import PC, VCenterConfig, VSphere, VSphereError

log = logging.getLogger("vmgroup.controller.feed")

Key = tuple[str, str]
# What a changed VM is read for: its folder (its group), and what status.vms and the planner
# show. The guest's primary address comes a while after power-on, when VMware Tools starts.
WATCHED = ["parent", "runtime.powerState", "config.hardware.numCPU", "config.hardware.memoryMB",
           "guest.ipAddress"]
ADDRESS = "guest.ipAddress"
# The events that say a VM changed in what WATCHED shows, or came or went (by name: vCenter
# filters on the event's type).
VM_EVENTS = ["VmCreatedEvent", "VmClonedEvent", "VmDeployedEvent", "VmRegisteredEvent",
             "VmDiscoveredEvent", "VmRemovedEvent", "VmPoweredOnEvent", "VmPoweredOffEvent",
             "VmSuspendedEvent", "VmGuestShutdownEvent", "VmReconfiguredEvent",
             "VmRenamedEvent", "VmRelocatedEvent", "VmMigratedEvent"]
MAX_WAIT_SECONDS = 60  # a long poll answers at least this often, so a dead link is noticed
READ_EVENTS = 1000  # events read at a time
LIST_PAGE = 500  # VMs per page of a listing
WATCH_SECONDS = 3.0  # a VM named by an event is followed this long after it
ADDRESS_WAIT = 600.0  # seconds a powered-on VM is followed for its guest's address


class EventsLost(VSphereError):
    """The collector dropped events before they were read: start over with a listing."""


class Inventory:
    """Which group each VM under the base folder is in, and what the feed last read of it.
    `place` says which group a folder is the folder of (None: none); it is asked once per
    folder. A VM read as it was known wakes nobody (events about a VM often come in pairs).

    It outlives the feed's sessions: after a reconnect the VMs are listed again, and only what
    changed meanwhile wakes a group (the VMs the listing no longer names included), instead of
    every group at once while vCenter is already busy."""

    def __init__(self, place: Callable[[Any], Key | None]) -> None:
        self.place = place
        self._groups: dict[str, Key | None] = {}  # folder id -> group
        self._vms: dict[str, tuple[Key | None, dict[str, Any]]] = {}  # VM id -> group, values
        self._listed: set[str] | None = None  # the VMs a listing has named so far

    def listing(self, place: Callable[[Any], Key | None]) -> None:
        """A new session is about to list every VM; `place` asks through it."""
        self.place, self._listed = place, set()

    def listed(self) -> list[tuple[str, Key]]:
        """The listing is whole: (VM id, group) of the VMs that went while nobody listened."""
        listed, self._listed = self._listed, None
        if listed is None:
            return []  # no listing under way
        gone = [moid for moid in self._vms if moid not in listed]
        return [(moid, key) for moid in gone if (key := self.vm(moid, "leave", {})) is not None]

    def read(self, moid: str, values: dict[str, Any]) -> tuple[Key, str, dict[str, Any]] | None:
        """A VM as vCenter shows it now (all of WATCHED, or some): (its group, "enter" or
        "modify", what changed) to tell, or None when that is nothing."""
        kind = "modify" if moid in self._vms else "enter"
        _, known = self._vms.get(moid, (None, {}))
        changed = {name: value for name, value in values.items()
                   if kind == "enter" or known.get(name) != getattr(value, "_moId", value)}
        key = self.vm(moid, kind, changed)
        return (key, kind, changed) if key is not None else None

    def vm(self, moid: str, kind: str, changes: dict[str, Any]) -> Key | None:
        """The group to tell about this change of a VM (None: nobody)."""
        if kind == "leave":
            gone = self._vms.pop(moid, None)
            return gone[0] if gone else None
        if self._listed is not None:
            self._listed.add(moid)
        before, values = self._vms.get(moid, (None, {}))
        new = {name: getattr(value, "_moId", value) for name, value in changes.items()}
        if moid in self._vms and all(values.get(k) == v for k, v in new.items()):
            return None  # nothing new
        group = before
        if (folder := new.get("parent")) is not None:
            if folder not in self._groups:
                self._groups[folder] = self.place(changes["parent"])
            group = self._groups[folder]
        self._vms[moid] = (group, {**values, **new})
        # Moved out of a group's folder: that group has lost a VM.
        return group or before

    def awaits_address(self, moid: str) -> bool:
        """Whether a VM of a group is powered on and its guest has not said its address."""
        group, values = self._vms.get(moid, (None, {}))
        return (group is not None and values.get("runtime.powerState") == "poweredOn"
                and not values.get(ADDRESS))


class _Watch:
    """The VMs the feed follows, through one ListView and one property filter over it: each VM
    an event named, for WATCH_SECONDS after it (vCenter's change may land just after its event:
    vcsim posts a power-on's event before the VM is on), and a VM powered on without a guest
    address until it has one (for ADDRESS_WAIT at most).

    One filter whose view changes, not a filter per batch of VMs: vcsim collects every filter
    of a collector again for each filter and each inventory change, which grows with the
    square of the filters."""

    def __init__(self, content: Any, collector: Any) -> None:
        self.view = content.viewManager.CreateListView(obj=[])
        collector.CreateFilter(PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=self.view, skip=True, selectSet=[PC.TraversalSpec(
                type=vim.view.ListView, path="view", skip=False)])],
            propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=WATCHED)]),
            partialUpdates=True)
        self._followed: dict[str, Any] = {}  # VM id -> the VM
        self._named: dict[str, float] = {}  # VM id -> when its last event's window ends
        self._awaits: dict[str, float] = {}  # VM id -> until when its address is waited for

    def __len__(self) -> int:
        return len(self._followed)

    def follow(self, vms: dict[str, Any]) -> None:
        """Follow `vms` (id -> VM), named by events just now, for the next WATCH_SECONDS."""
        self._named.update(dict.fromkeys(vms, time.monotonic() + WATCH_SECONDS))
        new = {moid: vm for moid, vm in vms.items() if moid not in self._followed}
        if new:
            self.view.ModifyListView(add=list(new.values()))
            self._followed.update(new)

    def settle(self, inventory: Inventory, vms: Iterable[str]) -> float | None:
        """`vms` were read: those awaiting an address are followed until it comes; those whose
        time is over are dropped. The seconds until the next one is due (None: none is)."""
        now = time.monotonic()
        for moid in vms:
            if not inventory.awaits_address(moid):
                self._awaits.pop(moid, None)
            elif moid in self._followed:
                self._awaits.setdefault(moid, now + ADDRESS_WAIT)
        due, done = [], []
        for moid in self._followed:
            until = max(self._named.get(moid, 0.0), self._awaits.get(moid, 0.0))
            if until > now:
                due.append(until)
            else:
                done.append(self._followed[moid])
        if done:
            self.view.ModifyListView(remove=done)
            for vm in done:
                del self._followed[vm._moId]
                self._named.pop(vm._moId, None)
                self._awaits.pop(vm._moId, None)
        return min(due) - now if due else None


class VCenterFeed:
    def __init__(self, config: VCenterConfig,
                 changed: Callable[[Key, str, str, dict[str, Any]], None]) -> None:
        self._config = config
        self._changed_vm = changed  # (group, VM id, kind, values); the echo filter's
        self._stop = threading.Event()
        self._retry = threading.Event()  # cuts a reconnect backoff short
        self._thread = threading.Thread(target=self._run, name="vcenter-feed", daemon=True)
        self._inventory = Inventory(lambda folder: None)
        self._waiting: Any = None  # the property collector of the long poll under way
        self.listings = 0  # whole listings of the VMs (one per session), for tests
        self.watching = 0  # VMs followed by property filters, for tests

    def start(self) -> VCenterFeed:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop, and give vCenter back the feed's collectors (they count against a limit)."""
        self._stop.set()
        self._retry.set()
        if (collector := self._waiting) is not None:
            with contextlib.suppress(Exception):  # the poll ends on its own within a minute
                collector.CancelWaitForUpdates()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def reconnect_now(self) -> None:
        """vCenter answers again: a feed waiting to reconnect does so at once."""
        self._retry.set()

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            session = None
            try:
                # Its own session, whose long poll outlasts the workers' call timeout.
                session = VSphere(self._config, timeout=MAX_WAIT_SECONDS + 30)
                backoff = 1.0
                self._follow(session)
            except Exception as exc:  # vCenter down, session expired, events lost: start over
                if self._stop.is_set():
                    break
                log.warning("vCenter feed failed; reconnecting",
                            extra={"error": str(exc), "retry_in": backoff})
                self._retry.wait(backoff)
                self._retry.clear()
                backoff = min(backoff * 2, 60.0)
            finally:
                if session is not None:
                    session.close()

    def _follow(self, session: VSphere) -> None:
        base = session.base_folder(create=True)
        if base is None:
            raise VSphereError("the base folder cannot be made")
        content = session.content
        # Made before the listing, so that nothing that happens while it runs goes unheard.
        events = content.eventManager.CreateCollectorForEvents(vim.event.EventFilterSpec(
            entity=vim.event.EventFilterSpec.ByEntity(
                entity=base, recursion=vim.event.EventFilterSpec.RecursionOption.all),
            eventTypeId=VM_EVENTS, disableFullMessage=True, maxCount=1))
        collector = watch = None
        try:
            events.ResetCollector()  # read from now on: the listing tells what came before
            read_up_to = _newest(events.latestPage)
            collector = content.propertyCollector.CreatePropertyCollector()
            collector.CreateFilter(PC.FilterSpec(
                objectSet=[PC.ObjectSpec(obj=events)],
                propSet=[PC.PropertySpec(type=vim.event.EventHistoryCollector,
                                         pathSet=["latestPage"])]), partialUpdates=False)
            watch = _Watch(content, collector)
            self._list(session, base, watch)
            version = ""
            wait = MAX_WAIT_SECONDS
            while not self._stop.is_set():
                self._waiting = collector
                try:
                    update = collector.WaitForUpdatesEx(version, PC.WaitOptions(
                        maxWaitSeconds=wait))
                finally:
                    self._waiting = None
                rang, read = self._took(update)
                if update is not None:
                    version = update.version
                # An answer may hold hundreds of VMs (vcsim sends the whole view again when it
                # changes): not kept while the next long poll waits.
                del update
                if rang > read_up_to:  # new events
                    read_up_to, named = self._read_events(session, events, watch, read_up_to,
                                                          rang)
                    read |= named
                due = watch.settle(self._inventory, read)
                # Wake when a VM is due to be dropped: its filter is not left behind.
                wait = MAX_WAIT_SECONDS if due is None else max(1, min(MAX_WAIT_SECONDS,
                                                                       math.ceil(due)))
                self.watching = len(watch)
        finally:
            for obj, destroy in ((collector, "Destroy"), (watch and watch.view, "DestroyView"),
                                 (events, "DestroyCollector")):
                if obj is not None:
                    with contextlib.suppress(Exception):  # a dead session takes them along
                        getattr(obj, destroy)()

    def _took(self, update: Any) -> tuple[int, set[str]]:
        """What a long poll brought: the event collector's newest event (0: it did not ring),
        and the followed VMs it told of (their changes told)."""
        rang, read = 0, set()
        for change in (c for fu in (update.filterSet if update else []) for c in fu.objectSet):
            values = {c.name: c.val for c in change.changeSet or []}
            if isinstance(change.obj, vim.VirtualMachine):
                # (Out of the view is not gone: a VM's removal is told by its event.)
                if change.kind != "leave":
                    metrics.VCENTER_CHANGES.inc()
                    read.add(change.obj._moId)
                    self._read_vm(change.obj._moId, values)
            elif "latestPage" in values:
                rang = _newest(values["latestPage"])
        return rang, read

    def _list(self, session: VSphere, base: Any, watch: _Watch) -> None:
        """Every VM under the base folder, page by page: what changed since the feed last
        heard of it (or went) is told."""
        inventory = self._inventory
        inventory.listing(lambda folder: self._key(folder, base))
        down = PC.TraversalSpec(name="down", type=vim.Folder, path="childEntity", skip=False,
                                selectSet=[PC.SelectionSpec(name="down")])
        collector = session.content.propertyCollector
        page = collector.RetrievePropertiesEx([PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=base, skip=True, selectSet=[down])],
            propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=WATCHED)])],
            PC.RetrieveOptions(maxObjects=LIST_PAGE))
        while page is not None:
            vms = {obj.obj._moId: obj.obj for obj in page.objects
                   if isinstance(obj.obj, vim.VirtualMachine)}
            for obj in page.objects:
                if obj.obj._moId in vms:
                    self._read_vm(obj.obj._moId, {p.name: p.val for p in obj.propSet})
            watch.follow({moid: vm for moid, vm in vms.items()
                          if inventory.awaits_address(moid)})
            watch.settle(inventory, vms)
            page = collector.ContinueRetrievePropertiesEx(page.token) if page.token else None
        for moid, key in inventory.listed():
            self._tell(key, moid, "leave", {})
        self.listings += 1

    def _read_events(self, session: VSphere, events: Any, watch: _Watch, read_up_to: int,
                     newest: int) -> tuple[int, set[str]]:
        """Read the events after `read_up_to`, up to `newest` (the collector's newest when it
        rang) at least; follow the VMs they name and read them: the newest event read, and
        the VMs read."""
        vms: dict[str, Any] = {}
        removed: set[str] = set()
        while batch := events.ReadNextEvents(READ_EVENTS):
            metrics.VCENTER_CHANGES.inc(len(batch))
            for event in batch:
                read_up_to = max(read_up_to, event.key)
                if (vm := getattr(event.vm, "vm", None)) is not None:
                    vms[vm._moId] = vm
                    if isinstance(event, vim.event.VmRemovedEvent):
                        removed.add(vm._moId)
            if len(batch) < READ_EVENTS:
                break
        if read_up_to < newest:  # the collector's page dropped them before they were read
            raise EventsLost(f"vCenter events up to {newest} were lost; listing again")
        for moid in removed:
            self._leave(moid)
            vms.pop(moid, None)
        # Followed first, then read: whatever changes after the read is pushed.
        watch.follow(vms)
        self._read_vms(session, vms)
        return read_up_to, set(vms) | removed

    def _read_vms(self, session: VSphere, vms: dict[str, Any]) -> None:
        """Read `vms` (id -> VM) in one call; those vCenter no longer has have left."""
        if not vms:
            return
        found = session.content.propertyCollector.RetrieveContents([_vms_spec(vms.values())])
        seen = set()
        for obj in found:
            if any(isinstance(m.fault, vmodl.fault.ManagedObjectNotFound)
                   for m in obj.missingSet or []):
                continue  # gone since its event
            seen.add(obj.obj._moId)
            self._read_vm(obj.obj._moId, {p.name: p.val for p in obj.propSet})
        for moid in vms.keys() - seen:
            self._leave(moid)

    def _leave(self, moid: str) -> None:
        if (key := self._inventory.vm(moid, "leave", {})) is not None:
            self._tell(key, moid, "leave", {})

    def _read_vm(self, moid: str, values: dict[str, Any]) -> None:
        if (news := self._inventory.read(moid, values)) is not None:
            key, kind, changed = news
            self._tell(key, moid, kind, {name: getattr(value, "_moId", value)
                                         for name, value in changed.items()})

    def _tell(self, key: Key, moid: str, kind: str, values: dict[str, Any]) -> None:
        log.debug("vCenter change", extra={"vmgroup": "/".join(key), "vm": moid, "kind": kind})
        self._changed_vm(key, moid, kind, values)

    @staticmethod
    def _key(folder: Any, base: Any) -> Key | None:
        """(namespace, group) of the folder `<base>/<namespace>/<group>`, else None."""
        namespace = folder.parent
        if namespace is None or namespace.parent is None or namespace.parent != base:
            return None
        return namespace.name, folder.name


def _vms_spec(vms: Iterable[Any]) -> Any:
    """WATCHED of these VMs; one that is gone (since its event) is left out of the answer,
    not a fault for the whole read."""
    return PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=vm) for vm in vms],
                         propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=WATCHED)],
                         reportMissingObjectsInResults=True)


def _newest(page: Iterable[Any] | None) -> int:
    """The key of the newest event of a collector's latest page (0: none)."""
    return max((event.key for event in page or ()), default=0)
