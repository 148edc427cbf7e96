"""List + watch every VmGroup into a local cache and put the keys of changed ones on the queue.

Only keys travel on the queue; the reconciler reads the object from the cache when it gets to
it, so it always sees the newest version the watch brought, and a lost event costs nothing once
the next one, a relist or the periodic resync arrives. A 410 Gone (our resourceVersion is too
old) or a dropped connection leads to a relist; a watch that went silent (no event or bookmark
within the client-side timeout) is dropped and re-established (kubekit.watch.ListWatcher).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client

from kubekit.queue import WorkQueue
from kubekit.watch import SERVER_TIMEOUT, ListWatcher
from vmgroup_api import FINALIZER, GROUP, PLURAL, VERSION

Key = tuple[str, str]  # (namespace, name)


def key_of(obj: dict[str, Any]) -> Key | None:
    meta = obj.get("metadata") or {}
    if meta.get("namespace") and meta.get("name"):
        return meta["namespace"], meta["name"]
    return None


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the cache keeps it: without metadata.managedFields, which the controller
    never reads and which grows with every writer of every field (a third of a VmGroup's size
    once its status has been written; as client-go's TransformStripManagedFields)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


def _version(obj: dict[str, Any]) -> int | None:
    version = (obj.get("metadata") or {}).get("resourceVersion")
    return int(version) if isinstance(version, str) and version.isdigit() else None


def newer(candidate: dict[str, Any], current: dict[str, Any] | None) -> bool:
    """Whether `candidate` may replace `current` in the cache. resourceVersions are opaque by
    contract, but the API server's are etcd revisions: compared as numbers when both are, so
    an older copy (a write's response overtaken by the watch) never replaces a newer one."""
    if current is None:
        return True
    a, b = _version(candidate), _version(current)
    return a is None or b is None or a >= b


def wants_work(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether a change asks the controller to act: spec (the generation), deletion, or our
    finalizer taken away. A status change or our finalizer added (our own writes coming back
    through the watch, perhaps before the write's own answer) does not: the controller made
    them in the pass that is running, and vCenter's changes come through the feed."""
    def what_counts(obj: dict[str, Any]) -> tuple[Any, ...]:
        meta = obj.get("metadata") or {}
        return meta.get("generation"), meta.get("deletionTimestamp"), meta.get("uid")

    def ours(obj: dict[str, Any]) -> bool:
        return FINALIZER in ((obj.get("metadata") or {}).get("finalizers") or [])

    return what_counts(before) != what_counts(after) or (ours(before) and not ours(after))


class VmGroupInformer(ListWatcher):
    what = "vmgroups"

    def __init__(self, api: client.ApiClient, queue: WorkQueue[Key], *,
                 resync_seconds: float = 600.0, watch_seconds: float = SERVER_TIMEOUT) -> None:
        super().__init__(resync_seconds=resync_seconds, watch_seconds=watch_seconds)
        self._custom = client.CustomObjectsApi(api)
        self._queue = queue
        self._lock = threading.Lock()
        self._objects: dict[Key, dict[str, Any]] = {}
        self.synced = threading.Event()

    def __len__(self) -> int:
        return len(self._objects)

    def get(self, key: Key) -> dict[str, Any] | None:
        """The newest copy of a VmGroup seen (None: there is none). Never modify it."""
        with self._lock:
            return self._objects.get(key)

    def put(self, obj: dict[str, Any]) -> None:
        """Remember what one of our own writes returned, unless the watch brought newer."""
        if (key := key_of(obj)) is not None:
            with self._lock:
                if newer(obj, self._objects.get(key)):
                    self._objects[key] = slim(obj)

    def list(self) -> str:
        listing: Any = self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL,
                                                               _request_timeout=60)
        objects = {key: slim(item) for item in listing.get("items", [])
                   if (key := key_of(item)) is not None}
        with self._lock:
            gone = self._objects.keys() - objects.keys()
            self._objects = objects
        for key in [*objects, *gone]:  # level-triggered: every group is looked at after a list
            self._queue.add(key)
        self.synced.set()
        return str(listing["metadata"]["resourceVersion"])

    def watch_call(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self._custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL)

    def handle(self, kind: str, obj: dict[str, Any]) -> None:
        if (key := key_of(obj)) is None:
            return
        with self._lock:
            before = self._objects.get(key)
            if kind == "DELETED":
                self._objects.pop(key, None)
            elif newer(obj, before):
                self._objects[key] = slim(obj)
        if kind == "DELETED" or before is None or wants_work(before, obj):
            self._queue.add(key)
