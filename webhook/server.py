"""gunicorn serving the webhook: TLS that rotates without a restart, keep-alive, graceful stop.

The API server keeps connections to a webhook open and reuses them, so the worker class is
gthread (the sync worker closes every connection). gunicorn wraps each accepted connection
with `ssl_context(...)`; ours hands back one cached context per worker and rebuilds it only
when the certificate or key file changed, so cert-manager or a re-issued Secret is picked up
on the next connection.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from initializers.inject import DEFAULT_PREFIX
from initializers.registry import Registry
from kubekit import logs
from kubekit.cli import kube_client

from .admission import DEFAULT_MAX_REQUEST_BYTES
from .registration import SYSTEM_NAMESPACES
from .vmgroup import Policy

log = logging.getLogger("vmgroup.webhook")


@dataclass(frozen=True)
class ServerSettings:
    cert_file: str
    key_file: str
    bind: str = "0.0.0.0:8443"  # the API server calls in from outside the Pod
    workers: int = 2
    threads: int = 4
    # Longer than the API server's client keeps idle connections (90 s), so it is always the
    # client that closes one: never a request racing our close.
    keepalive: int = 120
    graceful_timeout: int = 20
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    log_level: str = "info"
    policy: Policy = field(default_factory=Policy)
    # Initializers: the namespace whose ConfigMaps define them (None: no watch, none known).
    namespace: str | None = None
    kubeconfig: str | None = None  # None: the Pod's own service account
    initializer_prefix: str = DEFAULT_PREFIX


class ReloadingTLSContext:
    """One SSLContext, rebuilt when the cert or key file changes on disk.

    A half-written rotation (new cert, old key) fails to load: the old context keeps serving
    and the next connection tries again.
    """

    def __init__(self, cert_file: str, key_file: str) -> None:
        self._files = (cert_file, key_file)
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self._context: ssl.SSLContext | None = None

    def _current_stamp(self) -> tuple[int, ...]:
        stats = [os.stat(f) for f in self._files]
        return tuple(v for s in stats for v in (s.st_mtime_ns, s.st_size, s.st_ino))

    def get(self, factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        with self._lock:
            context = self._context
            try:
                stamp = self._current_stamp()
                if context is not None and stamp == self._stamp:
                    return context
                fresh = factory()
            except (ssl.SSLError, OSError):
                if context is None:
                    raise
                log.warning("TLS key pair unreadable; keeping the previous one", exc_info=True)
                return context
            fresh.minimum_version = ssl.TLSVersion.TLSv1_2
            if context is not None:
                log.info("TLS key pair reloaded", extra={"cert_file": self._files[0]})
            self._context, self._stamp = fresh, stamp
            return fresh


class BalancingThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, leaving new connections to less busy workers first.

    Every worker waits on the one listening socket and the first to call accept() gets the
    connection; with keep-alive a connection stays with its worker for good, so one worker
    could hold all of the API server's connections and leave the other cores idle (seen: both
    of two connections on one worker in 11 of 20 trials). A worker that already holds
    connections waits a moment before accepting, so an idle one, woken too, takes it first.
    """

    ACCEPT_DELAY = 0.002  # seconds per connection held, at most 4 of them counted
    # The arbiter only checks the heartbeat against `timeout` (30 s); gunicorn beats it (a
    # utime() call) on every turn of the event loop, i.e. once per request under load.
    HEARTBEAT_SECONDS = 1.0
    _beaten = 0.0

    def accept(self, listener: Any) -> None:
        if self.nr_conns:
            time.sleep(self.ACCEPT_DELAY * min(self.nr_conns, 4))
        super().accept(listener)

    def notify(self) -> None:
        now = time.monotonic()
        if now - self._beaten >= self.HEARTBEAT_SECONDS:
            self._beaten = now
            super().notify()

    def handle_request(self, req: Any, conn: Any) -> bool:
        sock = conn.sock
        conn.sock = held = HeadWithBody(sock)
        try:
            return bool(super().handle_request(req, conn))
        finally:
            conn.sock = sock
            with contextlib.suppress(OSError):  # closed after a failed response: nothing to add
                held.flush()


class HeadWithBody:
    """A connection's socket for the length of one response: gunicorn writes the status line
    and headers, then the body, each with sendall(); this sends the head with the body, in
    one TLS record and one system call instead of two (a fifth more admissions a second,
    measured, as the client too reads one record). What is held when the response ends (a
    body-less answer) is sent then. Everything else is the socket's own."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._head: bytes | None = None
        self._first = True

    def sendall(self, data: bytes) -> None:
        if self._first:
            self._first, self._head = False, bytes(data)
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        self._sock.sendall(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._sock.sendall(head)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class AdmissionLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger without the access log, whatever the logging config: the app logs
    each admission with its uid, and gunicorn would build every access line (atoms, time
    formatting) only for the config's level to drop it."""

    def _compute_access_log_enabled(self) -> bool:
        return False


def gunicorn_options(settings: ServerSettings) -> dict[str, Any]:
    """The gunicorn configuration, as plain data."""
    tls = ReloadingTLSContext(settings.cert_file, settings.key_file)

    def ssl_context(_config: Any, factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return tls.get(factory)

    def child_exit(_server: Any, worker: Any) -> None:
        # Imported late: PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client loads.
        from prometheus_client import multiprocess  # noqa: PLC0415

        multiprocess.mark_process_dead(worker.pid)

    return {
        "bind": [settings.bind],
        "workers": settings.workers,
        "worker_class": BalancingThreadWorker,
        "threads": settings.threads,
        "keepalive": settings.keepalive,
        "graceful_timeout": settings.graceful_timeout,
        "timeout": 30,
        "certfile": settings.cert_file,
        "keyfile": settings.key_file,
        "ssl_context": ssl_context,
        "child_exit": child_exit,
        # Header limits (the body limit is the app's MAX_CONTENT_LENGTH).
        "limit_request_line": 4094,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        "accesslog": None,  # every admission is logged by the app, with its uid
        "logger_class": AdmissionLogger,
        "loglevel": settings.log_level,
        "logconfig_dict": logs.dict_config(settings.log_level),
        "proc_name": "vmgroup-webhook",
        # gunicorn 25+ opens a control socket under $HOME (`/` in a Pod: read-only, an error
        # line at every start; a developer's home in the local stack). Nothing here uses it.
        **({"control_socket_disable": True} if _has_setting("control_socket_disable") else {}),
    }


def _has_setting(name: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS  # noqa: PLC0415 - gunicorn's own registry

    return any(setting.name == name for setting in KNOWN_SETTINGS)


class WebhookServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # In the worker, after the fork (threads do not survive one) and after the metrics
        # directory is set (prometheus_client reads it on import).
        from .app import create_app  # noqa: PLC0415
        from .injection import InjectionSettings  # noqa: PLC0415

        settings = self.settings
        excluded = frozenset({*SYSTEM_NAMESPACES, *([settings.namespace] if settings.namespace
                                                     else [])})
        app = create_app(
            settings.policy, registry=start_initializer_watch(settings),
            injection_settings=InjectionSettings(settings.initializer_prefix, excluded),
            max_request_bytes=settings.max_request_bytes)
        # What is loaded now lives as long as the worker: ~140,000 objects once the kubernetes
        # client is in. Frozen, the collector's full passes no longer walk them (120-155 ms
        # each, a latency spike of whichever requests were in flight).
        gc.collect()
        gc.freeze()
        return app


def start_initializer_watch(settings: ServerSettings) -> Registry:
    """A Registry fed by a ConfigMap watch in this worker (empty without a namespace)."""
    registry = Registry()
    if not settings.namespace:
        registry.replace([])
        return registry
    from kubernetes import client  # noqa: PLC0415 - only workers that watch pay for it

    from . import metrics  # noqa: PLC0415
    from .initializer_watch import ConfigMapWatcher  # noqa: PLC0415

    api = kube_client(settings.kubeconfig, "--kubeconfig")  # checked by main() already

    def count() -> None:
        snapshot = registry.snapshot()
        metrics.INITIALIZERS.labels("usable").set(len(snapshot.usable))
        metrics.INITIALIZERS.labels("broken").set(len(snapshot.broken))

    ConfigMapWatcher(client.CoreV1Api(api), settings.namespace, registry,
                     on_change=count).start()
    return registry
