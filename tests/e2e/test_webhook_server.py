"""The webhook server itself, over real TLS to real gunicorn: bad input, metrics across workers,
structured logs, certificate rotation without restart, graceful shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hack.stack import poll
from hack.stack.components import Webhook
from hack.stack.pki import CertificateAuthority
from hack.stack.process import exited
from hack.stack.reviews import patched, review, vmgroup
from tests.strategies import bodies

pytestmark = pytest.mark.kube

ENDPOINTS = ["/mutate/vmgroups", "/validate/vmgroups"]


@pytest.mark.parametrize(("body", "message"), [
    (b"{oops", "request body is not valid JSON"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
     "AdmissionReview has no request object"),
    (b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}}',
     "expected apiVersion 'admission.k8s.io/v1'"),
    (b'{"apiVersion": "v1", "kind": "Pod"}', "expected apiVersion"),
])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_malformed_requests_get_400_and_workers_survive(
        vmgroup_webhook: Webhook, webhook_http: requests.Session, endpoint: str,
        body: bytes, message: str) -> None:
    workers = set(vmgroup_webhook.worker_pids())
    answer = webhook_http.post(vmgroup_webhook.url + endpoint, data=body,
                               headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert message in answer.json()["error"]
    assert set(vmgroup_webhook.worker_pids()) == workers


def test_oversized_body_is_refused_cleanly(tmp_path: Path) -> None:
    """A small limit, so the whole body fits the socket buffers and the client reads our 413
    (past the limit gunicorn stops reading; a client still writing sees the close instead)."""
    with _own_webhook(tmp_path, "--max-request-bytes=4096") as (webhook, ca, _):
        session = requests.Session()
        session.trust_env = False
        workers = set(webhook.worker_pids())
        answer = session.post(webhook.url + ENDPOINTS[1], verify=str(ca),
                              data=json.dumps(review(vmgroup(template="t" * 5000))))
        assert answer.status_code == 413
        assert "Request Entity Too Large" in answer.json()["error"]
        ok = session.post(webhook.url + ENDPOINTS[1], verify=str(ca),
                          json=review(vmgroup(cpu=1, memory=1, replicas=1, template="t")))
        assert ok.json()["response"]["allowed"] is True
        assert set(webhook.worker_pids()) == workers


def test_wrong_method_and_path_are_json_errors(vmgroup_webhook: Webhook,
                                               webhook_http: requests.Session) -> None:
    assert webhook_http.get(vmgroup_webhook.url + ENDPOINTS[0]).status_code == 405
    missing = webhook_http.post(vmgroup_webhook.url + "/mutate/pods", data=b"{}")
    assert missing.status_code == 404
    assert "Not Found" in missing.json()["error"]


def test_health_endpoints(vmgroup_webhook: Webhook, webhook_http: requests.Session) -> None:
    for path in ("/healthz", "/readyz"):
        assert webhook_http.get(vmgroup_webhook.url + path).text == "ok"


def _counter(text: str, endpoint: str, outcome: str) -> float:
    line = f'vmgroup_webhook_requests_total{{endpoint="{endpoint}",outcome="{outcome}"}}'
    return sum(float(row.split()[-1]) for row in text.splitlines() if row.startswith(line))


def test_metrics_add_up_across_workers(vmgroup_webhook: Webhook) -> None:
    assert len(set(vmgroup_webhook.worker_pids())) >= 2

    def scrape() -> str:
        # A new connection each time, so different workers answer.
        return requests.get(vmgroup_webhook.url + "/metrics", verify=str(vmgroup_webhook.ca),
                            headers={"Connection": "close"}, timeout=5).text

    before = _counter(scrape(), "/validate/vmgroups", "allowed")
    for _ in range(20):
        answer = requests.post(vmgroup_webhook.url + "/validate/vmgroups",
                               json=review(vmgroup(cpu=1, memory=1, replicas=1, template="t")),
                               verify=str(vmgroup_webhook.ca), headers={"Connection": "close"},
                               timeout=5)
        assert answer.json()["response"]["allowed"] is True
    assert {_counter(scrape(), "/validate/vmgroups", "allowed") - before
            for _ in range(6)} == {20}


def test_a_worker_that_exits_is_replaced_and_nothing_is_lost(
        vmgroup_webhook: Webhook) -> None:
    """A worker leaving (SIGTERM: gunicorn's way to retire one) must not take the shared
    metrics with it: every worker still answers admissions and /metrics afterwards."""
    before = set(vmgroup_webhook.worker_pids())
    retired = min(before)
    os.kill(retired, signal.SIGTERM)
    poll(lambda: len(after := set(vmgroup_webhook.worker_pids())) == len(before)
         and retired not in after, timeout=30, what="gunicorn to replace the worker")
    for _ in range(8):  # new connections, so both workers answer
        answer = requests.post(vmgroup_webhook.url + "/validate/vmgroups",
                               json=review(vmgroup(cpu=1, memory=1, replicas=1, template="t")),
                               verify=str(vmgroup_webhook.ca), headers={"Connection": "close"},
                               timeout=5)
        assert answer.status_code == 200
        metrics = requests.get(vmgroup_webhook.url + "/metrics", verify=str(vmgroup_webhook.ca),
                               headers={"Connection": "close"}, timeout=5)
        assert metrics.status_code == 200


def test_every_admission_is_logged_with_its_uid(vmgroup_webhook: Webhook,
                                                webhook_http: requests.Session) -> None:
    body = review(vmgroup(template="t"))
    webhook_http.post(vmgroup_webhook.url + "/mutate/vmgroups", json=body)
    uid = body["request"]["uid"]

    def logged() -> dict[str, Any] | None:
        return next((e for e in vmgroup_webhook.process.log_entries() if e.get("uid") == uid),
                    None)

    entry = poll(logged, timeout=10, what="the admission log line")
    assert entry["uid"] == uid
    assert (entry["msg"], entry["outcome"], entry["object"]) == ("admission", "patched", "vg-1")
    assert "spec" not in json.dumps(entry)  # identities only, never content


# --- hypothesis: random and malformed input never gets a 5xx --------------------------------

@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies, endpoint=st.sampled_from(ENDPOINTS))
def test_random_input_never_gets_a_5xx(vmgroup_webhook: Webhook,
                                       webhook_http: requests.Session, body: bytes,
                                       endpoint: str) -> None:
    answer = webhook_http.post(vmgroup_webhook.url + endpoint, data=body)
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 400:
        assert answer.json()["error"]
        return
    sent, reply = json.loads(body), answer.json()
    assert (reply["apiVersion"], reply["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
    assert reply["response"]["uid"] == sent["request"]["uid"]
    if "patch" in reply["response"]:  # a patch always applies to what we were sent
        patched(sent["request"]["object"], reply["response"])


# --- a webhook of the test's own: rotation and shutdown -------------------------------------

def _served_serial(webhook: Webhook, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", webhook.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@contextlib.contextmanager
def _own_webhook(tmp_path: Path,
                 *args: str) -> Iterator[tuple[Webhook, Path, CertificateAuthority]]:
    """A webhook server of the test's own, with its own CA; stopped (SIGTERM) at the end."""
    authority = CertificateAuthority("own-ca")
    ca = tmp_path / "ca.crt"
    ca.write_bytes(authority.cert_pem)
    cert = authority.serving("webhook").write(tmp_path, "tls")
    webhook = Webhook(ca, cert, tmp_path / "logs", ["--workers=2", *args], name="own-webhook")
    webhook.start()
    try:
        yield webhook, ca, authority
    finally:
        webhook.process.stop()


def test_certificate_rotates_without_restart_and_sigterm_is_graceful(tmp_path: Path) -> None:
    with _own_webhook(tmp_path) as (webhook, ca, authority):
        cert = (tmp_path / "tls.crt", tmp_path / "tls.key")
        first = _served_serial(webhook, ca)
        # (ready means one worker answers; gunicorn may still be forking the second)
        workers = poll(lambda: len(w := set(webhook.worker_pids())) == 2 and w, timeout=30,
                       what="both workers")
        new = authority.serving("webhook")
        # Write to temporary files and rename, as a kubelet updates a mounted Secret.
        new.write(tmp_path, "next")
        (tmp_path / "next.key").replace(cert[1])
        (tmp_path / "next.crt").replace(cert[0])
        second = poll(lambda: (s := _served_serial(webhook, ca)) != first and s, timeout=10,
                      what="the new certificate to be served")
        assert second == x509.load_pem_x509_certificate(new.cert_pem).serial_number
        assert set(webhook.worker_pids()) == workers  # no restart

        webhook.process.signal(signal.SIGTERM)
        pid = webhook.process.pid
        assert pid is not None
        poll(lambda: exited(pid), timeout=30, what="gunicorn to shut down on SIGTERM")
    assert "Shutting down" in webhook.process.log_path.read_text()


def test_keep_alive_connections_are_spread_over_the_workers(tmp_path: Path) -> None:
    """Two connections opened at once land on two workers, every time: with keep-alive a
    connection stays with the worker that accepted it, and one worker holding both would leave
    a core idle (seen in 11 of 20 trials with gunicorn's own gthread worker)."""
    body = json.dumps(review(vmgroup(template="t"))).encode()
    with _own_webhook(tmp_path) as (webhook, ca, _):

        def trial() -> list[int]:
            """Two connections at once, one request each: the connections each worker holds."""
            sessions = [requests.Session() for _ in range(2)]
            try:
                with ThreadPoolExecutor(2) as pool:  # (a kept Response would keep its socket)
                    codes = list(pool.map(lambda session: session.post(
                        f"{webhook.url}/mutate/vmgroups", data=body, verify=str(ca),
                        timeout=10).status_code, sessions))
                assert codes == [200, 200]
                return sorted(webhook.connections_per_worker())
            finally:
                for session in sessions:
                    session.close()
                poll(lambda: sum(webhook.connections_per_worker()) == 0, timeout=10,
                     what="the connections closed")

        # Until both workers have loaded the app, one alone accepts.
        poll(lambda: trial() == [1, 1], timeout=30, what="both workers accepting")
        spreads = [trial() for _ in range(10)]
        assert spreads == [[1, 1]] * 10, spreads
