"""Child processes of the local stack, and polling with deadlines.

Every process the stack starts gets PR_SET_PDEATHSIG: when the Python process that started it
dies, even by SIGKILL, the kernel sends the child SIGTERM. That is what makes "no orphan
processes, ever" hold when pytest is killed by a timeout or `make dev`'s supervisor crashes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class StackError(RuntimeError):
    """A part of the local stack failed to start, or did not become ready in time."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def poll(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    alive: Callable[[], None] | None = None,
    fatal: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `check` until it returns something other than None/False, or raise after `timeout`.

    Exceptions from `check` count as "not yet" (the last one is reported on timeout), except
    those in `fatal`, which no amount of waiting can cure. `alive` is called each round and may
    raise to fail fast, e.g. when the awaited process died.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    delay = interval
    while True:
        if alive is not None:
            alive()
        try:
            result = check()
        except fatal:
            raise
        except Exception as exc:  # any failure means "not ready yet"
            last_error = exc
        else:
            if result is not None and result is not False:
                return result
        if time.monotonic() >= deadline:
            detail = f": last error: {last_error!r}" if last_error else ""
            raise StackError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def exited(pid: int) -> bool:
    """True once `pid` no longer runs (a zombie awaiting its reaper counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (utime and stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_private(path: Path, data: bytes | str) -> Path:
    """Write `path` readable by its owner only, from the first byte (keys, kubeconfigs,
    passwords): never a moment with wider permissions, even when the file existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(data.encode() if isinstance(data, str) else data)
    return path


class Process:
    """One long-running binary with its log file."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path,
                 env: dict[str, str] | None = None, *, grace: float = 15.0) -> None:
        self.name = name
        self.grace = grace  # SIGTERM, then this long before SIGKILL
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._env = env
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self) -> Process:
        if self.running():
            raise StackError(f"{self.name} was started already")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self._env or {})},
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only, no locks taken
                start_new_session=True,  # Ctrl-C in a terminal reaches us; we stop in order
            )
        return self

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def check_alive(self) -> None:
        """Raise StackError with the log tail if the process has exited."""
        if self._popen is not None and self._popen.poll() is not None:
            raise StackError(
                f"{self.name} exited with code {self._popen.returncode}; "
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def _log_text(self, since: int = 0) -> str | None:
        try:
            with self.log_path.open("rb") as log:
                log.seek(since)
                return log.read().decode(errors="replace")
        except OSError:
            return None

    def log_entries(self, since: int = 0) -> list[dict[str, Any]]:
        """The JSON lines of the log from byte `since` on, parsed (our parts log one object per
        line, written by a thread of their own: poll for one that should come). Other lines
        are skipped."""
        entries = []
        for line in (self._log_text(since) or "").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    entries.append(json.loads(line))
        return entries

    def log_tail(self, lines: int = 25) -> str:
        text = self._log_text()
        return "(no log)" if text is None else "\n".join(text.splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        if self.running() and self._popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._popen.pid, sig)

    def _signal_group(self, sig: int) -> None:
        # Each part runs in a session (and process group) of its own, which its children share:
        # gunicorn's workers are forked, and PR_SET_PDEATHSIG is not inherited across a fork.
        if self._popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, sig)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM to the process and its children, SIGKILL after `grace` seconds (default: the
        process's own); always reaps the child and leaves nothing of its group behind."""
        grace = self.grace if grace is None else grace
        if self._popen is None:
            return
        if self._popen.poll() is None:
            self._signal_group(signal.SIGCONT)  # a SIGSTOPped process cannot act on SIGTERM
            self._signal_group(signal.SIGTERM)
            try:
                self._popen.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._popen.wait()
        self._signal_group(signal.SIGKILL)  # whatever of the group outlived its leader
