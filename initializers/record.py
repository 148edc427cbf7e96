"""What an injection added, recorded on the pod (template), so it can be upgraded or removed. Pure.

The record is the annotation `vm.codeconnect.vmworld.com/injected-initializers`, a compact JSON
object with one entry per injected initializer:

    {"logging-agent": {"v": "3f2a9c1e04ab",          # the initializer's version
                       "c": ["logging-agent"],        # containers it added
                       "i": ["log-setup"],            # init containers it added
                       "vol": ["varlog"],             # volumes it added
                       "m": {"app": ["/var/log"]},    # mounts it added, by the workload's container
                       "e": {"app": ["LOG_DIR"]}}}    # env it added, by the workload's container

(empty fields are left out; `"l": 1` marks an entry carried over from the older record of names
only, whose additions are not known). The version is a content hash of the initializer as
parsed, so an edit of its ConfigMap that changes nothing (a comment, key order) is not a new
version. What an initializer finds already there, identical, it does not add, and so does not
record: stripping takes away exactly what the record names, never anything of the workload's
own.

Each injected initializer also labels the Pod (template) and the workload
`initializer.vm.codeconnect.vmworld.com/<name>: <version>`, so one command lists who runs what:
`kubectl get deploy,sts,ds,pods -A -L initializer.vm.codeconnect.vmworld.com/logging-agent`.

Older records were a comma-separated list of names (versions unknown, additions unknown): such
an entry is read as version "" (so it is upgraded on the next update), and what it added is
taken to be what the initializer of that name adds today.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .spec import DNS_LABEL, Initializer, content_version

RECORD_ANNOTATION = "vm.codeconnect.vmworld.com/injected-initializers"
VERSION_LABEL_PREFIX = "initializer.vm.codeconnect.vmworld.com/"


def version_of(initializer: Initializer) -> str:
    """The initializer's version (set when it was parsed; computed for one made by hand)."""
    return initializer.version or content_version(initializer)


def version_label(name: str) -> str:
    return VERSION_LABEL_PREFIX + name


@dataclass(frozen=True)
class Added:
    """What one injection added to a pod spec."""

    version: str
    containers: tuple[str, ...] = ()
    init_containers: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    mounts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    env: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    legacy: bool = False  # read from a record of names only: what it added is not known

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": self.version}
        if self.legacy:  # kept as such: written back plain, it would read as "added nothing"
            out["l"] = 1
        for key, names in (("c", self.containers), ("i", self.init_containers),
                           ("vol", self.volumes)):
            if names:
                out[key] = list(names)
        for key, per_container in (("m", self.mounts), ("e", self.env)):
            if per_container:
                out[key] = {c: list(v) for c, v in per_container.items()}
        return out


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _per_container(value: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        return {}
    return {k: _strings(v) for k, v in value.items() if isinstance(k, str) and _strings(v)}


def parse_record(value: Any) -> dict[str, Added]:
    """The record an annotation value holds; anything unreadable counts as no record (the
    annotation is ours, but a user may have edited it: never a reason to refuse a workload)."""
    if not isinstance(value, str) or not value:
        return {}
    try:
        data = json.loads(value)
    except ValueError:  # the older format: names only
        return {n: Added("", legacy=True) for n in value.split(",") if DNS_LABEL.match(n)}
    if not isinstance(data, dict):
        return {}
    record = {}
    for name, entry in data.items():
        if isinstance(name, str) and isinstance(entry, dict):
            record[name] = Added(
                version=str(entry.get("v", "")), containers=_strings(entry.get("c")),
                init_containers=_strings(entry.get("i")), volumes=_strings(entry.get("vol")),
                mounts=_per_container(entry.get("m")), env=_per_container(entry.get("e")),
                legacy=entry.get("l") == 1)
    return record


def dump_record(record: Mapping[str, Added]) -> str:
    return json.dumps({name: added.to_json() for name, added in record.items()},
                      separators=(",", ":"))


def _names(items: Any, key: str = "name") -> list[Any]:
    return [i.get(key) for i in items or [] if isinstance(i, dict)]


def added_between(before: Mapping[str, Any], after: Mapping[str, Any], version: str,
                  own: set[Any]) -> Added:
    """What one merge added: items of `after` that `before` did not have, and the mounts and
    env it gave to the workload's own containers (`own`: their names)."""
    def new(key: str, field_key: str = "name") -> tuple[str, ...]:
        had = set(_names(before.get(key), field_key))
        return tuple(n for n in _names(after.get(key), field_key) if n not in had)

    def per_container(key: str, field_key: str) -> dict[str, tuple[str, ...]]:
        result = {}
        old = {c.get("name"): c for c in before.get("containers") or [] if isinstance(c, dict)}
        for container in after.get("containers") or []:
            name = container.get("name")
            if name not in own:
                continue
            had = set(_names((old.get(name) or {}).get(key), field_key))
            added = tuple(n for n in _names(container.get(key), field_key) if n not in had)
            if added:
                result[name] = added
        return result

    return Added(version, new("containers"), new("initContainers"), new("volumes"),
                 per_container("volumeMounts", "mountPath"), per_container("env", "name"))


def legacy_additions(initializer: Initializer) -> Added:
    """For a record of names only: what the initializer of that name adds today."""
    every = {"*": tuple(m["mountPath"] for m in initializer.volume_mounts)}
    return Added("", tuple(c["name"] for c in initializer.containers),
                 tuple(c["name"] for c in initializer.init_containers),
                 tuple(v["name"] for v in initializer.volumes),
                 every if every["*"] else {},
                 {"*": tuple(e["name"] for e in initializer.env)} if initializer.env else {},
                 legacy=True)


def _without(items: Any, names: tuple[str, ...], key: str = "name") -> Any:
    if not names or not isinstance(items, list):
        return items
    return [i for i in items if not (isinstance(i, dict) and i.get(key) in names)]


def strip(pod_spec: Mapping[str, Any], added: Added) -> dict[str, Any]:
    """`pod_spec` without what `added` names: a new dict sharing what it does not change.
    A list left empty is dropped, as Kubernetes treats an empty list and none alike."""
    spec = dict(pod_spec)
    for key, names in (("containers", added.containers),
                       ("initContainers", added.init_containers), ("volumes", added.volumes)):
        if names and key in spec:
            spec[key] = _without(spec[key], names)
    if (added.mounts or added.env) and isinstance(spec.get("containers"), list):
        containers = []
        for original in spec["containers"]:
            if not isinstance(original, dict):
                containers.append(original)
                continue
            name = original.get("name")
            name = name if isinstance(name, str) else ""
            mounts = added.mounts.get(name, ()) + added.mounts.get("*", ())
            env = added.env.get(name, ()) + added.env.get("*", ())
            container = original
            if mounts and "volumeMounts" in original:
                container = {**container, "volumeMounts": _without(
                    original["volumeMounts"], mounts, "mountPath")}
            if env and "env" in original:
                container = {**container, "env": _without(original["env"], env)}
            for key in ("volumeMounts", "env"):
                if container is not original and container.get(key) == []:
                    del container[key]
            containers.append(container)
        spec["containers"] = containers
    for key in ("containers", "initContainers", "volumes"):
        if spec.get(key) == [] and pod_spec.get(key) != []:
            del spec[key]
    return spec
