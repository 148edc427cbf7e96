"""Recording core/v1 Events about an object, as client-go's recorder does: the one place an
Event is built and written.

- Identical Events (same object, type, reason and message) are aggregated: the first is
  created, the next ones bump its `count` and `lastTimestamp` (`kubectl describe` shows
  "x9 over 20s") instead of making nine objects.
- Writes are rate limited per object (a token bucket: a burst, then one write per interval);
  what the limit holds back is counted, and the next write carries the count.
- An Event is worth a log line when it cannot be written, never a failed reconcile or
  admission. A `name` makes the first write idempotent (a second writer of the same Event gets
  409, which is fine): replicas or workers that may report the same thing pass one derived from
  what they report.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("vmgroup.events")

MAX_MESSAGE = 1024  # the API server's bound on an Event's message
TRACKED = 4096  # aggregated Events remembered; the oldest are forgotten first


@dataclass
class _Seen:
    name: str | None  # the Event object, once created
    count: int  # occurrences so far, written or not


class _Events:
    """The two core/v1 Event calls a recorder makes, sent the way every typed call of the client
    is (its auth, TLS, request counting and ApiException), but without client.CoreV1Api, whose
    import alone costs a process about 20 MB: it loads the models of the whole core API."""

    PATH = "/api/v1/namespaces/{namespace}/events"

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    def create(self, namespace: str, event: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", self.PATH, {"namespace": namespace}, event,
                          "application/json")

    def patch(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", self.PATH + "/{name}", {"namespace": namespace, "name": name},
                          patch, "application/merge-patch+json")

    def _call(self, method: str, path: str, params: dict[str, str], body: dict[str, Any],
              content_type: str) -> dict[str, Any]:
        request = self._api.param_serialize(
            method=method, resource_path=path, path_params=params, body=body,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            auth_settings=["BearerToken"])
        response = self._api.call_api(*request, _request_timeout=10)
        response.read()
        data: Any = self._api.response_deserialize(response, {"2XX": "object"}).data
        return data if isinstance(data, dict) else {}


class EventRecorder:
    def __init__(self, api: client.ApiClient, component: str, *, burst: int = 10,
                 refill_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._events = _Events(api)
        self._component = component
        self._burst, self._refill, self._clock = burst, refill_seconds, clock
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, ...], _Seen] = OrderedDict()
        self._tokens: dict[str, tuple[float, float]] = {}  # object -> (tokens, as of when)

    def _allowed(self, target: str) -> bool:
        """Take a token from `target`'s bucket (the caller holds the lock)."""
        now = self._clock()
        tokens, since = self._tokens.get(target, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - since) / self._refill)
        if tokens < 1:
            self._tokens[target] = (tokens, now)
            return False
        self._tokens[target] = (tokens - 1, now)
        return True

    def record(self, obj: Mapping[str, Any], kind: str, reason: str, message: str, *,
               name: str | None = None) -> None:
        """An Event of `kind` (Normal or Warning) about `obj`, a whole API object as a dict."""
        meta = obj["metadata"]
        message = message[:MAX_MESSAGE]
        target = f"{meta['namespace']}/{meta.get('uid') or meta['name']}"
        key = (target, kind, reason, message)
        with self._lock:
            seen = self._seen.get(key)
            if seen is None:
                seen = self._seen[key] = _Seen(None, 0)
                while len(self._seen) > TRACKED:
                    self._seen.popitem(last=False)
            self._seen.move_to_end(key)
            seen.count += 1
            if not self._allowed(target):
                return  # counted: the next write carries it
            event_name, count = seen.name, seen.count
        if event_name is not None and self._bump(meta["namespace"], event_name, count):
            return
        created = self._create(obj, kind, reason, message, count=count, name=name)
        if created is not None:
            with self._lock:
                seen.name = created

    def _bump(self, namespace: str, name: str, count: int) -> bool:
        """Bring the Event up to `count`; False when it is gone (expired: make a new one)."""
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            self._events.patch(namespace, name, {"count": count, "lastTimestamp": now})
        except ApiException as exc:
            if exc.status != 404:
                log.warning("could not record an Event", extra={"status": exc.status,
                                                                "event": name})
                return True  # not gone: retrying as a new Event would duplicate it
            return False
        return True

    def _create(self, obj: Mapping[str, Any], kind: str, reason: str, message: str, *,
                count: int, name: str | None) -> str | None:
        meta = obj["metadata"]
        namespace = meta["namespace"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        involved = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
                    "namespace": namespace, "uid": meta.get("uid"),
                    "resourceVersion": meta.get("resourceVersion")}
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"namespace": namespace,
                         **({"name": name} if name else {"generateName": f"{meta['name']}."})},
            "involvedObject": {k: v for k, v in involved.items() if v is not None},
            "reason": reason, "message": message, "type": kind, "count": count,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": self._component},
            "reportingComponent": self._component}
        try:
            created = self._events.create(namespace, event)
        except ApiException as exc:
            if exc.status != 409 or name is None:  # 409 on a named Event: reported already
                log.warning("could not record an Event", extra={
                    "status": exc.status, "reason": reason, "object": meta["name"]})
            return name if exc.status == 409 else None
        return str(created["metadata"]["name"])
