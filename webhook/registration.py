"""The webhook configurations that register us with the API server, as plain data.

One definition for every way of reaching the webhook: by URL (the local stack) or by Service
(the chart renders the same rules; tests/unit/test_registration.py keeps them equal).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from .vmgroup import GROUP, VERSION

NAME = "vmgroup-operator"
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
TIMEOUT_SECONDS = 5
MUTATE_PATH, VALIDATE_PATH = "/mutate/vmgroups", "/validate/vmgroups"

ClientConfig = Callable[[str], dict[str, Any]]


def url_client_config(base_url: str, ca_pem: bytes) -> ClientConfig:
    """Reach the webhook at `base_url` + path, trusting `ca_pem`."""
    bundle = base64.b64encode(ca_pem).decode()
    return lambda path: {"url": base_url.rstrip("/") + path, "caBundle": bundle}


def _webhook(name: str, path: str, resources: list[str], client_config: ClientConfig,
             excluded: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "clientConfig": client_config(path),
        "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [GROUP],
                   "apiVersions": [VERSION], "resources": resources, "scope": "Namespaced"}],
        "namespaceSelector": {"matchExpressions": [{
            "key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": excluded}]},
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "timeoutSeconds": TIMEOUT_SECONDS,
        "admissionReviewVersions": ["v1"],
    }


def vmgroup_configurations(client_config: ClientConfig, operator_namespace: str,
                           name: str = NAME) -> list[dict[str, Any]]:
    """The Mutating- and ValidatingWebhookConfiguration for VmGroups.

    DELETE is not intercepted. Validation also covers vmgroups/scale, or `kubectl scale`
    would bypass the replicas policy. The operator's own namespace and the system namespaces
    are never sent to the webhook.
    """
    excluded = [operator_namespace, *SYSTEM_NAMESPACES]
    mutating = _webhook(f"mutate.vmgroups.{GROUP}", MUTATE_PATH, ["vmgroups"], client_config,
                        excluded)
    mutating["reinvocationPolicy"] = "IfNeeded"  # defaults again if a later webhook unsets them
    validating = _webhook(f"validate.vmgroups.{GROUP}", VALIDATE_PATH,
                          ["vmgroups", "vmgroups/scale"], client_config, excluded)
    meta = {"name": name, "labels": {"app.kubernetes.io/name": NAME}}
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1",
         "kind": "MutatingWebhookConfiguration", "metadata": meta, "webhooks": [mutating]},
        {"apiVersion": "admissionregistration.k8s.io/v1",
         "kind": "ValidatingWebhookConfiguration", "metadata": meta, "webhooks": [validating]},
    ]
