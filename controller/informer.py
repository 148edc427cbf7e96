"""List + watch every VmGroup and put the keys of changed ones on the work queue.

Only keys travel: the reconciler reads the object afresh, so a lost event costs nothing once
the next one, a relist or the periodic resync arrives. A 410 Gone (our resourceVersion is too
old) or a dropped connection leads to a relist; a watch that went silent (no event or bookmark
within the client-side timeout) is dropped and re-established.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from webhook.vmgroup import GROUP, PLURAL, VERSION

from .queue import WorkQueue

log = logging.getLogger("vmgroup.controller.informer")

Key = tuple[str, str]  # (namespace, name)
SERVER_TIMEOUT = 240
SILENCE_TIMEOUT = SERVER_TIMEOUT + 60


class VmGroupInformer:
    def __init__(self, api: client.ApiClient, queue: WorkQueue[Key], *,
                 resync_seconds: float = 600.0) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._queue = queue
        self._resync = resync_seconds
        self._stop = threading.Event()
        self.synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vmgroup-informer", daemon=True)

    def start(self) -> VmGroupInformer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _enqueue(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if meta.get("namespace") and meta.get("name"):
            self._queue.add((meta["namespace"], meta["name"]))

    def _list(self) -> str:
        listing: Any = self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL,
                                                               _request_timeout=60)
        for item in listing.get("items", []):
            self._enqueue(item)  # level-triggered: every group is looked at after a list
        self.synced.set()
        return str(listing["metadata"]["resourceVersion"])

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                version = self._list()
                backoff = 0.5
                self._watch(version, time.monotonic() + self._resync)
            except ApiException as exc:
                if exc.status == 410:
                    log.info("VmGroup watch expired (410 Gone); relisting")
                    continue
                log.warning("VmGroup watch failed; retrying",
                            extra={"status": exc.status, "retry_in": backoff})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception as exc:  # connection refused or reset, timeouts
                log.warning("VmGroup watch failed; retrying",
                            extra={"error": repr(exc), "retry_in": backoff})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _watch(self, version: str, resync_at: float) -> None:
        """Watch until the resync is due (then return, for a relist) or an error."""
        while not self._stop.is_set() and time.monotonic() < resync_at:
            timeout = max(1, min(SERVER_TIMEOUT, int(resync_at - time.monotonic())))
            for event in watch.Watch().stream(
                    self._custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                    resource_version=version, allow_watch_bookmarks=True,
                    timeout_seconds=timeout, _request_timeout=(10, SILENCE_TIMEOUT)):
                kind, obj = event["type"], event["raw_object"]
                if kind == "ERROR":
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if kind != "BOOKMARK":
                    self._enqueue(obj)
                if self._stop.is_set():
                    return
