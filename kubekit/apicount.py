"""Counting a client's API requests by verb and resource: what a controller costs the API server.

The classification is pure; `count_requests` is the thin edge that wraps a kubernetes client's
REST layer, through which every call (typed, custom-object, watch) passes once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def classify(method: str, url: str) -> tuple[str, str]:
    """(verb, resource) of a request, as the API server's audit log names them:
    ("patch", "vmgroups/status"), ("watch", "vmgroups"), ("create", "events")."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    # /api/v1/... or /apis/<group>/<version>/..., then namespaces/<ns>/ when namespaced
    rest = segments[2:] if segments[:1] == ["api"] else segments[3:]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    resource = rest[0] if rest else ""
    named = len(rest) > 1
    if len(rest) > 2:
        resource += "/" + rest[2]  # a subresource: status, scale
    if method.upper() == "GET":
        if "true" in parse_qs(parts.query).get("watch", []):
            return "watch", resource
        return ("get" if named else "list"), resource
    return VERBS.get(method.upper(), method.lower()), resource


def count_requests(api: Any, count: Callable[[str, str], None]) -> None:
    """Call `count(verb, resource)` for every request `api` (a kubernetes ApiClient) makes."""
    rest = api.rest_client
    request = rest.request

    def counted(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        count(*classify(method, url))
        return request(method, url, *args, **kwargs)

    rest.request = counted
