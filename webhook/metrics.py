"""Prometheus metrics that stay correct under several gunicorn workers.

With PROMETHEUS_MULTIPROC_DIR set (vmgroup-webhook sets it before any worker starts), every
worker writes its samples to files there and /metrics adds them up, whichever worker answers.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter(
    "vmgroup_webhook_requests_total",
    "Admission requests by endpoint and outcome (allowed, patched, denied, bad_request, error).",
    ["endpoint", "outcome"],
)
DURATION = Histogram(
    "vmgroup_webhook_request_duration_seconds",
    "Time to answer one admission request, from the body read to the response built.",
    ["endpoint"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)

INITIALIZERS = Gauge(
    "vmgroup_webhook_initializers",
    "Initializers defined in the operator's namespace, by state (usable, broken).",
    ["state"],
    multiprocess_mode="livemax",  # every worker watches the same ConfigMaps
)


def render() -> tuple[bytes, str]:
    """The exposition of every worker's samples, and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
