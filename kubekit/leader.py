"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it, so
several controller replicas can run and only one acts.

The holder renews the Lease every `retry` seconds; a candidate takes it over once it has not
seen the Lease change for `duration` seconds. That is measured on the candidate's own monotonic
clock from when it last saw the record change, never from the times written in the Lease (as
client-go does): replicas whose wall clocks differ, by seconds or by hours, still agree on who
leads. On SIGTERM the holder releases it (empty holder, 1 s duration), so a successor starts at
once instead of after a full lease duration. Optimistic concurrency (resourceVersion) means two
candidates can never both win one round.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("vmgroup.leader")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _record(spec: client.V1LeaseSpec) -> tuple[Any, ...]:
    return (spec.holder_identity, spec.renew_time, spec.acquire_time, spec.lease_transitions,
            spec.lease_duration_seconds)


class LeaseElector:
    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str, *,
                 duration: int = 15, renew_deadline: float = 10.0, retry: float = 2.0,
                 wall_clock: Callable[[], datetime.datetime] = _now,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._api = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self._duration, self._deadline, self._retry = duration, renew_deadline, retry
        # The wall clock only writes the times into the Lease; expiry is judged on `clock`.
        self._wall_clock, self._clock = wall_clock, clock
        self.leading = threading.Event()
        self._observed: tuple[Any, ...] | None = None  # the record as this candidate last saw it
        self._observed_at = 0.0  # when it last changed, on this candidate's monotonic clock

    def _observe(self, spec: client.V1LeaseSpec) -> None:
        if (record := _record(spec)) != self._observed:
            self._observed, self._observed_at = record, self._clock()

    def _held_by_another(self, spec: client.V1LeaseSpec) -> bool:
        """Whether someone else holds the Lease: it names a holder, and this candidate has seen
        the record change within its duration."""
        self._observe(spec)
        duration = spec.lease_duration_seconds or self._duration
        return bool(spec.holder_identity) and spec.holder_identity != self.identity and (
            self._clock() < self._observed_at + duration)

    def _try(self) -> bool:
        """One round: create, take over or renew the Lease; False when another holds it."""
        now = self._wall_clock()
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                self._api.create_namespaced_lease(self.namespace, client.V1Lease(
                    metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                    spec=client.V1LeaseSpec(holder_identity=self.identity, acquire_time=now,
                                            renew_time=now, lease_transitions=0,
                                            lease_duration_seconds=self._duration)))
            except ApiException as exc2:
                if exc2.status == 409:  # another candidate created it first
                    return False
                raise
            return True
        spec = lease.spec or client.V1LeaseSpec()
        lease.spec = spec
        holder = spec.holder_identity
        if self._held_by_another(spec):
            return False
        if holder != self.identity:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity, spec.renew_time = self.identity, now
        spec.lease_duration_seconds = self._duration
        try:
            written = self._api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:  # changed since we read it: someone else moved first
                return False
            raise
        self._observe(written.spec or spec)
        return True

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this candidate leads (True) or `stop` is set (False)."""
        while not stop.is_set():
            try:
                if self._try():
                    self.leading.set()
                    return True
            except Exception as exc:  # the API server may be briefly away: keep trying
                log.warning("leader election failed; retrying", extra={"error": repr(exc)})
            stop.wait(self._retry)
        return False

    def hold(self, stop: threading.Event, lost: Callable[[], None]) -> threading.Thread:
        """Renew in a thread until `stop`; call `lost` if renewing fails past the deadline."""

        def renew() -> None:
            last = self._clock()
            while not stop.wait(self._retry):
                try:
                    if self._try():
                        last = self._clock()
                        continue
                except Exception as exc:
                    log.warning("lease renewal failed", extra={"error": repr(exc)})
                if self._clock() - last > self._deadline:
                    self.leading.clear()
                    lost()
                    return

        thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Give the Lease up at once if we hold it, so a successor need not wait it out."""
        if not self.leading.is_set():
            return
        self.leading.clear()
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace)
            spec = lease.spec
            if spec is not None and spec.holder_identity == self.identity:
                spec.holder_identity = None
                spec.lease_duration_seconds = 1
                spec.renew_time = self._wall_clock()
                self._api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            log.warning("could not release the lease", extra={"status": exc.status})
