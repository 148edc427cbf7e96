"""A TLS proxy in front of the real API server that breaks watches on purpose.

Clients (the controller) talk to the proxy as if it were the API server; the proxy forwards
every request to the real one with the stack's admin credentials, untouched, except watches
when told to:

- `expire_next_watch()`: the next watch asks the real API server for resourceVersion 1, long
  compacted away, so it is the real API server that answers 410 Gone;
- `silent = True`: watches are accepted (200, headers) and then nothing is ever sent, as over a
  connection dropped by a middlebox without a FIN; the proxy records when the client gives up;
- `end_watches()`: the watches passing through now end (the client re-watches).

Every request is recorded (method, path, watch or not, what the proxy did) for tests to check.
"""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit


@dataclass
class Seen:
    method: str
    path: str  # without the query
    watch: bool
    fault: str  # "", "expired" or "silent"
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None


class ApiProxy:
    def __init__(self, upstream: str, ca: Path, client_cert: tuple[Path, Path],
                 serving_cert: tuple[Path, Path]) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 443)
        self._client_tls = ssl.create_default_context(cafile=str(ca))
        self._client_tls.load_cert_chain(*map(str, client_cert))
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_tls.load_cert_chain(*map(str, serving_cert))
        self.seen: list[Seen] = []
        self.silent = False
        self._expire = 0
        self._lock = threading.Lock()
        self._streams: set[http.client.HTTPSConnection] = set()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.socket = server_tls.wrap_socket(self._server.socket, server_side=True)
        self._server.proxy = self  # type: ignore[attr-defined]
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ApiProxy:
        threading.Thread(target=self._server.serve_forever, name="apiproxy", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.end_watches()
        self._server.shutdown()
        self._server.server_close()

    def expire_next_watch(self) -> None:
        with self._lock:
            self._expire += 1

    def end_watches(self) -> None:
        with self._lock:
            streams = list(self._streams)
        for conn in streams:
            if conn.sock is not None:
                conn.sock.shutdown(socket.SHUT_RDWR)  # the stream reads EOF and ends

    def watches(self, fault: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.watch and (fault is None or s.fault == fault)]

    def _record(self, seen: Seen) -> Seen:
        with self._lock:
            self.seen.append(seen)
        return seen

    def _take_expiry(self) -> bool:
        with self._lock:
            if self._expire:
                self._expire -= 1
                return True
            return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, as the API server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._forward()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _forward(self) -> None:
        proxy: ApiProxy = self.server.proxy  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query))
        watch = query.get("watch") in ("true", "1")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if watch and proxy.silent:
            seen = proxy._record(Seen(self.command, parts.path, True, "silent"))
            self._hold_silently(proxy)
            seen.ended = time.monotonic()
            return
        fault = "expired" if watch and proxy._take_expiry() else ""
        if fault:
            query["resourceVersion"] = "1"
        seen = proxy._record(Seen(self.command, parts.path, watch, fault))
        conn = http.client.HTTPSConnection(*proxy._upstream, context=proxy._client_tls)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() in ("accept", "content-type", "user-agent")}
        conn.request(self.command, f"{parts.path}?{urlencode(query)}", body, headers)
        response = conn.getresponse()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(key, value)
        if not watch:
            data = response.read()
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()
            seen.ended = time.monotonic()
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with proxy._lock:
            proxy._streams.add(conn)
        try:
            while line := response.readline():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
        except OSError:
            pass  # ended by end_watches()
        finally:
            with proxy._lock:
                proxy._streams.discard(conn)
            conn.close()
        with contextlib.suppress(OSError):  # the client may be gone already
            self.wfile.write(b"0\r\n\r\n")
        seen.ended = time.monotonic()

    def _hold_silently(self, proxy: ApiProxy) -> None:
        """200 and headers, then nothing, until the client hangs up (or the proxy stops)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        while not proxy._stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.2)
            if readable:
                try:
                    if not self.connection.recv(1):
                        break  # EOF: the client gave up on us
                except OSError:
                    break
        self.close_connection = True
