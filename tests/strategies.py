"""Hypothesis strategies for admission requests: random, malformed and almost-right ones."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from hack.stack.reviews import review, vmgroup

json_values = st.recursive(
    # What JSON (and so the API server) can carry: no NaN, no Infinity.
    st.none() | st.booleans() | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children,
                                                                      max_size=4),
    max_leaves=12)
specs = st.fixed_dictionaries({}, optional={
    "cpu": json_values | st.integers(-5, 40), "memory": json_values | st.integers(-5, 100),
    "replicas": json_values | st.integers(-5, 100), "template": json_values | st.text()})
metadata = st.dictionaries(
    st.sampled_from(["name", "namespace", "generateName", "deletionTimestamp", "finalizers"]),
    json_values | st.text(max_size=90))
groups = st.builds(lambda name, ns, spec: vmgroup(name, ns, **spec),
                   st.text(max_size=90), st.text(max_size=70), specs) | st.builds(
    lambda meta, spec: {**vmgroup(**spec), "metadata": meta}, metadata, specs)
reviews = st.builds(
    lambda obj, old, op, dry: review(obj, old=old, operation=op, dry_run=dry),
    groups | json_values.filter(lambda v: isinstance(v, dict)) | st.none(),
    groups | st.none(), st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"]),
    st.booleans())


def _mangle(body: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    target = body
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target, dict) else {}
    if isinstance(target, dict):
        target[path[-1]] = value
    return body


bodies = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | reviews.map(lambda r: json.dumps(r).encode())
    | st.builds(_mangle, reviews,
                st.sampled_from([["request"], ["request", "uid"], ["request", "kind"],
                                 ["request", "object"], ["request", "dryRun"], ["apiVersion"],
                                 ["request", "object", "metadata"],
                                 ["request", "object", "spec"]]).map(list),
                json_values).map(lambda r: json.dumps(r).encode())
)
