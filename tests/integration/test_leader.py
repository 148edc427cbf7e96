"""Lease leader election through the real API server, judged as client-go judges it: on each
candidate's own monotonic clock, from when it last saw the Lease change."""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable

import pytest
from kubernetes import client

from hack.stack import poll
from kubekit.leader import LeaseElector

pytestmark = pytest.mark.kube

DURATION, RETRY = 3, 0.25


def _wall_clock(skew_minutes: int) -> Callable[[], datetime.datetime]:
    return lambda: datetime.datetime.now(datetime.UTC) + datetime.timedelta(
        minutes=skew_minutes)


def _elector(api: client.ApiClient, namespace: str, identity: str,
             skew_minutes: int) -> LeaseElector:
    return LeaseElector(api, namespace, "skewed", identity, duration=DURATION,
                        renew_deadline=2.0, retry=RETRY, wall_clock=_wall_clock(skew_minutes))


def test_skewed_wall_clocks_never_make_two_leaders_and_failover_still_comes(
        api_client: client.ApiClient, namespace: str) -> None:
    """The holder's clock runs 10 minutes behind, the standby's 10 ahead: judged by the times
    in the Lease, the standby would take over at once (the old code did)."""
    leader = _elector(api_client, namespace, "leader", -10)
    standby = _elector(api_client, namespace, "standby", +10)
    stop_leader, stop_standby = threading.Event(), threading.Event()
    try:
        assert leader.acquire(stop_leader)
        leader.hold(stop_leader, lost=stop_leader.set)
        threading.Thread(target=standby.acquire, args=(stop_standby,), daemon=True).start()
        both = 0
        watch_until = time.monotonic() + 2 * DURATION  # two lease durations of renewals
        while time.monotonic() < watch_until:
            both += leader.leading.is_set() and standby.leading.is_set()
            stop_standby.wait(0.01)  # a sampling interval, not synchronisation
        assert both == 0
        assert leader.leading.is_set()
        assert not standby.leading.is_set()

        stop_leader.set()  # the leader stops renewing without releasing: it crashed
        stopped = time.monotonic()
        poll(standby.leading.is_set, timeout=4 * DURATION, what="the standby to take over",
             interval=0.05)
        took = time.monotonic() - stopped
        assert took <= DURATION + 2 * RETRY, f"failover took {took:.1f}s"
    finally:
        stop_leader.set()
        stop_standby.set()
