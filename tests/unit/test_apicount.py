"""API requests named as the API server's audit log names them."""

from __future__ import annotations

import pytest

from kubekit.apicount import classify

BASE = "https://10.0.0.1:6443"
GROUP = "/apis/vm.codeconnect.vmworld.com/v1alpha1"


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("PATCH", f"{GROUP}/namespaces/a/vmgroups/vg-1/status", ("patch", "vmgroups/status")),
    ("PATCH", f"{GROUP}/namespaces/a/vmgroups/vg-1", ("patch", "vmgroups")),
    ("GET", f"{GROUP}/vmgroups?resourceVersion=0", ("list", "vmgroups")),
    ("GET", f"{GROUP}/vmgroups?allowWatchBookmarks=true&watch=true", ("watch", "vmgroups")),
    ("GET", f"{GROUP}/namespaces/a/vmgroups/vg-1", ("get", "vmgroups")),
    ("POST", "/api/v1/namespaces/a/events", ("create", "events")),
    ("PATCH", "/api/v1/namespaces/a/events/vg-1.1872", ("patch", "events")),
    ("PUT", "/apis/coordination.k8s.io/v1/namespaces/d/leases/vmgroup-controller",
     ("update", "leases")),
    ("GET", "/api/v1/namespaces", ("list", "namespaces")),  # cluster-scoped
    ("GET", "/api/v1/namespaces/a", ("get", "namespaces")),
    ("DELETE", "/api/v1/namespaces/a/pods/p", ("delete", "pods")),
])
def test_requests_are_named_by_verb_and_resource(method: str, path: str,
                                                 expected: tuple[str, str]) -> None:
    assert classify(method, BASE + path) == expected
