"""Events as client-go records them, through the real API server: identical ones aggregated
into one object with a count, writes rate limited per object with nothing lost."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kubernetes import client

from kubekit.events import EventRecorder

pytestmark = pytest.mark.kube


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _config_map(core: client.CoreV1Api, namespace: str) -> dict[str, Any]:
    created = core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=f"cm-{uuid.uuid4().hex[:6]}")))
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": created.metadata.name, "namespace": namespace,
                         "uid": created.metadata.uid}}


def _events(core: client.CoreV1Api, namespace: str, name: str) -> list[client.CoreV1Event]:
    return list(core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}").items)


def test_identical_events_are_one_event_with_a_count(api_client: client.ApiClient,
                                                     namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    obj = _config_map(core, namespace)
    recorder = EventRecorder(api_client, "test")
    for _ in range(9):
        recorder.record(obj, "Warning", "ReconcileFailed", "template 'x' not found")
    recorder.record(obj, "Warning", "ReconcileFailed", "another message")
    events = sorted(_events(core, namespace, obj["metadata"]["name"]), key=lambda e: e.count)
    assert [(e.message, e.count) for e in events] == [
        ("another message", 1), ("template 'x' not found", 9)]


def test_the_rate_limit_holds_writes_back_and_loses_no_count(api_client: client.ApiClient,
                                                             namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    obj = _config_map(core, namespace)
    clock = Clock()
    recorder = EventRecorder(api_client, "test", burst=3, refill_seconds=60, clock=clock)
    for _ in range(9):
        recorder.record(obj, "Warning", "ReconcileFailed", "same")
    (event,) = _events(core, namespace, obj["metadata"]["name"])
    assert event.count == 3  # the burst: one create, two bumps; six occurrences held back
    clock.now = 60.0  # one token later
    recorder.record(obj, "Warning", "ReconcileFailed", "same")
    (event,) = _events(core, namespace, obj["metadata"]["name"])
    assert event.count == 10  # the held-back ones are in the count
