"""Merging initializers into a pod spec, and reading what a workload asks for. Pure.

Merge rules: containers and volumes are appended; init containers go first or last as the
initializer says; volume mounts and env are added to each of the workload's own containers.
Something the workload already has under the same name is fine when identical (a re-applied
manifest) and a conflict otherwise: InjectionConflict, with a message naming both sides.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
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


def _merge_by(key: str, existing: list[Any], additions: Sequence[Mapping[str, Any]],
              clash: Callable[[Mapping[str, Any]], str], *, first: bool = False) -> list[Any]:
    """`existing` plus the `additions` it lacks, matched on `key`. An addition already there
    with the same content is kept once; with other content it is an InjectionConflict, worded
    by `clash`. Existing items stay the very same objects."""
    present = {item.get(key): item for item in existing if isinstance(item, dict)}
    new = []
    for item in additions:
        current = present.get(item[key])
        if current is None:
            new.append(copy.deepcopy(dict(item)))
        elif current != item:
            raise InjectionConflict(clash(item))
    return [*new, *existing] if first else [*existing, *new]


def _named(existing: list[Any], additions: Sequence[Mapping[str, Any]], what: str,
           source: str, *, first: bool = False) -> list[Any]:
    return _merge_by("name", existing, additions, lambda item: (
        f"initializer {source!r} adds {what} {item['name']!r}, but the workload already has "
        f"a different {what} of that name"), first=first)


def _mount_clash(source: str, container: Any) -> Callable[[Mapping[str, Any]], str]:
    return lambda mount: (f"initializer {source!r} mounts {mount['mountPath']!r} in container "
                          f"{container!r}, which already mounts something else there")


def merge(pod_spec: Mapping[str, Any], initializer: Initializer,
          sidecars: Iterable[str] = ()) -> dict[str, Any]:
    """`pod_spec` with `initializer` merged in: a new dict, and the input is not changed.

    What is not changed is shared with the input rather than copied (a pod spec can be large,
    and this runs on every admission). Mounts and env go to the workload's own containers, not
    to the sidecars this or another initializer (named in `sidecars`) brought.
    """
    spec = dict(pod_spec)
    name = initializer.name
    not_own = {*sidecars, *(c["name"] for c in initializer.containers)}
    if initializer.env or initializer.volume_mounts:
        containers = []
        for original in spec.get("containers") or []:
            container = original
            if isinstance(original, dict) and original.get("name") not in not_own:
                container = dict(original)  # one of the workload's own: changed, so copied
                if initializer.env:
                    container["env"] = _named(list(original.get("env") or []),
                                              initializer.env, "env variable", name)
                if initializer.volume_mounts:
                    container["volumeMounts"] = _merge_by(
                        "mountPath", list(original.get("volumeMounts") or []),
                        initializer.volume_mounts, _mount_clash(name, original.get("name")))
            containers.append(container)
        if "containers" in spec:
            spec["containers"] = containers
    for key, items, what, first in (
            ("containers", initializer.containers, "container", False),
            ("initContainers", initializer.init_containers, "init container",
             initializer.init_containers_first),
            ("volumes", initializer.volumes, "volume", False)):
        if items:
            _no_clash_across_kinds(spec, key, items, what, name)
            spec[key] = _named(list(spec.get(key) or []), items, what, name, first=first)
    return spec


_OTHER_KIND = {"containers": ("initContainers", "an init container"),
               "initContainers": ("containers", "a container")}


def _no_clash_across_kinds(spec: Mapping[str, Any], key: str,
                           items: Sequence[Mapping[str, Any]], what: str, source: str) -> None:
    """Containers and init containers share one namespace of names: the API server refuses a
    Pod with a container and an init container of one name, so the clash is refused here,
    with a message that says which initializer caused it."""
    if key not in _OTHER_KIND:
        return
    other_key, other_what = _OTHER_KIND[key]
    taken = {c.get("name") for c in spec.get(other_key) or [] if isinstance(c, dict)}
    for item in items:
        if item["name"] in taken:
            raise InjectionConflict(
                f"initializer {source!r} adds {what} {item['name']!r}, but the workload "
                f"already has {other_what} of that name")


def inject(annotations: Mapping[str, Any] | None, pod_spec: Mapping[str, Any],
           names: Sequence[str], registry: Mapping[str, Initializer]
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(annotations, pod spec) with `names` injected and recorded in the status annotation."""
    new_annotations = dict(annotations) if isinstance(annotations, Mapping) else {}
    recorded = [n for n in str(new_annotations.get(STATUS_ANNOTATION, "")).split(",") if n]
    sidecars = {c["name"] for n in [*recorded, *names] if n in registry
                for c in registry[n].containers}
    spec = dict(pod_spec)
    for name in names:
        spec = merge(spec, registry[name], sidecars)
    new_annotations[STATUS_ANNOTATION] = ",".join(
        [*recorded, *(n for n in names if n not in recorded)])
    return new_annotations, spec
