"""Keeps a Registry in step with the initializer ConfigMaps of one namespace (list + watch).

Each gunicorn worker runs one of these in a daemon thread. Level-triggered: every (re)start
lists everything, then watches from the list's resourceVersion with bookmarks; a 410 Gone, a
dropped connection or a watch that went silent (no event or bookmark within the client-side
timeout) all lead to a fresh list, after a capped backoff for errors. An unusable ConfigMap is
logged, counted, and reported as a Warning Event on the ConfigMap, and never used.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from .registry import Registry

log = logging.getLogger("vmgroup.initializers")

SERVER_TIMEOUT = 240  # the API server ends each watch after this many seconds
SILENCE_TIMEOUT = SERVER_TIMEOUT + 60  # no byte for this long: the connection is dead


class ConfigMapWatcher:
    def __init__(self, core: client.CoreV1Api, namespace: str, registry: Registry, *,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self._core = core
        self._namespace = namespace
        self._registry = registry
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="initializer-watch",
                                        daemon=True)

    def start(self) -> ConfigMapWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                version = self._list()
                backoff = 0.5
                self._watch(version)
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion is too old: list again, now
                    log.info("initializer watch expired (410 Gone); relisting")
                    continue
                log.warning("initializer watch failed; retrying", extra={
                    "status": exc.status, "reason": exc.reason, "retry_in": backoff})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception as exc:  # network errors, timeouts: relist after a backoff
                log.warning("initializer watch failed; retrying",
                            extra={"error": repr(exc), "retry_in": backoff})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _list(self) -> str:
        # Raw JSON: the registry works on plain dicts, and model objects would cost a copy.
        response: Any = self._core.list_namespaced_config_map(
            self._namespace, _preload_content=False, _request_timeout=30)
        listing = json.loads(response.data)
        problems = self._registry.replace(listing.get("items", []))
        for item in listing.get("items", []):
            if item["metadata"]["name"] in problems:
                self._report(item, problems[item["metadata"]["name"]])
        self._on_change()
        return str(listing["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> None:
        """Watch from `version` until an error; a watch the server ends on time is resumed
        from the last resourceVersion seen (events and bookmarks), without a new list."""
        while not self._stop.is_set():
            for event in watch.Watch().stream(
                    self._core.list_namespaced_config_map, self._namespace,
                    resource_version=version, allow_watch_bookmarks=True,
                    timeout_seconds=SERVER_TIMEOUT, _request_timeout=(10, SILENCE_TIMEOUT)):
                kind, obj = event["type"], event["raw_object"]
                if kind == "ERROR":
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                version = obj.get("metadata", {}).get("resourceVersion") or version
                if kind in ("ADDED", "MODIFIED"):
                    if problem := self._registry.upsert(obj):
                        self._report(obj, problem)
                elif kind == "DELETED":
                    self._registry.delete(obj)
                if kind != "BOOKMARK":
                    self._on_change()
                if self._stop.is_set():
                    return

    def _report(self, configmap: dict[str, Any], problem: str) -> None:
        meta = configmap["metadata"]
        log.error("unusable initializer ConfigMap",
                  extra={"configmap": meta["name"], "problem": problem})
        # One Event per ConfigMap version and problem, whichever worker reports it first.
        digest = hashlib.sha256(f"{meta.get('resourceVersion')}/{problem}".encode()).hexdigest()
        now = datetime.datetime.now(datetime.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{meta['name']}.{digest[:16]}",
                                         namespace=self._namespace),
            involved_object=client.V1ObjectReference(
                kind="ConfigMap", api_version="v1", name=meta["name"],
                namespace=self._namespace, uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion")),
            reason="InvalidInitializer", type="Warning", message=problem[:1024],
            source=client.V1EventSource(component="vmgroup-webhook"),
            reporting_component="vmgroup-webhook", first_timestamp=now, last_timestamp=now,
            count=1)
        try:
            self._core.create_namespaced_event(self._namespace, event, _request_timeout=10)
        except ApiException as exc:
            if exc.status != 409:  # 409: another worker reported it already
                log.warning("could not record an Event", extra={"status": exc.status})
