"""The Flask edge and the server configuration, without a network (the e2e tests add one)."""

from __future__ import annotations

import io
import json
import logging
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from gunicorn.workers.gthread import ThreadWorker

from hack.stack.pki import CertificateAuthority
from hack.stack.reviews import review, vmgroup
from webhook import __main__ as cli
from webhook.admission import AdmissionRequest
from webhook.app import create_app
from webhook.server import (
    BalancingThreadWorker,
    HeadWithBody,
    ReloadingTLSContext,
    ServerSettings,
    gunicorn_options,
)


def _boom(request: AdmissionRequest) -> dict[str, Any]:
    raise RuntimeError("bug")


def test_an_unexpected_error_is_a_500_logged_with_the_uid(
        caplog: pytest.LogCaptureFixture) -> None:
    client = create_app(endpoints={"/validate/vmgroups": _boom}).test_client()
    body = review(vmgroup(template="t"))
    with caplog.at_level(logging.ERROR, logger="vmgroup.webhook"):
        answer = client.post("/validate/vmgroups", json=body)
    uid = body["request"]["uid"]
    assert answer.status_code == 500
    assert answer.get_json() == {"error": f"internal error answering request {uid}"}
    (record,) = caplog.records
    assert record.uid == uid  # type: ignore[attr-defined]
    assert record.exc_info is not None


def test_deeply_nested_input_is_a_400_not_a_crash() -> None:
    client = create_app().test_client()
    assert client.post("/mutate/vmgroups", data=b"[" * 100_000).status_code == 400
    deep: dict[str, object] = {}
    node = deep
    for _ in range(600):  # parses, but is too deep to copy
        node["x"] = {}
        node = node["x"]  # type: ignore[assignment]
    body = review(vmgroup(template="t"))
    body["request"]["object"]["spec"]["deep"] = deep
    answer = client.post("/mutate/vmgroups", data=json.dumps(body))
    assert answer.status_code in (200, 400)  # whichever, never a 500


def test_body_over_the_limit_is_413_json() -> None:
    client = create_app(max_request_bytes=100).test_client()
    answer = client.post("/mutate/vmgroups", data=b"x" * 101)
    assert answer.status_code == 413
    assert "Request Entity Too Large" in answer.get_json()["error"]


@pytest.mark.parametrize("body", [
    review(vmgroup(template="t")),  # defaulted: a patch
    review(vmgroup(cpu=99, template="t")),  # refused by the rules
    {"apiVersion": "v1", "kind": "Pod"},  # not an AdmissionReview: a 400
])
def test_the_fast_path_answers_as_flask_does(body: dict[str, Any]) -> None:
    """With a Content-Length the WSGI fast path answers; without, Flask's route: the same."""
    client = create_app().test_client()
    data = json.dumps(body).encode()
    for path in ("/mutate/vmgroups", "/validate/vmgroups"):
        fast = client.post(path, data=data, content_type="application/json")
        # A body of unknown length (chunked, which gunicorn ends for the app): Flask's route.
        slow = client.post(path, input_stream=io.BytesIO(data), content_type="application/json",
                           environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": ""})
        assert not slow.request.environ.get("CONTENT_LENGTH")
        assert (fast.status_code, fast.content_type, fast.get_json()) == (
            slow.status_code, slow.content_type, slow.get_json())
        assert fast.headers["Content-Length"] == str(len(fast.data))


def test_other_methods_and_paths_are_flasks_json_errors() -> None:
    client = create_app().test_client()
    assert client.get("/mutate/vmgroups").status_code == 405
    assert client.post("/mutate/pods", data=b"{}").get_json()["error"].startswith("Not Found")
    assert client.get("/healthz").data == b"ok"


def test_metrics_count_outcomes() -> None:
    client = create_app().test_client()
    client.post("/mutate/vmgroups", json=review(vmgroup(template="t")))
    client.post("/validate/vmgroups", data=b"nope")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'vmgroup_webhook_requests_total{endpoint="/mutate/vmgroups",outcome="patched"}' in text
    assert ('vmgroup_webhook_requests_total{endpoint="/validate/vmgroups",outcome="bad_request"}'
            in text)


def test_gunicorn_keeps_connections_and_shuts_down_gracefully() -> None:
    options = gunicorn_options(ServerSettings(cert_file="c", key_file="k", workers=3))
    # gthread (sync workers close every connection), balancing connections over workers
    assert issubclass(options["worker_class"], ThreadWorker)
    assert options["keepalive"] >= 30
    assert options["graceful_timeout"] > 0
    assert (options["workers"], options["certfile"], options["keyfile"]) == (3, "c", "k")
    assert callable(options["ssl_context"])
    assert callable(options["child_exit"])


def test_gunicorn_opens_no_control_socket() -> None:
    """gunicorn 25+ would make one under $HOME: read-only `/` in a Pod (an error per start)."""
    from gunicorn.config import Config  # noqa: PLC0415

    config = Config()
    for key, value in gunicorn_options(ServerSettings(cert_file="c", key_file="k")).items():
        config.set(key, value)
    assert config.control_socket_disable is True  # (constraints.txt pins a gunicorn with one)


def test_the_worker_heartbeat_is_a_file_touch_per_second_not_per_request() -> None:
    """gunicorn touches the worker's heartbeat file on every turn of its event loop (once per
    request under load); the arbiter only needs it within `timeout` (30 s)."""
    touched: list[float] = []

    class Heartbeat:
        def notify(self) -> None:
            touched.append(time.monotonic())

    worker = BalancingThreadWorker.__new__(BalancingThreadWorker)  # no process to set up
    worker.tmp = Heartbeat()
    started = time.monotonic()
    for _ in range(1000):
        worker.notify()
    assert len(touched) == 1 + int((time.monotonic() - started) / worker.HEARTBEAT_SECONDS)
    assert worker.HEARTBEAT_SECONDS * 10 <= 30  # well within the arbiter's timeout


class _Wire:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(data)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 8443)


def test_a_responses_head_goes_out_with_its_body_in_one_write() -> None:
    wire = _Wire()
    sock = HeadWithBody(wire)
    sock.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    assert wire.writes == []  # held for the body
    sock.sendall(b"{}")
    sock.sendall(b"more")  # the rest of a longer body: as it comes
    sock.flush()
    assert wire.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}", b"more"]
    assert sock.getsockname() == ("127.0.0.1", 8443)  # everything else is the socket's


def test_a_head_without_a_body_goes_out_when_the_response_ends() -> None:
    wire = _Wire()
    sock = HeadWithBody(wire)
    sock.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    sock.flush()
    sock.flush()
    assert wire.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]


def _pair(tmp_path: Path, authority: CertificateAuthority) -> tuple[str, str]:
    crt, key = authority.serving("webhook").write(tmp_path, "tls")
    return str(crt), str(key)


def _factory(crt: str, key: str) -> Any:
    def make() -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(crt, key)
        return context
    return make


def test_tls_context_is_cached_reloaded_and_kept_on_a_broken_pair(tmp_path: Path) -> None:
    authority = CertificateAuthority()
    crt, key = _pair(tmp_path, authority)
    tls = ReloadingTLSContext(crt, key)
    first = tls.get(_factory(crt, key))
    assert first.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.get(_factory(crt, key)) is first  # unchanged files: no reload

    _pair(tmp_path, authority)  # rotated
    second = tls.get(_factory(crt, key))
    assert second is not first

    Path(key).write_text("not a key")  # a half-written rotation
    assert tls.get(_factory(crt, key)) is second


def test_tls_context_without_a_first_pair_fails(tmp_path: Path) -> None:
    (tmp_path / "c").write_text("x")
    (tmp_path / "k").write_text("y")
    tls = ReloadingTLSContext(str(tmp_path / "c"), str(tmp_path / "k"))
    with pytest.raises(ssl.SSLError):
        tls.get(_factory(str(tmp_path / "c"), str(tmp_path / "k")))


def test_flags_fall_back_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMGROUP_WEBHOOK_MAX_CPU", "8")
    monkeypatch.setenv("VMGROUP_WEBHOOK_TLS_CERT_FILE", "/c")
    args = cli.parser().parse_args(["--tls-key-file=/k"])
    assert (args.max_cpu, args.tls_cert_file, args.tls_key_file) == (8, "/c", "/k")


def test_missing_tls_flags_are_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parser().parse_args([])
    assert "--tls-cert-file" in capsys.readouterr().err


def test_empty_tls_settings_never_mean_plain_http(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--tls-cert-file=", "--tls-key-file=/k"]) == 2
    assert "must not be empty" in capsys.readouterr().err


def test_policy_out_of_bounds_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--tls-cert-file=/c", "--tls-key-file=/k", "--max-cpu=1000"])
    assert code == 2
    assert "policy maximum for cpu must be between 1 and 768" in capsys.readouterr().err
