"""The stack's own promises: clear errors when a part cannot start, and no orphan processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hack.stack import REPO, LocalStack, StackError, poll
from hack.stack.process import exited


@pytest.mark.kube
def test_a_part_that_cannot_start_fails_fast_with_its_log(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, vcenter=False)
    assert stack.etcd is not None
    stack.etcd.process.argv.append("--no-such-flag")
    with pytest.raises(StackError, match=r"(?s)etcd exited with code \d+.*no-such-flag"):
        stack.start()
    # Nothing it started survives the failure.
    assert all(not p.process.running() for p in stack.parts)


@pytest.mark.vcenter
def test_stop_leaves_no_process(tmp_path: Path) -> None:
    with LocalStack(tmp_path, kube=False) as stack:
        pids = list(stack.pids().values())
        assert pids
        assert not any(exited(pid) for pid in pids)
    assert all(exited(pid) for pid in pids)


@pytest.mark.vcenter
def test_children_die_with_a_killed_owner(tmp_path: Path) -> None:
    """SIGKILL cannot be caught, so only PR_SET_PDEATHSIG can stop the owner's children."""
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, threading
            from pathlib import Path
            from hack.stack import LocalStack
            stack = LocalStack(Path({str(tmp_path)!r}), kube=False).start()
            print(stack.pids()["vcsim"], flush=True)
            threading.Event().wait()
        """)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    vcsim_pid = int(owner.stdout.readline())
    assert not exited(vcsim_pid)
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    poll(lambda: exited(vcsim_pid), timeout=15, what="vcsim to die with its owner")


@pytest.mark.kube
def test_forked_children_do_not_outlive_their_part(tmp_path: Path) -> None:
    """gunicorn's workers are forked (no PR_SET_PDEATHSIG): stopping the webhook must stop them
    too, even when its master is killed outright."""
    with LocalStack(tmp_path, vcenter=False) as stack:
        webhook = stack.start_webhook()
        master = webhook.process.pid
        assert master is not None
        workers = [int(p) for p in Path(f"/proc/{master}/task/{master}/children")
                   .read_text().split()]
        assert len(workers) == 2
        os.kill(master, signal.SIGKILL)  # no graceful shutdown to stop the workers
    assert all(exited(pid) for pid in workers)
