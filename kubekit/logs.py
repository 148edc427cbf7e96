"""Structured logs: one JSON object per line, with the admission request's uid when there is one.

Only identities are logged (uid, kind, namespace/name, operation, outcome), never object
content: a Pod's env or an initializer's config may hold secrets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from typing import Any, TextIO

import orjson

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class BackgroundStreamHandler(logging.Handler):
    """A StreamHandler whose writes a thread of its own makes, all pending lines at once.

    A thread that logs formats its line and goes on: it neither waits for a write to stderr
    nor for the handler's lock while another thread writes (at thousands of admissions a
    second that lock and one write per line were a tenth of the webhook's time). Lines keep
    their order; flush() (at exit, through logging.shutdown) writes what is pending. A fork
    (gunicorn's workers) writes the pending lines first, so the child does not repeat them.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        self._pending: deque[str] = deque()  # append and popleft are atomic: no lock
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._writes = threading.Lock()  # one writer at a time: the thread, or flush()
        # Fork hooks stay registered for good; the handler need not stay with them.
        me = weakref.WeakMethod(self.flush), weakref.WeakMethod(self._forget_writer)
        os.register_at_fork(before=lambda: _call(me[0]), after_in_child=lambda: _call(me[1]))

    def handle(self, record: logging.LogRecord) -> bool:
        # emit() is thread-safe by itself: no handler lock for every line, as Handler takes.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line)
        if self._writer is None:
            self._start_writer()
        if not self._wake.is_set():
            self._wake.set()

    def flush(self) -> None:
        with self._writes:
            lines = []
            with contextlib.suppress(IndexError):
                while True:
                    lines.append(self._pending.popleft())
            if lines:
                self.stream.write("".join(lines))
            self.stream.flush()

    def _start_writer(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # Handler.createLock() made it
            if self._writer is None:
                self._writer = threading.Thread(target=self._write, name="log-writer",
                                                daemon=True)
                self._writer.start()

    def _write(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # stderr gone: nothing left to tell it to
                return

    def _forget_writer(self) -> None:
        # The parent's thread did not survive the fork: the child starts its own when it logs.
        self._writer, self._pending = None, deque()
        self._wake = threading.Event()
        self._writes = threading.Lock()


def _call(method: weakref.WeakMethod[Any]) -> None:
    if (bound := method()) is not None:
        bound()


def dict_config(level: str = "info") -> dict[str, Any]:
    """A logging.config.dictConfig that sends every logger (ours and gunicorn's) to stderr as
    JSON lines; gunicorn applies it in the master, and the workers inherit it."""
    stderr = {"level": level.upper(), "handlers": ["stderr"], "propagate": False}
    # The app logs every admission with its uid; gunicorn's access log would only repeat it.
    access = {**stderr, "level": "WARNING"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"()": BackgroundStreamHandler, "formatter": "json"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {"gunicorn.error": stderr, "gunicorn.access": access},
    }
