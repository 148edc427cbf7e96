"""The controller recovers on its own from failures caused on purpose, and loses nothing.

Real parts throughout: the real API server (behind tests.apiproxy where a watch has to
be broken: a 410 Gone the real API server gives, a watch gone silent), a real restart of the
API server, and VMware's vcsim frozen with SIGSTOP for 30 s.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hack.stack import LocalStack, poll
from hack.stack.components import (
    Controller,
    kubeconfig,
    kubectl,
    write_kubeconfig,
)
from tests.apiproxy import ApiProxy
from tests.e2e.stacks import vmgroup_stack

pytestmark = [pytest.mark.kube, pytest.mark.vcenter]

NAMESPACE = "team-f"
LIST_PATH = "/apis/vm.codeconnect.vmworld.com/v1alpha1/vmgroups"  # the informer's list+watch
# Only the failure under test may bring a group to the controller's attention, never a resync.
ARGS = ["--resync-seconds=3600"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with vmgroup_stack(tmp_path_factory.mktemp("failures"), NAMESPACE,
                       vcsim_method_delays={"CloneVM_Task": 200}) as local:
        yield local


@pytest.fixture
def proxy(stack: LocalStack, tmp_path: Path) -> Iterator[tuple[ApiProxy, Path]]:
    """The API server behind a proxy that can break watches, and a kubeconfig for it."""
    assert stack.apiserver is not None
    ca = stack.pki.ca
    apiproxy = ApiProxy(stack.apiserver.url, ca, stack.apiserver.admin_cert,
                        stack.pki.pair("kube-apiserver")).start()
    config = write_kubeconfig(tmp_path / "proxied.kubeconfig", kubeconfig(
        apiproxy.url, ca, stack.pki.pair("admin"), "admin"))
    try:
        yield apiproxy, config
    finally:
        apiproxy.stop()


@pytest.fixture(autouse=True)
def _clean_slate(stack: LocalStack) -> Iterator[None]:
    yield
    with _controller(stack, "controller-cleanup", ARGS):  # finalizers need a controller
        kubectl(stack.kubeconfig, "delete", "vg", "--all", "-n", NAMESPACE, "--timeout=90s")


@contextmanager
def _controller(stack: LocalStack, name: str, args: list[str],
                config: Path | None = None) -> Iterator[Controller]:
    controller = Controller(config or stack.kubeconfig, stack.vcenter, stack.log_dir,
                            ["--log-level=debug", *args], name=name)
    controller.start()
    try:
        yield controller
    finally:
        controller.process.stop()


def _create(stack: LocalStack, name: str, replicas: int) -> None:
    kubectl(stack.kubeconfig, "-n", NAMESPACE, "create", "-f", "-", stdin=json.dumps({
        "apiVersion": "vm.codeconnect.vmworld.com/v1alpha1", "kind": "VmGroup",
        "metadata": {"name": name},
        "spec": {"cpu": 1, "memory": 1, "replicas": replicas,
                 "template": "vm-operator-template"}}))


def _status(stack: LocalStack, name: str) -> dict[str, object]:
    obj = json.loads(kubectl(stack.kubeconfig, "-n", NAMESPACE, "get", "vg", name, "-o",
                             "json"))
    status: dict[str, object] = obj.get("status") or {}
    return status


def _in_phase(stack: LocalStack, name: str, phase: str,
              replicas: int | None = None) -> dict[str, object] | None:
    """The group's status if it is in `phase` (with `replicas` running), else None."""
    status = _status(stack, name)
    if status.get("phase") != phase:
        return None
    return status if replicas is None or status.get("currentReplicas") == replicas else None


def _wait_running(stack: LocalStack, name: str, replicas: int, timeout: float = 30) -> None:
    poll(lambda: _in_phase(stack, name, "RUNNING", replicas), timeout=timeout,
         what=f"{name} RUNNING {replicas} (last: {_status(stack, name)})")


def _log(controller: Controller) -> str:
    return controller.process.log_path.read_text()


def test_a_410_gone_leads_to_a_relist_and_nothing_is_lost(
        stack: LocalStack, proxy: tuple[ApiProxy, Path]) -> None:
    apiproxy, config = proxy
    with _controller(stack, "controller-410", ARGS, config) as controller:
        _create(stack, "vg-a", 1)
        _wait_running(stack, "vg-a", 1)
        lists = len([s for s in apiproxy.seen if s.path == LIST_PATH and not s.watch])
        # The next watch asks for a resourceVersion long compacted away: the real API server
        # answers 410 Gone. End the current one so that the next comes now.
        apiproxy.expire_next_watch()
        apiproxy.end_watches()
        poll(lambda: apiproxy.watches("expired") or None, timeout=15, what="a watch answered 410")
        expired = apiproxy.watches("expired")[0]
        poll(lambda: any(s.path == LIST_PATH and not s.watch and s.started > expired.started
                         for s in apiproxy.seen), timeout=15, what="a relist after the 410")
        assert len([s for s in apiproxy.seen if s.path == LIST_PATH and not s.watch]) > lists
        poll(lambda: "watch expired (410 Gone); relisting" in _log(controller), timeout=10,
             what="the 410 logged")
        _create(stack, "vg-b", 2)  # seen through the watch that follows the relist
        _wait_running(stack, "vg-b", 2)
        _wait_running(stack, "vg-a", 1)


def test_a_silent_watch_is_dropped_and_made_again(
        stack: LocalStack, proxy: tuple[ApiProxy, Path]) -> None:
    apiproxy, config = proxy
    # The API server ends each watch after 4 s; one silent for 5 s is dead.
    with _controller(stack, "controller-silent", [*ARGS, "--watch-seconds=4"], config):
        _create(stack, "vg-c", 1)
        _wait_running(stack, "vg-c", 1)
        apiproxy.silent = True
        apiproxy.end_watches()
        poll(lambda: apiproxy.watches("silent") or None, timeout=15, what="a silent watch")
        _create(stack, "vg-d", 1)  # no watch brings it: only giving up on the silence does
        _wait_running(stack, "vg-d", 1, timeout=45)
        dropped = [s for s in apiproxy.watches("silent") if s.ended is not None]
        assert dropped, "the controller never gave up on a silent watch"
        waited = [s.ended - s.started for s in dropped if s.ended is not None]
        assert all(4.5 <= w <= 20 for w in waited), waited
        apiproxy.silent = False
        apiproxy.end_watches()
        kubectl(stack.kubeconfig, "-n", NAMESPACE, "scale", "vg", "vg-d", "--replicas=2")
        _wait_running(stack, "vg-d", 2)  # watching works again


def test_an_api_server_restart_is_survived(stack: LocalStack) -> None:
    """Without leader election: with it, an outage longer than the renew deadline (10 s) ends
    the replica on purpose, as client-go's do, and its Deployment starts it again."""
    assert stack.apiserver is not None
    with _controller(stack, "controller-restart", [*ARGS, "--no-leader-elect"]) as controller:
        _create(stack, "vg-e", 1)
        _wait_running(stack, "vg-e", 1)
        stack.apiserver.restart()
        _create(stack, "vg-f", 2)
        _wait_running(stack, "vg-f", 2, timeout=60)
        kubectl(stack.kubeconfig, "-n", NAMESPACE, "scale", "vg", "vg-e", "--replicas=2")
        _wait_running(stack, "vg-e", 2, timeout=60)
        assert controller.process.running()


def test_vcenter_frozen_for_30_seconds_is_an_error_status_then_converges(
        stack: LocalStack) -> None:
    assert stack.vcsim is not None
    with _controller(stack, "controller-frozen", [*ARGS, "--vcenter-timeout=5"]):
        _create(stack, "vg-g", 1)
        _wait_running(stack, "vg-g", 1)
        frozen_at = time.monotonic()
        stack.vcsim.process.signal(signal.SIGSTOP)
        try:
            kubectl(stack.kubeconfig, "-n", NAMESPACE, "scale", "vg", "vg-g", "--replicas=3")
            status = poll(lambda: _in_phase(stack, "vg-g", "ERROR"), timeout=28,
                          what="an ERROR status while frozen")
            assert "did not answer" in str(status["lastMessage"])
            # The outage lasts 30 s whatever the controller does: that is the scenario.
            time.sleep(max(0.0, frozen_at + 30 - time.monotonic()))
        finally:
            stack.vcsim.process.signal(signal.SIGCONT)
        _wait_running(stack, "vg-g", 3, timeout=60)
