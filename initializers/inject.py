"""Merging initializers into a pod spec, and reading what a workload asks for. Pure.

Merge rules: containers and volumes are appended; init containers go first or last as the
initializer says; volume mounts and env are added to each of the workload's own containers.
Something the workload already has under the same name is fine when it holds all the
initializer gives (a re-applied manifest; what the API server defaulted in since does not
count) and a conflict otherwise: InjectionConflict, with a message naming both sides.

`reconcile` is the lifecycle (initializers.record): inject what is asked for and not there;
on a workload's update, strip what an initializer added when it is no longer asked for, when
its ConfigMap is gone, or before injecting its new version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .record import (
    RECORD_ANNOTATION,
    VERSION_LABEL_PREFIX,
    Added,
    added_between,
    dump_record,
    legacy_additions,
    parse_record,
    strip,
    version_label,
    version_of,
)
from .registry import Snapshot
from .spec import Initializer

DEFAULT_PREFIX = "initializer.kubernetes.io/"


class InjectionConflict(ValueError):
    """What an initializer adds clashes with what the workload already has."""


class BadRequest(ValueError):
    """An annotation asks for something that cannot be done (bad value, unknown name)."""


@dataclass(frozen=True)
class Requests:
    """What an object's annotations ask for."""

    wanted: tuple[str, ...]  # initializers to inject, in annotation order
    gone: tuple[str, ...] = ()  # asked for and injected before, but no longer defined


def requested(annotation_maps: Iterable[Mapping[str, Any] | None], prefix: str,
              known: Iterable[str], broken: Mapping[str, str] | None = None,
              recorded: Iterable[str] = ()) -> Requests:
    """The initializers asked for by any of `annotation_maps` (`<prefix><name>: "true"`).

    "false" means no; any other value, or a name no administrator defined (or whose ConfigMap
    is `broken`), is a BadRequest whose message says what is wrong and lists the known ones,
    except for a name injected before (`recorded`): a deleted initializer never blocks a
    rollout, it is reported as `gone`.
    """
    known = sorted(known)
    broken = broken or {}
    recorded = set(recorded)
    wanted: dict[str, None] = {}
    gone: dict[str, None] = {}
    problems = []
    for annotation_map in annotation_maps:
        if not isinstance(annotation_map, Mapping):
            continue  # absent (or, from a hand-made request, not a map): asks for nothing
        for key, value in annotation_map.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            if value == "false":
                continue
            if value != "true":
                problems.append(f'annotation {key}: value must be "true" or "false", '
                                f"got {value!r}")
            elif name in recorded and name not in known:
                gone[name] = None  # injected before: its broken or deleted ConfigMap is noted
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
    return Requests(tuple(wanted), tuple(gone))


def _contains(existing: Any, wanted: Any) -> bool:
    """Whether `existing` holds everything `wanted` says: what the API server defaulted into an
    injected item since (imagePullPolicy, terminationMessagePath...) does not make it another."""
    if isinstance(wanted, Mapping):
        return isinstance(existing, Mapping) and all(
            k in existing and _contains(existing[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(existing, list) and len(existing) == len(wanted) and all(
            _contains(e, w) for e, w in zip(existing, wanted, strict=True))
    return bool(existing == wanted)


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
            # A copy, so the workload never shares the registry's objects; through orjson, as
            # the initializers are JSON, at a tenth of copy.deepcopy's cost.
            new.append(orjson.loads(orjson.dumps(item)))
        elif not _contains(current, item):
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


@dataclass(frozen=True)
class Result:
    """A pod (template) after reconcile: its annotations, labels and spec (new dicts; what is
    unchanged is shared with the input), and warnings for the user."""

    annotations: dict[str, Any]
    labels: dict[str, Any]
    spec: dict[str, Any]
    record: dict[str, Added]  # what is injected now, as the annotation says
    stripped: bool  # something was taken out: lists may have shrunk
    warnings: tuple[str, ...]


def _strip_outdated(record: Mapping[str, Added], spec: dict[str, Any], asked: Requests,
                    snapshot: Snapshot) -> tuple[dict[str, Added], dict[str, Any], list[str]]:
    """(What stays recorded, the spec without what goes, warnings.) An initializer's parts go
    when it is no longer asked for, is gone, or has another version now (it is injected
    again); an unusable one (its ConfigMap being fixed) is left as it is."""
    kept: dict[str, Added] = {}
    warnings = []
    for name, entry in record.items():
        current = snapshot.usable.get(name)
        if name in snapshot.broken:
            kept[name] = entry
            warnings.append(f"initializer {name!r} is unusable ({snapshot.broken[name]}): "
                            "what it injected is left as it is")
            continue
        if name in asked.wanted and current is not None and entry.version == version_of(
                current):
            kept[name] = entry
            continue
        if entry.legacy and current is None:
            kept[name] = entry
            warnings.append(f"initializer {name!r} no longer exists, and what it injected "
                            "was not recorded: remove it by hand")
            continue
        spec = strip(spec, legacy_additions(current) if entry.legacy and current else entry)
        if name in asked.gone:
            warnings.append(f"initializer {name!r} no longer exists: what it injected was "
                            "removed")
    return kept, spec, warnings


def reconcile(annotations: Mapping[str, Any] | None, labels: Mapping[str, Any] | None,
              pod_spec: Mapping[str, Any], asked: Requests, snapshot: Snapshot, *,
              update: bool) -> Result:
    """Inject what `asked` wants and the record lacks; on a workload's `update`, first strip
    what the record says an initializer added when it is no longer asked for, when it is gone,
    or when its version changed (then it is injected again, current)."""
    new_annotations = dict(annotations) if isinstance(annotations, Mapping) else {}
    record = parse_record(new_annotations.get(RECORD_ANNOTATION))
    spec: dict[str, Any] = dict(pod_spec)
    kept: dict[str, Added] = dict(record)
    warnings: list[str] = []
    if update:
        kept, spec, warnings = _strip_outdated(record, spec, asked, snapshot)
    registry = snapshot.usable
    sidecars = {c for a in kept.values() for c in a.containers} | {
        c["name"] for n in asked.wanted if n in registry for c in registry[n].containers}
    for name in asked.wanted:
        if name in kept or name not in registry:
            continue
        before = spec
        spec = merge(spec, registry[name], sidecars)
        own = {c.get("name") for c in before.get("containers") or []
               if isinstance(c, dict)} - sidecars
        kept[name] = added_between(before, spec, version_of(registry[name]), own)
    if kept:
        new_annotations[RECORD_ANNOTATION] = dump_record(kept)
    else:
        new_annotations.pop(RECORD_ANNOTATION, None)
    return Result(new_annotations, with_version_labels(labels, kept), spec, kept,
                  stripped=len(kept) < len(record) or any(
                      kept.get(n) != record[n] for n in record if n in kept),
                  warnings=tuple(warnings))


def with_version_labels(labels: Mapping[str, Any] | None,
                        record: Mapping[str, Added]) -> dict[str, Any]:
    """`labels` with one version label per recorded initializer, and none for others."""
    new = {k: v for k, v in (labels or {}).items()
           if not (isinstance(k, str) and k.startswith(VERSION_LABEL_PREFIX))} \
        if isinstance(labels, Mapping) else {}
    for name, added in record.items():
        if added.version:
            new[version_label(name)] = added.version
    return new
