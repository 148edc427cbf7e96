"""vCenter's property-change feed: which groups' VMs changed, so drift is repaired in seconds.

One long poll (WaitForUpdatesEx) on a property collector of its own, over every VM under the
base folder: a VM powered off, resized, created or destroyed behind the controller's back (or
by it) puts its group's key on the work queue. The VM's folder says which group it is in
(`<base>/<namespace>/<group>`); the reconcile then reads everything afresh. No polling: while
nothing changes, the only traffic is this long poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from pyVmomi import vim, vmodl

from .vsphere import VCenterConfig, VSphere

log = logging.getLogger("vmgroup.controller.feed")

Key = tuple[str, str]
WATCHED = ["parent", "runtime.powerState", "config.hardware.numCPU", "config.hardware.memoryMB"]
MAX_WAIT_SECONDS = 60  # a long poll answers at least this often, so a dead link is noticed


class VCenterFeed:
    def __init__(self, config: VCenterConfig, enqueue: Callable[[Key], None]) -> None:
        self._config = config
        self._enqueue = enqueue
        self._stop = threading.Event()
        self._keys: dict[str, Key] = {}  # VM moref -> group, to place a VM that is gone
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
        content = session.content
        view = content.viewManager.CreateContainerView(base, [vim.VirtualMachine], True)
        collector = content.propertyCollector.CreatePropertyCollector()
        try:
            collector.CreateFilter(vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[vmodl.query.PropertyCollector.ObjectSpec(
                    obj=view, skip=True, selectSet=[vmodl.query.PropertyCollector.TraversalSpec(
                        name="view", path="view", skip=False, type=vim.view.ContainerView)])],
                propSet=[vmodl.query.PropertyCollector.PropertySpec(
                    type=vim.VirtualMachine, pathSet=WATCHED)]), partialUpdates=True)
            version = ""
            options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=MAX_WAIT_SECONDS)
            while not self._stop.is_set():
                update = collector.WaitForUpdatesEx(version, options)
                if update is None:
                    continue  # the long poll timed out: nothing changed
                version = update.version
                for filter_update in update.filterSet:
                    for change in filter_update.objectSet:
                        self._changed(change, base)
        finally:
            collector.Destroy()
            view.Destroy()

    def _changed(self, change: Any, base: Any) -> None:
        moref = change.obj._moId
        if change.kind == "leave":
            key = self._keys.pop(moref, None)
        else:
            parent = next((c.val for c in change.changeSet if c.name == "parent"), None)
            key = self._key(parent, base) if parent is not None else self._keys.get(moref)
            if key is not None:
                self._keys[moref] = key
        if key is not None:
            log.debug("vCenter change", extra={"vmgroup": "/".join(key), "vm": moref,
                                               "kind": change.kind})
            self._enqueue(key)

    @staticmethod
    def _key(folder: Any, base: Any) -> Key | None:
        """(namespace, group) of a VM in `<base>/<namespace>/<group>`, else None."""
        namespace = folder.parent
        if namespace is None or namespace.parent is None or namespace.parent != base:
            return None
        return namespace.name, folder.name
