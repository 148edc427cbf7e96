"""The chart's values: every value the schema declares is described, and every values file under
the chart's ci/ directory (the ones chart-testing lints and installs) passes `helm lint --strict`,
which checks it, merged over values.yaml, against values.schema.json and renders every template.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from hack.stack import REPO, binary

CHART = REPO / "charts" / "vmgroup-operator"
SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
CI_FILES = sorted((CHART / "ci").glob("*-values.yaml"))

# Keywords whose sub-schemas declare a value of their own: these must be described.
_NAMED = ("properties", "patternProperties")
_SINGLE = ("items", "additionalProperties", "additionalItems", "contains")
# Keywords whose sub-schemas only add rules to values declared under _NAMED/_SINGLE next to them
# (checked by test_conditional_rules_only_constrain_declared_properties); not walked for
# descriptions. propertyNames constrains keys, not values.
_OVERLAYS = ("if", "then", "else", "not")
_OVERLAY_LISTS = ("allOf", "anyOf", "oneOf")


def declared(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every sub-schema of `schema` that declares a value, with its dotted path (`*` for the
    entries of a map or list), at every depth."""
    for keyword in _NAMED:
        for name, sub in schema.get(keyword, {}).items():
            yield from _declared_one(sub, f"{path}.{name}" if path else name)
    for keyword in _SINGLE:
        subs = schema.get(keyword)
        # `additionalProperties: false` and friends declare nothing; a list is a tuple of items.
        for sub in subs if isinstance(subs, list) else [subs]:
            if isinstance(sub, Mapping):
                yield from _declared_one(sub, f"{path}.*" if path else "*")


def _declared_one(sub: Any, path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    assert isinstance(sub, Mapping), f"{path}: a schema must be an object, got {sub!r}"
    yield path, sub
    yield from declared(sub, path)


def undescribed(schema: Mapping[str, Any]) -> list[str]:
    """Paths of the declared values of `schema` with no (or a blank) description."""
    return [path for path, sub in declared(schema)
            if not isinstance(sub.get("description"), str) or not sub["description"].strip()]


def overlays(schema: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The conditional sub-schemas directly attached to `schema` (if/then/else/not/allOf/...)."""
    for keyword in _OVERLAYS:
        if isinstance(schema.get(keyword), Mapping):
            yield schema[keyword]
    for keyword in _OVERLAY_LISTS:
        yield from (sub for sub in schema.get(keyword, []) if isinstance(sub, Mapping))


def stray_overlay_properties(schema: Mapping[str, Any]) -> list[str]:
    """Properties that a conditional sub-schema names (in `properties` or `required`) but the
    schema it is attached to does not declare, at every depth: rules on them would silently
    never apply, and a description there would go unchecked."""
    stray: list[str] = []

    def check(target: Mapping[str, Any], overlay: Mapping[str, Any], path: str) -> None:
        known = target.get("properties", {})
        for name in [*overlay.get("properties", {}), *overlay.get("required", [])]:
            if name not in known:
                stray.append(f"{path}.{name}" if path else name)
        for name, rule in overlay.get("properties", {}).items():
            if name in known and isinstance(rule, Mapping):
                check(known[name], rule, f"{path}.{name}" if path else name)
        for nested in overlays(overlay):
            check(target, nested, path)

    for path, sub in [("", schema), *declared(schema)]:
        for overlay in overlays(sub):
            check(sub, overlay, path)
    return sorted(set(stray))


def test_every_value_of_the_schema_is_described() -> None:
    assert undescribed(SCHEMA) == []


def test_the_walk_reaches_every_depth() -> None:
    paths = {path for path, _ in declared(SCHEMA)}
    assert {"image", "controller.vcenter.credentials.password", "imagePullSecrets.*.name",
            "initializers.configs.*.config", "webhook.excludedNamespaces.*",
            "webhook.nodeSelector.*", "controller.podAnnotations.*"} <= paths


def test_a_value_without_a_description_is_found_at_any_depth() -> None:
    schema = {
        "type": "object",
        "properties": {
            "described": {"type": "string", "description": "Fine."},
            "blank": {"type": "string", "description": "  "},
            "outer": {
                "description": "Fine.",
                "type": "object",
                "properties": {"inner": {"type": "integer"}},
                "additionalProperties": {"type": "object", "properties": {
                    "deep": {"type": "array", "description": "Fine.",
                             "items": {"type": "string"}}}},
            },
            "closed": {"type": "object", "description": "Fine.", "additionalProperties": False},
        },
    }
    assert undescribed(schema) == ["blank", "outer.inner", "outer.*", "outer.*.deep.*"]


def test_conditional_rules_only_constrain_declared_properties() -> None:
    assert stray_overlay_properties(SCHEMA) == []
    typo = {"properties": {"server": {"type": "string"}},
            "if": {"properties": {"enabled": {"const": True}}},
            "then": {"properties": {"sever": {"minLength": 1}}}}
    assert stray_overlay_properties(typo) == ["enabled", "sever"]


def test_there_are_ci_values_files() -> None:
    assert CI_FILES, f"no {CHART / 'ci'}/*-values.yaml"


@pytest.mark.parametrize("values", CI_FILES, ids=[f.name for f in CI_FILES])
def test_each_ci_values_file_says_what_it_exercises(values: Path) -> None:
    first = values.read_text().splitlines()[0]
    assert first.startswith("# "), first
    assert len(first) > 10, first


@pytest.mark.parametrize("values", CI_FILES, ids=[f.name for f in CI_FILES])
def test_each_ci_values_file_passes_helm_lint_strict(values: Path, tmp_path: Path) -> None:
    # HOME: no cache, config or plugins of the user's own helm.
    result = subprocess.run([binary("helm"), "lint", "--strict", str(CHART), "-f", str(values)],
                            capture_output=True, text=True, timeout=120, check=False,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
