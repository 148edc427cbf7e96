"""List + watch of one kind of object, for ever, in a daemon thread: the one loop every watch of
vmgroup-operator runs on (the controller's VmGroup informer, the webhook's initializer ConfigMaps).

Level-triggered: every (re)start lists everything, then watches from the list's resourceVersion
with bookmarks; a 410 Gone, a dropped connection or a watch that went silent (no event or
bookmark within the client-side timeout) all lead to a fresh list, after a capped backoff for
errors.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Self

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("vmgroup.watch")

SERVER_TIMEOUT = 240  # the API server ends each watch after this many seconds
SILENCE_TIMEOUT = SERVER_TIMEOUT + 60  # no byte for this long: the connection is dead


class ListWatcher:
    """List, then watch from the list's resourceVersion, in a daemon thread, for ever.

    A watch the server ends on time is resumed from the last resourceVersion seen (events and
    bookmarks); a 410 Gone relists at once; any other failure relists after a capped backoff;
    with `resync_seconds`, a fresh list is also made that often. Subclasses say how to list
    (returning the resourceVersion), what to watch, and what an event means.
    """

    what = "objects"

    def __init__(self, *, resync_seconds: float | None = None,
                 watch_seconds: float = SERVER_TIMEOUT) -> None:
        self._resync = resync_seconds
        self._watch_seconds = watch_seconds
        # Not a byte (event or bookmark) for this long: the connection is dead, whatever TCP
        # says. The server ends every watch after watch_seconds, so a live one is never hit.
        self._silence = watch_seconds * SILENCE_TIMEOUT / SERVER_TIMEOUT
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.what}",
                                        daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def list(self) -> str:
        raise NotImplementedError

    def watch_call(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """The list function to watch with, and its positional arguments."""
        raise NotImplementedError

    def handle(self, kind: str, obj: dict[str, Any]) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                version = self.list()
                backoff = 0.5
                self._watch(version)
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion is too old: list again, now
                    log.info("watch expired (410 Gone); relisting", extra={"watch": self.what})
                    continue
                log.warning("watch failed; retrying", extra={
                    "watch": self.what, "status": exc.status, "retry_in": backoff})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception as exc:  # connection refused or reset, timeouts
                log.warning("watch failed; retrying",
                            extra={"watch": self.what, "error": repr(exc), "retry_in": backoff})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _watch(self, version: str) -> None:
        """Watch until an error, the stop, or the resync (then return, for a fresh list)."""
        resync_at = time.monotonic() + self._resync if self._resync else None
        function, args = self.watch_call()
        while not self._stop.is_set():
            left = None if resync_at is None else resync_at - time.monotonic()
            if left is not None and left <= 0:
                return
            for event in watch.Watch().stream(
                    function, *args, resource_version=version, allow_watch_bookmarks=True,
                    timeout_seconds=int(max(1, min(self._watch_seconds,
                                                   left or self._watch_seconds))),
                    _request_timeout=(10, self._silence)):
                kind, obj = event["type"], event["raw_object"]
                if kind == "ERROR":
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if kind != "BOOKMARK":
                    self.handle(kind, obj)
                if self._stop.is_set():
                    return

