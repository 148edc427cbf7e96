"""The initializer format: what an administrator writes in a ConfigMap, parsed and checked.

An initializer is a ConfigMap in the operator's namespace, named `<name>-initializer` (the old
Kubernetes Initializers convention) or labelled `initializer.kubernetes.io/name: <name>`, whose
`data.config` is YAML:

    containers:       [...]   # sidecars appended to the workload's containers
    initContainers:   [...]   # init containers, placed first or last (initContainerPosition)
    volumes:          [...]   # volumes appended to the pod
    volumeMounts:     [...]   # mounts added to each of the workload's own containers
    env:              [...]   # variables added to each of the workload's own containers
    initContainerPosition: first | last   # default: last

Pure: no I/O. An invalid config raises InvalidInitializer with a message naming what is wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

NAME_SUFFIX = "-initializer"
NAME_LABEL = "initializer.kubernetes.io/name"
CONFIG_KEY = "config"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_KEYS = {"containers", "initContainers", "volumes", "volumeMounts", "env",
         "initContainerPosition"}


class InvalidInitializer(ValueError):
    """A ConfigMap that claims to be an initializer but cannot be used."""


Item = dict[str, Any]


@dataclass(frozen=True)
class Initializer:
    name: str
    containers: tuple[Item, ...] = ()
    init_containers: tuple[Item, ...] = ()
    volumes: tuple[Item, ...] = ()
    volume_mounts: tuple[Item, ...] = ()
    env: tuple[Item, ...] = ()
    init_containers_first: bool = False
    version: str = ""  # content_version(), set once by parse(): it is asked on every admission


def content_version(initializer: Initializer) -> str:
    """A hash of what the initializer injects, not of its ConfigMap's text: an edit that
    changes nothing (a comment, the key order) is no new version."""
    content = {"containers": initializer.containers, "initContainers":
               initializer.init_containers, "volumes": initializer.volumes,
               "volumeMounts": initializer.volume_mounts, "env": initializer.env,
               "initContainersFirst": initializer.init_containers_first}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def initializer_name(configmap: Mapping[str, Any]) -> str | None:
    """The initializer a ConfigMap defines, or None when it is not an initializer."""
    meta = configmap.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(NAME_LABEL):
        return str(labels[NAME_LABEL])
    name = str(meta.get("name", ""))
    if name.endswith(NAME_SUFFIX) and len(name) > len(NAME_SUFFIX):
        return name[: -len(NAME_SUFFIX)]
    return None


def _items(config: Mapping[str, Any], key: str, required: tuple[str, ...]) -> tuple[Item, ...]:
    value = config.get(key, [])
    if not isinstance(value, list):
        raise InvalidInitializer(f"{key} must be a list")
    seen: set[str] = set()
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise InvalidInitializer(f"{where} must be a mapping")
        for field in required:
            if not isinstance(item.get(field), str) or not item[field]:
                raise InvalidInitializer(f"{where}.{field} must be a non-empty string")
        name = item.get("name")
        if key != "volumeMounts" and name in seen:
            raise InvalidInitializer(f"{where}.name {name!r} appears twice")
        seen.add(str(name))
    return tuple(value)


def _check_names(items: tuple[Item, ...], key: str, pattern: re.Pattern[str]) -> None:
    for i, item in enumerate(items):
        if not pattern.match(item["name"]):
            raise InvalidInitializer(f"{key}[{i}].name {item['name']!r} is not a valid name")


def parse(name: str, configmap: Mapping[str, Any]) -> Initializer:
    """The initializer `name` defined by `configmap`; InvalidInitializer when it is unusable."""
    if not DNS_LABEL.match(name):
        raise InvalidInitializer(f"initializer name {name!r} must be a DNS label")
    raw = (configmap.get("data") or {}).get(CONFIG_KEY)
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInitializer(f"data.{CONFIG_KEY} is missing or empty")
    try:
        config = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise InvalidInitializer(f"data.{CONFIG_KEY} is not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidInitializer(f"data.{CONFIG_KEY} must be a YAML mapping")
    if unknown := sorted(set(config) - _KEYS):
        raise InvalidInitializer(f"unknown keys {unknown}; allowed: {sorted(_KEYS)}")
    position = config.get("initContainerPosition", "last")
    if position not in ("first", "last"):
        raise InvalidInitializer(f'initContainerPosition must be "first" or "last", '
                                 f"got {position!r}")
    initializer = Initializer(
        name=name,
        containers=_items(config, "containers", ("name", "image")),
        init_containers=_items(config, "initContainers", ("name", "image")),
        volumes=_items(config, "volumes", ("name",)),
        volume_mounts=_items(config, "volumeMounts", ("name", "mountPath")),
        env=_items(config, "env", ("name",)),
        init_containers_first=position == "first",
    )
    _check_names(initializer.containers, "containers", DNS_LABEL)
    _check_names(initializer.init_containers, "initContainers", DNS_LABEL)
    _check_names(initializer.volumes, "volumes", DNS_LABEL)
    _check_names(initializer.env, "env", _ENV_NAME)
    volumes = {v["name"] for v in initializer.volumes}
    for i, mount in enumerate(initializer.volume_mounts):
        if mount["name"] not in volumes:
            raise InvalidInitializer(f"volumeMounts[{i}] mounts volume {mount['name']!r}, "
                                     "which this initializer does not define")
    if not (initializer.containers or initializer.init_containers or initializer.volumes
            or initializer.env):
        raise InvalidInitializer("injects nothing: give containers, initContainers, volumes "
                                 "or env")
    return dataclasses.replace(initializer, version=content_version(initializer))
