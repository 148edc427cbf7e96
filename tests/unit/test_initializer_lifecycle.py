"""Initializers with a lifecycle: the versioned record, upgrade and removal on a workload's
update, a deleted initializer, API-server defaulting, hand edits. Pure: the admission handler
with a registry, no network."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hack.stack.reviews import patched, review
from hack.stack.workloads import LOGGING_AGENT, configmap, deployment
from initializers.record import (
    RECORD_ANNOTATION,
    Added,
    dump_record,
    parse_record,
    strip,
    version_label,
    version_of,
)
from initializers.registry import Registry
from initializers.spec import parse
from webhook.admission import parse_review
from webhook.injection import InjectionSettings, handle

PREFIX = "initializer.kubernetes.io/"
ASK = {f"{PREFIX}logging-agent": "true"}
KIND = {"group": "apps", "version": "v1", "kind": "Deployment"}
SETTINGS = InjectionSettings(PREFIX, frozenset())
V1 = copy.deepcopy(LOGGING_AGENT)
V2 = copy.deepcopy(LOGGING_AGENT)
V2["containers"][0]["image"] = "fluent/fluent-bit:3.2"
V2["env"] = [{"name": "LOG_DIR", "value": "/var/log"}, {"name": "LOG_LEVEL", "value": "info"}]


def _registry(*configs: dict[str, Any]) -> Registry:
    registry = Registry()
    registry.replace([configmap("logging-agent-initializer", c) for c in configs])
    return registry


def _admit(obj: dict[str, Any], registry: Registry, operation: str = "CREATE",
           kind: dict[str, str] = KIND) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the object after the webhook's patch, the response)."""
    body = review(obj, operation=operation, old=obj if operation == "UPDATE" else None,
                  kind=kind)
    response = handle(parse_review(json.dumps(body)), registry.snapshot(), SETTINGS)["response"]
    assert response["allowed"] is True, response
    return patched(obj, response), response


def _template(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj["spec"]["template"])


def _sidecar_images(obj: dict[str, Any]) -> list[str]:
    return [c["image"] for c in _template(obj)["spec"]["containers"] if c["name"] != "app"]


def _version(config: dict[str, Any]) -> str:
    return version_of(parse("logging-agent", configmap("logging-agent-initializer", config)))


# --- the record ---------------------------------------------------------------------------

def test_the_version_is_of_the_content_not_of_the_configmaps_text() -> None:
    reordered = configmap("logging-agent-initializer", "# a comment\n" + json.dumps(
        dict(reversed(list(V1.items())))))
    assert version_of(parse("logging-agent", reordered)) == _version(V1)
    assert _version(V2) != _version(V1)
    assert len(_version(V1)) == 12


def test_the_record_says_exactly_what_was_added_and_labels_carry_the_version() -> None:
    injected, _ = _admit(deployment(annotations=ASK), _registry(V1))
    template = _template(injected)
    (entry,) = parse_record(template["metadata"]["annotations"][RECORD_ANNOTATION]).values()
    assert entry == Added(_version(V1), containers=("logging-agent",),
                          init_containers=("log-setup",), volumes=("varlog",),
                          mounts={"app": ("/var/log",)}, env={"app": ("LOG_DIR",)})
    label = version_label("logging-agent")
    assert template["metadata"]["labels"][label] == _version(V1)
    assert injected["metadata"]["labels"][label] == _version(V1)  # `kubectl get deploy -L`
    assert json.loads(dump_record({"x": entry})) == {"x": {
        "v": _version(V1), "c": ["logging-agent"], "i": ["log-setup"], "vol": ["varlog"],
        "m": {"app": ["/var/log"]}, "e": {"app": ["LOG_DIR"]}}}


def test_what_the_workload_had_already_is_not_recorded_as_added() -> None:
    own = deployment(annotations=ASK)
    own["spec"]["template"]["spec"]["volumes"] = [{"name": "varlog", "emptyDir": {}}]
    injected, _ = _admit(own, _registry(V1))
    (entry,) = parse_record(_template(injected)["metadata"]["annotations"][
        RECORD_ANNOTATION]).values()
    assert entry.volumes == ()  # the workload's own: never stripped


@pytest.mark.parametrize("value", ["", "{", "[1]", '{"x": 5}', 7])
def test_an_unreadable_record_is_no_record(value: Any) -> None:
    assert parse_record(value) == {}


# --- upgrade, removal ---------------------------------------------------------------------

def test_an_update_upgrades_to_the_current_version_and_leaves_no_trace_of_the_old() -> None:
    injected, _ = _admit(deployment(annotations=ASK), _registry(V1))
    assert _sidecar_images(injected) == ["fluent/fluent-bit:3.1"]
    upgraded, _ = _admit(injected, _registry(V2), "UPDATE")
    assert _sidecar_images(upgraded) == ["fluent/fluent-bit:3.2"]
    (app, _sidecar) = _template(upgraded)["spec"]["containers"]
    assert [e["name"] for e in app["env"]] == ["LOG_DIR", "LOG_LEVEL"]
    assert [m["mountPath"] for m in app["volumeMounts"]] == ["/var/log"]
    assert [v["name"] for v in _template(upgraded)["spec"]["volumes"]] == ["varlog"]
    assert _template(upgraded)["metadata"]["labels"][version_label("logging-agent")] == \
        _version(V2)
    # and the next update changes nothing
    assert "patch" not in _admit(upgraded, _registry(V2), "UPDATE")[1]


@pytest.mark.parametrize("opt_out", ["false", None])
def test_opting_out_strips_what_was_injected_and_the_record(opt_out: str | None) -> None:
    original = deployment(annotations=ASK)
    injected, _ = _admit(original, _registry(V1))
    if opt_out is None:
        del injected["metadata"]["annotations"][f"{PREFIX}logging-agent"]
    else:
        injected["metadata"]["annotations"][f"{PREFIX}logging-agent"] = opt_out
    stripped, _ = _admit(injected, _registry(V1), "UPDATE")
    assert stripped["spec"]["template"]["spec"] == original["spec"]["template"]["spec"]
    assert RECORD_ANNOTATION not in stripped["spec"]["template"]["metadata"].get(
        "annotations", {})
    assert version_label("logging-agent") not in stripped["metadata"].get("labels", {})
    assert version_label("logging-agent") not in stripped["spec"]["template"]["metadata"][
        "labels"]


def test_a_deleted_initializer_is_stripped_with_a_warning_not_refused() -> None:
    original = deployment(annotations=ASK)
    injected, _ = _admit(original, _registry(V1))
    gone = _registry()  # its ConfigMap was deleted; the workload still asks for it
    stripped, response = _admit(injected, gone, "UPDATE")
    assert stripped["spec"]["template"]["spec"] == original["spec"]["template"]["spec"]
    assert response["warnings"] == [
        "initializer 'logging-agent' no longer exists: what it injected was removed"]
    # a new workload asking for it is refused, as before: nothing was injected there
    body = review(deployment(name="new", annotations=ASK), kind=KIND)
    refused = handle(parse_review(json.dumps(body)), gone.snapshot(), SETTINGS)["response"]
    assert refused["allowed"] is False


def test_what_the_api_server_defaulted_in_is_no_conflict() -> None:
    """The cause of the 409 when a user removed the record: the API server had defaulted
    imagePullPolicy & co. into the injected sidecar, which then no longer equalled the
    initializer's. What holds all the initializer gives is the same sidecar."""
    injected, _ = _admit(deployment(annotations=ASK), _registry(V1))
    template = injected["spec"]["template"]
    for container in template["spec"]["containers"] + template["spec"]["initContainers"]:
        container.update(imagePullPolicy="IfNotPresent", terminationMessagePath="/dev/x",
                         resources={})
    del template["metadata"]["annotations"][RECORD_ANNOTATION]
    again, response = _admit(injected, _registry(V1), "UPDATE")
    assert response["allowed"] is True
    assert [c["name"] for c in again["spec"]["template"]["spec"]["containers"]] == [
        "app", "logging-agent"]


def test_injected_parts_edited_by_hand_are_replaced_on_upgrade() -> None:
    """The rule: what the record names is the initializer's. A hand edit of an injected part
    lasts until the next upgrade or removal, which strips it by name."""
    injected, _ = _admit(deployment(annotations=ASK), _registry(V1))
    sidecar = injected["spec"]["template"]["spec"]["containers"][1]
    sidecar["image"] = "hand/edited:1"
    upgraded, _ = _admit(injected, _registry(V2), "UPDATE")
    assert _sidecar_images(upgraded) == ["fluent/fluent-bit:3.2"]


def test_a_users_container_named_like_an_injected_volume_is_never_touched() -> None:
    own = deployment(annotations=ASK)
    own["spec"]["template"]["spec"]["containers"].append({"name": "varlog", "image": "u:1"})
    injected, _ = _admit(own, _registry(V1))
    stripped_cfg = copy.deepcopy(injected)
    stripped_cfg["metadata"]["annotations"][f"{PREFIX}logging-agent"] = "false"
    stripped, _ = _admit(stripped_cfg, _registry(V1), "UPDATE")
    names = [c["name"] for c in stripped["spec"]["template"]["spec"]["containers"]]
    assert names == ["app", "varlog"]


def test_a_replicaset_owned_by_a_deployment_follows_its_owner() -> None:
    """Its template must stay its Deployment's, or the Deployment would not know it."""
    owned = deployment(annotations=ASK)
    owned["kind"] = "ReplicaSet"
    owned["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "web", "uid": "u", "controller": True}]
    kind = {"group": "apps", "version": "v1", "kind": "ReplicaSet"}
    assert "patch" not in _admit(owned, _registry(V1), kind=kind)[1]


def test_a_legacy_record_of_names_is_upgraded_to_a_versioned_one() -> None:
    injected, _ = _admit(deployment(annotations=ASK), _registry(V1))
    template = injected["spec"]["template"]
    template["metadata"]["annotations"][RECORD_ANNOTATION] = "logging-agent"
    upgraded, _ = _admit(injected, _registry(V2), "UPDATE")
    assert _sidecar_images(upgraded) == ["fluent/fluent-bit:3.2"]
    record = parse_record(upgraded["spec"]["template"]["metadata"]["annotations"][
        RECORD_ANNOTATION])
    assert record["logging-agent"].version == _version(V2)


def test_a_legacy_name_of_a_deleted_initializer_stays_recorded_as_such() -> None:
    """Carried into the JSON record, a legacy name keeps its mark: read back without it, it
    would say "added nothing" and be dropped by the next update (found by hypothesis)."""
    workload = deployment(annotations=ASK)
    workload["spec"]["template"]["metadata"]["annotations"] = {RECORD_ANNOTATION: "gone"}
    first, _ = _admit(workload, _registry(V1), "UPDATE")
    record = parse_record(first["spec"]["template"]["metadata"]["annotations"][
        RECORD_ANNOTATION])
    assert record["gone"].legacy
    again = _admit(first, _registry(V1), "UPDATE")[1]
    assert "patch" not in again  # idempotent


# --- strip-then-inject is inject, for any workload and any edit ----------------------------

own_names = st.sampled_from(["app", "web", "db"])
own_containers = st.lists(st.builds(
    lambda name, env, mounts: {"name": name, "image": "u:1",
                               **({"env": env} if env else {}),
                               **({"volumeMounts": mounts} if mounts else {})},
    own_names,
    st.lists(st.fixed_dictionaries({"name": st.sampled_from(["A", "B"]),
                                    "value": st.text(max_size=2)}), max_size=2,
             unique_by=lambda e: e["name"]),
    st.lists(st.fixed_dictionaries({"name": st.just("data"),
                                    "mountPath": st.sampled_from(["/data", "/cache"])}),
             max_size=2, unique_by=lambda m: m["mountPath"])),
    min_size=1, max_size=3, unique_by=lambda c: c["name"])
initializer_configs = st.builds(
    lambda image, env, mount, init, vol: {
        "containers": [{"name": "agent", "image": image}],
        **({"initContainers": [{"name": "setup", "image": image}]} if init else {}),
        **({"volumes": [{"name": vol, "emptyDir": {}}],
            "volumeMounts": [{"name": vol, "mountPath": mount}]} if mount else {}),
        **({"env": [{"name": n, "value": "v"} for n in env]} if env else {})},
    st.sampled_from(["agent:1", "agent:2"]),
    st.lists(st.sampled_from(["X", "Y"]), unique=True, max_size=2),
    st.sampled_from([None, "/logs", "/var/agent"]), st.booleans(),
    st.sampled_from(["agent-vol", "agent-data"]))


def _workload(containers: list[dict[str, Any]]) -> dict[str, Any]:
    app = deployment(annotations={f"{PREFIX}agent": "true"})
    app["spec"]["template"]["spec"] = {"containers": containers,
                                       "volumes": [{"name": "data", "emptyDir": {}}]}
    return app


def _agent_registry(config: dict[str, Any]) -> Registry:
    registry = Registry()
    registry.replace([configmap("agent-initializer", config)])
    return registry


@settings(max_examples=300, deadline=None)
@given(containers=own_containers, old=initializer_configs, new=initializer_configs)
def test_upgrading_is_injecting_the_current_version_into_the_original(
        containers: list[dict[str, Any]], old: dict[str, Any], new: dict[str, Any]) -> None:
    original = _workload(containers)
    first, _ = _admit(original, _agent_registry(old))
    upgraded, _ = _admit(first, _agent_registry(new), "UPDATE")
    direct, _ = _admit(original, _agent_registry(new))
    assert upgraded["spec"]["template"] == direct["spec"]["template"]
    assert upgraded["metadata"].get("labels") == direct["metadata"].get("labels")
    # and opting out gives back the original, exactly
    upgraded["metadata"]["annotations"][f"{PREFIX}agent"] = "false"
    removed, _ = _admit(upgraded, _agent_registry(new), "UPDATE")
    assert removed["spec"]["template"]["spec"] == original["spec"]["template"]["spec"]


def test_strip_of_nothing_is_the_same_spec() -> None:
    spec = {"containers": [{"name": "app", "env": [{"name": "A"}]}]}
    assert strip(spec, Added("v")) == spec
