"""The webhook configurations that register us with the API server, as plain data.

One definition for every way of reaching the webhook: by URL (the local stack) or by Service
(the chart renders the same rules; test_webhook_rules_are_those_of_registration_py in
tests/e2e/test_chart.py keeps them equal).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from initializers.inject import DEFAULT_PREFIX
from initializers.record import RECORD_ANNOTATION
from vmgroup_api import GROUP, PLURAL, VERSION

NAME = "vmgroup-operator"
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
TIMEOUT_SECONDS = 5
MUTATE_PATH, VALIDATE_PATH, INJECT_PATH = "/mutate/vmgroups", "/validate/vmgroups", "/inject"
# A namespace or an object labelled so is never injected.
OPT_OUT_LABEL, OPT_OUT_VALUE = "initializer.kubernetes.io/injection", "disabled"

ClientConfig = Callable[[str], dict[str, Any]]


def url_client_config(base_url: str, ca_pem: bytes) -> ClientConfig:
    """Reach the webhook at `base_url` + path, trusting `ca_pem`."""
    bundle = base64.b64encode(ca_pem).decode()
    return lambda path: {"url": base_url.rstrip("/") + path, "caBundle": bundle}


def _not_in(key: str, values: list[str]) -> dict[str, Any]:
    return {"key": key, "operator": "NotIn", "values": values}


def _webhook(name: str, path: str, rules: list[dict[str, Any]], client_config: ClientConfig,
             excluded: list[str] | None = None, *, failure_policy: str = "Fail"
             ) -> dict[str, Any]:
    """One webhook; with `excluded`, never called for objects in those namespaces."""
    selector = {"namespaceSelector": {"matchExpressions": [
        _not_in("kubernetes.io/metadata.name", excluded)]}} if excluded else {}
    return {
        "name": name,
        "clientConfig": client_config(path),
        "rules": rules,
        **selector,
        "failurePolicy": failure_policy,
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "timeoutSeconds": TIMEOUT_SECONDS,
        "admissionReviewVersions": ["v1"],
    }


def _rule(group: str, version: str, resources: list[str],
          operations: tuple[str, ...] = ("CREATE", "UPDATE")) -> dict[str, Any]:
    return {"operations": list(operations), "apiGroups": [group], "apiVersions": [version],
            "resources": resources, "scope": "Namespaced"}


def _asks_for_initializers(path: str, prefix: str, *, or_key: str | None = None) -> str:
    """CEL: the annotations at `path` (a field path under `object`) name an initializer (or
    hold `or_key`)."""
    steps = path.split(".")
    present = " && ".join(f"has(object.{'.'.join(steps[:i + 1])})" for i in range(len(steps)))
    test = f"k.startsWith('{prefix}')" + (f" || k == '{or_key}'" if or_key else "")
    return f"{present} && object.{path}.exists(k, {test})"


def _injection_webhooks(client_config: ClientConfig, excluded: list[str], prefix: str,
                        failure_policy: str) -> list[dict[str, Any]]:
    """Pods (CREATE) and workloads (their pod templates), called only for objects whose
    annotations name an initializer (matchConditions), outside opted-out namespaces/objects."""
    opt_out = _not_in(OPT_OUT_LABEL, [OPT_OUT_VALUE])
    on_object = _asks_for_initializers("metadata.annotations", prefix)
    # A template that was injected is sent too: removing the request must remove what it added.
    on_template = _asks_for_initializers("spec.template.metadata.annotations", prefix,
                                         or_key=RECORD_ANNOTATION)
    pods = _webhook(f"inject.pods.{GROUP}", INJECT_PATH, [_rule("", "v1", ["pods"], ("CREATE",))],
                    client_config, excluded, failure_policy=failure_policy)
    pods["matchConditions"] = [{"name": "asks-for-initializers", "expression": on_object}]
    workloads = _webhook(
        f"inject.workloads.{GROUP}", INJECT_PATH,
        [_rule("apps", "v1", ["deployments", "statefulsets", "daemonsets", "replicasets"]),
         _rule("batch", "v1", ["jobs"], ("CREATE",))],
        client_config, excluded, failure_policy=failure_policy)
    workloads["matchConditions"] = [{"name": "asks-for-initializers",
                                     "expression": f"({on_object}) || ({on_template})"}]
    for hook in (pods, workloads):
        hook["namespaceSelector"]["matchExpressions"].append(opt_out)
        hook["objectSelector"] = {"matchExpressions": [opt_out]}
        hook["reinvocationPolicy"] = "IfNeeded"
    return [pods, workloads]


def configurations(client_config: ClientConfig, operator_namespace: str, *,
                   prefix: str = DEFAULT_PREFIX, injection_failure_policy: str = "Ignore",
                   name: str = NAME) -> list[dict[str, Any]]:
    """The Mutating- and ValidatingWebhookConfiguration of the operator.

    VmGroups: defaulting and validation, failurePolicy Fail; DELETE is not intercepted, and
    validation also covers vmgroups/scale, or `kubectl scale` would bypass the replicas policy.
    Injection: failurePolicy `injection_failure_policy` (an outage of ours must not stop every
    workload by default; an explicit refusal from us still refuses). The operator's namespace
    and the system namespaces are never sent to the injection webhooks (their Pods must start
    even when ours cannot). VmGroups of every namespace go to the VmGroup webhooks: no system
    component needs a VmGroup to start, and a policy that stops at a namespace is no policy.
    """
    excluded = [operator_namespace, *SYSTEM_NAMESPACES]
    mutating = _webhook(f"mutate.vmgroups.{GROUP}", MUTATE_PATH,
                        [_rule(GROUP, VERSION, [PLURAL])], client_config)
    mutating["reinvocationPolicy"] = "IfNeeded"  # defaults again if a later webhook unsets them
    validating = _webhook(f"validate.vmgroups.{GROUP}", VALIDATE_PATH,
                          [_rule(GROUP, VERSION, [PLURAL, f"{PLURAL}/scale"])],
                          client_config)
    injecting = _injection_webhooks(client_config, excluded, prefix, injection_failure_policy)
    def meta() -> dict[str, Any]:  # a copy each: changing one must not change the other
        return {"name": name, "labels": {"app.kubernetes.io/name": NAME}}

    return [
        {"apiVersion": "admissionregistration.k8s.io/v1",
         "kind": "MutatingWebhookConfiguration", "metadata": meta(),
         "webhooks": [mutating, *injecting]},
        {"apiVersion": "admissionregistration.k8s.io/v1",
         "kind": "ValidatingWebhookConfiguration", "metadata": meta(), "webhooks": [validating]},
    ]
