"""Keeps the initializer Registry in step with the ConfigMaps of the operator's namespace.

Each gunicorn worker runs one of these in a daemon thread, on kubekit's list + watch. An unusable
ConfigMap is logged, counted, and reported as a Warning Event on the ConfigMap, and never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from kubernetes import client

from initializers.registry import Registry
from kubekit.events import EventRecorder
from kubekit.watch import ListWatcher

log = logging.getLogger("vmgroup.initializers")


class ConfigMapWatcher(ListWatcher):
    what = "initializers"

    def __init__(self, core: client.CoreV1Api, namespace: str, registry: Registry, *,
                 on_change: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self._core = core
        self._events = EventRecorder(core.api_client, "vmgroup-webhook")
        self._namespace = namespace
        self._registry = registry
        self._on_change = on_change

    def list(self) -> str:
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

    def watch_call(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self._core.list_namespaced_config_map, (self._namespace,)

    def handle(self, kind: str, obj: dict[str, Any]) -> None:
        if kind in ("ADDED", "MODIFIED"):
            if problem := self._registry.upsert(obj):
                self._report(obj, problem)
        elif kind == "DELETED":
            self._registry.delete(obj)
        self._on_change()

    def _report(self, configmap: dict[str, Any], problem: str) -> None:
        meta = configmap["metadata"]
        log.error("unusable initializer ConfigMap",
                  extra={"configmap": meta["name"], "problem": problem})
        # One Event per ConfigMap version and problem, whichever worker reports it first.
        digest = hashlib.sha256(f"{meta.get('resourceVersion')}/{problem}".encode()).hexdigest()
        self._events.record({"apiVersion": "v1", "kind": "ConfigMap", **configmap},
                            "Warning", "InvalidInitializer", problem,
                            name=f"{meta['name']}.{digest[:16]}")
