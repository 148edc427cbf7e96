"""Merging initializers into a pod spec, and reading what a workload asks for. Pure.

Merge rules: containers and volumes are appended; init containers go first or last as the
initializer says; volume mounts and env are added to each of the workload's own containers.
Something the workload already has under the same name is fine when identical (a re-applied
manifest) and a conflict otherwise: InjectionConflict, with a message naming both sides.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .spec import Initializer

DEFAULT_PREFIX = "initializer.kubernetes.io/"
# Records what was injected, so nothing is injected twice. Outside the request prefix, so it is
# never read as a request for an initializer called "status".
STATUS_ANNOTATION = "vm.codeconnect.vmworld.com/injected-initializers"


class InjectionConflict(ValueError):
    """What an initializer adds clashes with what the workload already has."""


class BadRequest(ValueError):
    """An annotation asks for something that cannot be done (bad value, unknown name)."""


@dataclass(frozen=True)
class Requests:
    """What an object's annotations ask for."""

    wanted: tuple[str, ...]  # initializers to inject, in annotation order
    done: frozenset[str]  # already injected (status annotation)


def requested(annotation_maps: Iterable[Mapping[str, Any] | None], prefix: str,
              known: Iterable[str], broken: Mapping[str, str] | None = None) -> Requests:
    """The initializers asked for by any of `annotation_maps` (`<prefix><name>: "true"`).

    "false" means no; any other value, or a name no administrator defined (or whose ConfigMap
    is `broken`), is a BadRequest whose message says what is wrong and lists the known ones.
    """
    known = sorted(known)
    broken = broken or {}
    wanted: dict[str, None] = {}
    done: set[str] = set()
    problems = []
    for annotation_map in annotation_maps:
        if not isinstance(annotation_map, Mapping):
            continue  # absent (or, from a hand-made request, not a map): asks for nothing
        for key, value in annotation_map.items():
            if key == STATUS_ANNOTATION and isinstance(value, str):
                done.update(n for n in value.split(",") if n)
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            if value == "false":
                continue
            if value != "true":
                problems.append(f'annotation {key}: value must be "true" or "false", '
                                f"got {value!r}")
            elif name in broken:
                problems.append(f"annotation {key}: initializer {name!r} is defined but "
                                f"unusable: {broken[name]}")
            elif name not in known:
                problems.append(f"annotation {key}: no initializer named {name!r}")
            else:
                wanted[name] = None
    if problems:
        listing = ", ".join(known) if known else "none are defined"
        raise BadRequest("; ".join(problems) + f" (known initializers: {listing})")
    return Requests(tuple(wanted), frozenset(done))


def _merge_named(existing: list[Any], additions: Sequence[Mapping[str, Any]], what: str,
                 source: str, *, first: bool = False) -> list[Any]:
    by_name = {item.get("name"): item for item in existing if isinstance(item, dict)}
    new = []
    for item in additions:
        current = by_name.get(item["name"])
        if current is None:
            new.append(copy.deepcopy(dict(item)))
        elif current != item:
            raise InjectionConflict(
                f"initializer {source!r} adds {what} {item['name']!r}, but the workload "
                f"already has a different {what} of that name")
    return [*new, *existing] if first else [*existing, *new]


def _merge_mounts(container: dict[str, Any], mounts: Sequence[Mapping[str, Any]],
                  source: str) -> None:
    existing = container.setdefault("volumeMounts", [])
    for mount in mounts:
        clash = next((m for m in existing if isinstance(m, dict)
                      and m.get("mountPath") == mount["mountPath"]), None)
        if clash is None:
            existing.append(copy.deepcopy(dict(mount)))
        elif clash != mount:
            raise InjectionConflict(
                f"initializer {source!r} mounts {mount['mountPath']!r} in container "
                f"{container.get('name')!r}, which already mounts something else there")


def merge(pod_spec: Mapping[str, Any], initializer: Initializer,
          sidecars: Iterable[str] = ()) -> dict[str, Any]:
    """`pod_spec` with `initializer` merged in (a new dict; the input is not changed).

    Mounts and env go to the workload's own containers: not to the sidecars this or another
    initializer (named in `sidecars`) brought.
    """
    spec = copy.deepcopy(dict(pod_spec))
    name = initializer.name
    not_own = {*sidecars, *(c["name"] for c in initializer.containers)}
    own = [c for c in spec.get("containers") or []
           if isinstance(c, dict) and c.get("name") not in not_own]
    for container in own:  # the workload's own containers, before sidecars join them
        if initializer.env:
            container["env"] = _merge_named(container.get("env") or [], initializer.env,
                                            "env variable", name)
        if initializer.volume_mounts:
            _merge_mounts(container, initializer.volume_mounts, name)
    for key, items, what, first in (
            ("containers", initializer.containers, "container", False),
            ("initContainers", initializer.init_containers, "init container",
             initializer.init_containers_first),
            ("volumes", initializer.volumes, "volume", False)):
        if items:
            spec[key] = _merge_named(list(spec.get(key) or []), items, what, name, first=first)
    return spec


def inject(meta: Mapping[str, Any], pod_spec: Mapping[str, Any], names: Sequence[str],
           registry: Mapping[str, Initializer]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, pod spec) with `names` injected and recorded in the status annotation."""
    annotations = meta.get("annotations")
    annotations = dict(annotations) if isinstance(annotations, dict) else {}
    recorded = [n for n in str(annotations.get(STATUS_ANNOTATION, "")).split(",") if n]
    sidecars = {c["name"] for n in [*recorded, *names] if n in registry
                for c in registry[n].containers}
    spec = dict(pod_spec)
    for name in names:
        spec = merge(spec, registry[name], sidecars)
    new_meta = copy.deepcopy(dict(meta))
    annotations[STATUS_ANNOTATION] = ",".join([*recorded, *(n for n in names
                                                             if n not in recorded)])
    new_meta["annotations"] = annotations
    return new_meta, spec
