"""Recording core/v1 Events about an object: the one place an Event is built and written.

An Event is worth a log line when it cannot be written, never a failed reconcile or admission.
A `name` makes the write idempotent (a second writer of the same Event gets 409, which is fine):
replicas or workers that may report the same thing pass one derived from what they report.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("vmgroup.events")

MAX_MESSAGE = 1024  # the API server's bound on an Event's message


class EventRecorder:
    def __init__(self, core: client.CoreV1Api, component: str) -> None:
        self._core = core
        self._component = component

    def record(self, obj: Mapping[str, Any], kind: str, reason: str, message: str, *,
               name: str | None = None) -> None:
        """An Event of `kind` (Normal or Warning) about `obj`, a whole API object as a dict."""
        meta = obj["metadata"]
        namespace = meta["namespace"]
        now = datetime.datetime.now(datetime.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace,
                                         generate_name=None if name else f"{meta['name']}."),
            involved_object=client.V1ObjectReference(
                api_version=obj["apiVersion"], kind=obj["kind"], name=meta["name"],
                namespace=namespace, uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion")),
            reason=reason, message=message[:MAX_MESSAGE], type=kind, count=1,
            first_timestamp=now, last_timestamp=now,
            source=client.V1EventSource(component=self._component),
            reporting_component=self._component)
        try:
            self._core.create_namespaced_event(namespace, event, _request_timeout=10)
        except ApiException as exc:
            if exc.status != 409 or name is None:  # 409 on a named Event: reported already
                log.warning("could not record an Event", extra={
                    "status": exc.status, "reason": reason, "object": meta["name"]})
