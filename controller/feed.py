"""vCenter's property-change feed: which groups' VMs changed, so drift is repaired in seconds.

One long poll (WaitForUpdatesEx) on a property collector of its own, over every VM and folder
under the base folder: a VM powered off, resized, created or destroyed behind the controller's
back (or by it) puts its group's key on the work queue. The VM's folder says which group it is
in (`<base>/<namespace>/<group>`); folders' names and parents come through the same feed, so
placing a VM costs no call. The reconcile then reads everything afresh. No polling: while
nothing changes, the only traffic is this long poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from pyVmomi import vim, vmodl

from .vsphere import VCenterConfig, VSphere, VSphereError

log = logging.getLogger("vmgroup.controller.feed")

Key = tuple[str, str]
WATCHED = ["parent", "runtime.powerState", "config.hardware.numCPU", "config.hardware.memoryMB"]
FOLDER = ["name", "parent"]
MAX_WAIT_SECONDS = 60  # a long poll answers at least this often, so a dead link is noticed


class Inventory:
    """What the feed knows of the folders and VMs under the base folder, to say which group a
    VM belongs to without asking vCenter. Pure: fed the feed's changes, in order."""

    def __init__(self, base: str) -> None:
        self._base = base  # the base folder's moref id
        self._folders: dict[str, tuple[str, str | None]] = {}  # id -> (name, parent id)
        self._vms: dict[str, Key | None] = {}  # VM id -> its group, as last placed

    def folder(self, moid: str, kind: str, changes: dict[str, Any]) -> None:
        if kind == "leave":
            self._folders.pop(moid, None)
            return
        name, parent = self._folders.get(moid, ("", None))
        self._folders[moid] = (changes.get("name", name), changes.get("parent", parent))

    def vm(self, moid: str, kind: str, changes: dict[str, Any]) -> Key | None:
        """The group whose VM changed (None: not in a group's folder)."""
        if kind == "leave":
            return self._vms.pop(moid, None)
        if "parent" in changes:
            self._vms[moid] = self._group(changes["parent"])
        return self._vms.get(moid)

    def _group(self, folder: str | None) -> Key | None:
        """(namespace, group) of the folder `<base>/<namespace>/<group>`, else None."""
        group = self._folders.get(folder or "")
        namespace = self._folders.get(group[1] or "") if group else None
        if group is None or namespace is None or namespace[1] != self._base:
            return None
        return namespace[0], group[0]


class VCenterFeed:
    def __init__(self, config: VCenterConfig, enqueue: Callable[[Key], None]) -> None:
        self._config = config
        self._enqueue = enqueue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vcenter-feed", daemon=True)

    def start(self) -> VCenterFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

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
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)
            finally:
                if session is not None:
                    session.close()

    def _follow(self, session: VSphere) -> None:
        base = session.base_folder(create=True)
        if base is None:
            raise VSphereError("the base folder cannot be made")
        content = session.content
        view = content.viewManager.CreateContainerView(base, [vim.VirtualMachine, vim.Folder],
                                                       True)
        collector = content.propertyCollector.CreatePropertyCollector()
        inventory = Inventory(base._moId)
        try:
            collector.CreateFilter(vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[vmodl.query.PropertyCollector.ObjectSpec(
                    obj=view, skip=True, selectSet=[vmodl.query.PropertyCollector.TraversalSpec(
                        name="view", path="view", skip=False, type=vim.view.ContainerView)])],
                propSet=[vmodl.query.PropertyCollector.PropertySpec(
                             type=vim.VirtualMachine, pathSet=WATCHED),
                         vmodl.query.PropertyCollector.PropertySpec(
                             type=vim.Folder, pathSet=FOLDER)]), partialUpdates=True)
            version = ""
            options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=MAX_WAIT_SECONDS)
            while not self._stop.is_set():
                update = collector.WaitForUpdatesEx(version, options)
                if update is None:
                    continue  # the long poll timed out: nothing changed
                version = update.version
                changes = [c for fu in update.filterSet for c in fu.objectSet]
                # Folders first: a new group's folder comes in the same update as its VMs.
                for change in sorted(changes, key=lambda c: not isinstance(c.obj, vim.Folder)):
                    self._changed(inventory, change)
        finally:
            collector.Destroy()
            view.Destroy()

    def _changed(self, inventory: Inventory, change: Any) -> None:
        values = {c.name: _moid(c.val) for c in change.changeSet or []}
        if isinstance(change.obj, vim.Folder):
            inventory.folder(change.obj._moId, change.kind, values)
            return
        key = inventory.vm(change.obj._moId, change.kind, values)
        if key is not None:
            log.debug("vCenter change", extra={"vmgroup": "/".join(key),
                                               "vm": change.obj._moId, "kind": change.kind})
            self._enqueue(key)


def _moid(value: Any) -> Any:
    """A managed object reference as its id (what Inventory keeps); other values as they are."""
    return value._moId if isinstance(value, vim.ManagedEntity) else value
