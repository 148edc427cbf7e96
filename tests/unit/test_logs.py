"""JSON log lines written by a thread of their own: in order, none lost, none repeated."""

from __future__ import annotations

import io
import json
import logging
import os
import select
import threading

from hack.stack import poll
from kubekit.logs import BackgroundStreamHandler, JsonFormatter


def _logger(stream: io.StringIO) -> tuple[logging.Logger, BackgroundStreamHandler]:
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.Logger(f"test-{id(stream)}")
    logger.addHandler(handler)
    return logger, handler


def test_lines_of_many_threads_all_arrive_in_each_threads_order() -> None:
    stream = io.StringIO()
    logger, handler = _logger(stream)

    def log(thread: int) -> None:
        for i in range(500):
            logger.warning("admission", extra={"writer": thread, "i": i})

    threads = [threading.Thread(target=log, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    poll(lambda: stream.getvalue().count("\n") == 2000, timeout=10,
         what="the writer thread to write every line")
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    for thread in range(4):
        assert [e["i"] for e in entries if e["writer"] == thread] == list(range(500))
    assert {e["msg"] for e in entries} == {"admission"}
    handler.close()


def test_flush_writes_what_is_pending_at_once() -> None:
    stream = io.StringIO()
    logger, handler = _logger(stream)
    logger.error("stopping", extra={"uid": "u-1"})
    handler.flush()  # what logging.shutdown() does at exit
    (entry,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert (entry["msg"], entry["uid"], entry["level"]) == ("stopping", "u-1", "error")


def test_a_forked_child_writes_its_own_lines_and_not_its_parents() -> None:
    """The child's writer is a thread of its own (the parent's did not survive the fork), and
    lines pending at the fork are the parent's to write."""
    read, write = os.pipe()
    done_read, done_write = os.pipe()
    with os.fdopen(write, "w") as out:
        logger, handler = _logger(out)  # type: ignore[arg-type]
        logger.warning("before the fork")  # likely still pending when fork() comes
        pid = os.fork()
        if pid == 0:  # the child: one line, written by its writer thread; then wait, and out
            logger.warning("from the child")
            os.read(done_read, 1)
            os._exit(0)
        logger.warning("from the parent")
        handler.flush()
        lines: list[str] = []
        buffer = b""

        def arrived() -> bool:
            nonlocal buffer
            if select.select([read], [], [], 0.1)[0]:
                buffer += os.read(read, 65536)
            lines[:] = buffer.decode().splitlines()
            return len(lines) >= 3

        try:
            poll(arrived, timeout=10, what="the child's line")
        finally:
            os.write(done_write, b"x")
            os.waitpid(pid, 0)
            for fd in (read, done_read, done_write):
                os.close(fd)
    assert sorted(json.loads(line)["msg"] for line in lines) == [
        "before the fork", "from the child", "from the parent"]
