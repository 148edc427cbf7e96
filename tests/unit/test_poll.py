"""poll(): the one way tests and the stack wait for something, always with a deadline."""

from __future__ import annotations

import itertools

import pytest

from hack.stack import StackError, poll


def test_returns_first_truthy_result() -> None:
    counter = itertools.count()
    assert poll(lambda: next(counter) >= 3 and "ready", timeout=5, what="x", interval=0.001) \
        == "ready"


def test_exceptions_mean_not_yet() -> None:
    calls = itertools.count()

    def flaky() -> str:
        if next(calls) < 2:
            raise ConnectionRefusedError("not up")
        return "up"

    assert poll(flaky, timeout=5, what="flaky", interval=0.001) == "up"


def test_timeout_names_what_and_last_error() -> None:
    def never() -> None:
        raise ConnectionRefusedError("port closed")

    with pytest.raises(StackError, match=r"waiting for the thing: last error: .*port closed"):
        poll(never, timeout=0.05, what="the thing", interval=0.01)


def test_fatal_errors_are_not_retried() -> None:
    calls = itertools.count()

    def wrong_password() -> None:
        next(calls)
        raise PermissionError("bad login")

    with pytest.raises(PermissionError):
        poll(wrong_password, timeout=5, what="login", fatal=(PermissionError,))
    assert next(calls) == 1


def test_alive_check_fails_fast() -> None:
    def dead() -> None:
        raise StackError("etcd exited with code 1")

    with pytest.raises(StackError, match="etcd exited"):
        poll(lambda: None, timeout=60, what="etcd", alive=dead)
