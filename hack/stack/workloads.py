"""Initializer ConfigMaps and workloads for tests and benchmarks."""

from __future__ import annotations

from typing import Any

import yaml

LOGGING_AGENT: dict[str, Any] = {
    "containers": [{"name": "logging-agent", "image": "fluent/fluent-bit:3.1",
                    "volumeMounts": [{"name": "varlog", "mountPath": "/var/log"}]}],
    "initContainers": [{"name": "log-setup", "image": "busybox:1.36",
                        "command": ["sh", "-c", "mkdir -p /var/log/app"],
                        "volumeMounts": [{"name": "varlog", "mountPath": "/var/log"}]}],
    "volumes": [{"name": "varlog", "emptyDir": {}}],
    "volumeMounts": [{"name": "varlog", "mountPath": "/var/log"}],
    "env": [{"name": "LOG_DIR", "value": "/var/log"}],
}


def configmap(name: str, config: dict[str, Any] | str, namespace: str = "vmgroup-system",
              labels: dict[str, str] | None = None) -> dict[str, Any]:
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"config": text}}


def pod(name: str = "app", annotations: dict[str, str] | None = None,
        containers: int = 1) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": [
        {"name": f"app-{i}" if i else "app", "image": "nginx:1.27"} for i in range(containers)]}}


def deployment(name: str = "web", annotations: dict[str, str] | None = None,
               template_annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if annotations is not None:
        meta["annotations"] = annotations
    template = pod(annotations=template_annotations)
    template["metadata"] = {"labels": {"app": name}, **(
        {"annotations": template_annotations} if template_annotations else {})}
    del template["apiVersion"], template["kind"]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": template}}
