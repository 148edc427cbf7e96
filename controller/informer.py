"""List + watch every VmGroup and put the keys of changed ones on the work queue.

Only keys travel: the reconciler reads the object afresh, so a lost event costs nothing once
the next one, a relist or the periodic resync arrives. A 410 Gone (our resourceVersion is too
old) or a dropped connection leads to a relist; a watch that went silent (no event or bookmark
within the client-side timeout) is dropped and re-established.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client

from initializers.watch import ListWatcher
from webhook.vmgroup import GROUP, PLURAL, VERSION

from .queue import WorkQueue

Key = tuple[str, str]  # (namespace, name)


class VmGroupInformer(ListWatcher):
    what = "vmgroups"

    def __init__(self, api: client.ApiClient, queue: WorkQueue[Key], *,
                 resync_seconds: float = 600.0) -> None:
        super().__init__(resync_seconds=resync_seconds)
        self._custom = client.CustomObjectsApi(api)
        self._queue = queue
        self.synced = threading.Event()

    def _enqueue(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if meta.get("namespace") and meta.get("name"):
            self._queue.add((meta["namespace"], meta["name"]))

    def list(self) -> str:
        listing: Any = self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL,
                                                               _request_timeout=60)
        for item in listing.get("items", []):
            self._enqueue(item)  # level-triggered: every group is looked at after a list
        self.synced.set()
        return str(listing["metadata"]["resourceVersion"])

    def watch_call(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self._custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL)

    def handle(self, kind: str, obj: dict[str, Any]) -> None:
        self._enqueue(obj)
