"""The Flask app: thin HTTP edges around the pure admission handlers."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from initializers.registry import Registry

from . import injection, metrics, vmgroup
from .admission import DEFAULT_MAX_REQUEST_BYTES, AdmissionRequest, BadReview, parse_review
from .injection import InjectionSettings
from .vmgroup import Policy

log = logging.getLogger("vmgroup.webhook")

Handler = Callable[[AdmissionRequest], dict[str, Any]]
INJECT_PATH = "/inject"


def _outcome(review: dict[str, Any]) -> str:
    response = review["response"]
    if not response["allowed"]:
        return "denied"
    return "patched" if "patch" in response else "allowed"


def _json(body: Any, status: int = 200) -> Response:
    """A JSON response, serialised in C (orjson): the AdmissionReview is most of the work."""
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


Answer = Callable[[bytes], tuple[int, dict[str, Any]]]


def _admission(path: str, handler: Handler) -> Answer:
    """The HTTP status and JSON body that answer one admission request's body."""
    requests = {outcome: metrics.REQUESTS.labels(path, outcome)
                for outcome in ("allowed", "patched", "denied", "bad_request", "error")}
    duration = metrics.DURATION.labels(path)  # children looked up once, not per request

    def answer(body: bytes) -> tuple[int, dict[str, Any]]:
        started = time.perf_counter()
        try:
            review = parse_review(body)
        except BadReview as exc:
            requests["bad_request"].inc()
            log.warning("bad admission request", extra={"endpoint": path, "error": str(exc)})
            return 400, {"error": str(exc)}
        fields = {"uid": review.uid, "endpoint": path, "kind": str(review.kind),
                  "operation": review.operation, "namespace": review.namespace,
                  "object": review.name, "dryRun": review.dry_run}
        try:
            result = handler(review)
        except RecursionError:
            requests["bad_request"].inc()
            return 400, {"error": "request object is nested too deeply"}
        except Exception:
            # Not the caller's fault: a 500 makes the API server apply the failure policy.
            requests["error"].inc()
            log.exception("admission handler failed", extra=fields)
            return 500, {"error": f"internal error answering request {review.uid}"}
        outcome = _outcome(result)
        requests[outcome].inc()
        duration.observe(time.perf_counter() - started)
        log.info("admission", extra={**fields, "outcome": outcome})
        return 200, result

    return answer


def _flask_view(path: str, answer: Answer) -> Callable[[], Response]:
    def view() -> Response:
        status, body = answer(request.get_data(cache=False))  # over the limit: a 413
        return _json(body, status)

    view.__name__ = f"admission_{path.strip('/').replace('/', '_')}"
    return view


class AdmissionFastPath:
    """The admission endpoints as plain WSGI in front of Flask (`app.wsgi_app`, Flask's place
    for middleware). The API server POSTs every admission with a Content-Length; such a
    request is answered straight from the WSGI environ, without the request context, URL
    routing and Request/Response objects Flask builds per request, which cost as much as the
    admission itself. Anything else (another method, no or too large a Content-Length, every
    other path) goes to Flask, whose routes answer the same requests the same way."""

    def __init__(self, flask_wsgi: Any, answers: dict[str, Answer], max_bytes: int) -> None:
        self._flask = flask_wsgi
        self._answers = answers
        self._max_bytes = max_bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        answer = self._answers.get(environ.get("PATH_INFO", ""))
        length = environ.get("CONTENT_LENGTH") or ""
        if answer is None or environ.get("REQUEST_METHOD") != "POST" or not length.isdigit() \
                or int(length) > self._max_bytes:
            return self._flask(environ, start_response)
        status, body = answer(environ["wsgi.input"].read(int(length)))
        data = orjson.dumps(body)
        start_response(f"{status} {HTTPStatus(status).phrase}", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]


def create_app(policy: Policy | None = None, *,
               registry: Registry | None = None,
               injection_settings: InjectionSettings | None = None,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
               endpoints: dict[str, Handler] | None = None) -> Flask:
    """The webhook's WSGI app: VmGroup rules for one cluster policy, and injection of the
    initializers in `registry` (kept current by a ConfigMap watch; empty when None)."""
    policy = policy or Policy()
    if registry is None:
        registry = Registry()
        registry.replace([])
    settings = injection_settings or InjectionSettings(
        prefix="initializer.kubernetes.io/", excluded_namespaces=frozenset())

    def inject(request: AdmissionRequest) -> dict[str, Any]:
        return injection.handle(request, registry.snapshot(), settings)

    handlers: dict[str, Handler] = endpoints or {
        "/mutate/vmgroups": functools.partial(vmgroup.mutate, policy=policy),
        "/validate/vmgroups": functools.partial(vmgroup.validate, policy=policy),
        INJECT_PATH: inject,
    }
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes
    answers = {path: _admission(path, handler) for path, handler in handlers.items()}
    for path, answer in answers.items():
        app.add_url_rule(path, view_func=_flask_view(path, answer), methods=["POST"])
    app.wsgi_app = AdmissionFastPath(app.wsgi_app, answers, max_request_bytes)  # type: ignore[method-assign]

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    @app.get("/readyz")
    def readyz() -> tuple[str, int]:
        # Not ready until the initializers are known: refusing a workload's annotation
        # because the first list has not arrived yet would be wrong.
        return ("ok", 200) if registry.synced.is_set() else ("initializers not synced", 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # 404, 405, 413 (body over the limit)...: a JSON error the caller can read, not HTML.
        return _json({"error": f"{exc.name}: {exc.description}"}, exc.code or 400)

    return app
