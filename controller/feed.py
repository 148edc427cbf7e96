"""vCenter's property-change feed: which groups' VMs changed, so drift is repaired in seconds.

One long poll (WaitForUpdatesEx) on a property collector of its own, over every VM under the
base folder: a VM powered off, resized, created or destroyed behind the controller's back (or
by it) puts its group's key on the work queue. The VM's folder says which group it is in
(`<base>/<namespace>/<group>`), asked of vCenter once per folder and remembered (the folders
are the controller's own). The reconcile then reads everything afresh. No polling: while
nothing changes, the only traffic is this long poll.

(Folders could come through the feed itself, with no lookup at all; but collecting folders
while clones run deadlocks vcsim's property collector, so the feed keeps to VMs.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from . import metrics
from .vmomi import vim
from .vsphere import PC, VCenterConfig, VSphere, VSphereError

log = logging.getLogger("vmgroup.controller.feed")

Key = tuple[str, str]
# The guest's primary address too: it comes a while after power-on (when VMware Tools starts),
# and status.vms should show it.
WATCHED = ["parent", "runtime.powerState", "config.hardware.numCPU", "config.hardware.memoryMB",
           "guest.ipAddress"]
MAX_WAIT_SECONDS = 60  # a long poll answers at least this often, so a dead link is noticed


class Inventory:
    """Which group each VM under the base folder is in, and what the feed last said of it.
    `place` says which group a folder is the folder of (None: none); it is asked once per
    folder. A change that repeats what is known (vcsim re-announces every VM as it re-scans)
    wakes nobody.

    It outlives the feed's sessions: after a reconnect the new filter lists every VM again, and
    only what changed meanwhile wakes a group (the VMs the listing no longer names included),
    instead of every group at once while vCenter is already busy."""

    def __init__(self, place: Callable[[Any], Key | None]) -> None:
        self.place = place
        self._groups: dict[str, Key | None] = {}  # folder id -> group
        self._vms: dict[str, tuple[Key | None, dict[str, Any]]] = {}  # VM id -> group, values
        self._listed: set[str] | None = None  # the VMs a listing has named so far

    def listing(self, place: Callable[[Any], Key | None]) -> None:
        """A new filter is about to list every VM; `place` asks through its session."""
        self.place, self._listed = place, set()

    def listed(self) -> list[tuple[str, Key]]:
        """The listing is whole: (VM id, group) of the VMs that went while nobody listened."""
        listed, self._listed = self._listed, None
        if listed is None:
            return []  # no listing under way
        gone = [moid for moid in self._vms if moid not in listed]
        return [(moid, key) for moid in gone if (key := self.vm(moid, "leave", {})) is not None]

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


class VCenterFeed:
    def __init__(self, config: VCenterConfig,
                 changed: Callable[[Key, str, str, dict[str, Any]], None]) -> None:
        self._config = config
        self._changed_vm = changed  # (group, VM id, kind, values); the echo filter's
        self._stop = threading.Event()
        self._retry = threading.Event()  # cuts a reconnect backoff short
        self._thread = threading.Thread(target=self._run, name="vcenter-feed", daemon=True)
        self._inventory = Inventory(lambda folder: None)
        self.listings = 0  # whole listings of the VMs heard (one per session), for tests

    def start(self) -> VCenterFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._retry.set()

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
            except Exception as exc:  # vCenter down, session expired: start over
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
        collector = content.propertyCollector.CreatePropertyCollector()
        inventory = self._inventory
        inventory.listing(lambda folder: self._key(folder, base))
        # Down the folder tree by traversal, not through a ContainerView: vcsim deadlocks a
        # view's lock against its property filters while VMs are being created.
        down = PC.TraversalSpec(name="down", type=vim.Folder, path="childEntity", skip=False,
                                selectSet=[PC.SelectionSpec(name="down")])
        try:
            collector.CreateFilter(PC.FilterSpec(
                objectSet=[PC.ObjectSpec(obj=base, skip=True, selectSet=[down])],
                propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=WATCHED)]),
                partialUpdates=True)
            version = ""
            options = PC.WaitOptions(maxWaitSeconds=MAX_WAIT_SECONDS)
            listing = True  # the filter's first answers list every VM, page by page
            while not self._stop.is_set():
                update = collector.WaitForUpdatesEx(version, options)
                if update is not None:
                    version = update.version
                    for change in (c for fu in update.filterSet for c in fu.objectSet):
                        if isinstance(change.obj, vim.VirtualMachine):  # not the folders passed
                            self._changed(inventory, change)
                if listing and (update is None or not update.truncated):
                    listing = False
                    for moid, key in inventory.listed():
                        self._changed_vm(key, moid, "leave", {})
                    self.listings += 1
        finally:
            collector.Destroy()

    def _changed(self, inventory: Inventory, change: Any) -> None:
        metrics.VCENTER_CHANGES.inc()
        values = {c.name: c.val for c in change.changeSet or []}
        key = inventory.vm(change.obj._moId, change.kind, values)
        if key is not None:
            log.debug("vCenter change", extra={"vmgroup": "/".join(key),
                                               "vm": change.obj._moId, "kind": change.kind})
            self._changed_vm(key, change.obj._moId, change.kind,
                             {name: getattr(value, "_moId", value)
                              for name, value in values.items()})

    @staticmethod
    def _key(folder: Any, base: Any) -> Key | None:
        """(namespace, group) of the folder `<base>/<namespace>/<group>`, else None."""
        namespace = folder.parent
        if namespace is None or namespace.parent is None or namespace.parent != base:
            return None
        return namespace.name, folder.name
