"""Structured logs: one JSON object per line, with the admission request's uid when there is one.

Only identities are logged (uid, kind, namespace/name, operation, outcome), never object
content: a Pod's env or an initializer's config may hold secrets.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

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
        return json.dumps(entry, default=str)


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
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {"gunicorn.error": stderr, "gunicorn.access": access},
    }
