"""Process identity and stopping, on real child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from servergroup.common.errors import ProcessFailed
from servergroup.common.process import (
    Ended,
    ProcessIdentity,
    alive,
    command_line,
    group_members,
    is_stopped,
    process_start_time,
    stop_all,
    stop_group,
    stop_group_async,
    stop_process,
    stop_process_async,
    wait_stopped,
)

pytestmark = pytest.mark.timeout(30)

Spawn = Callable[..., subprocess.Popen[bytes]]

#: A child that says "ready" once its SIGTERM disposition is set, then sleeps.
CHILD = """
import signal, sys, time
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    started: list[subprocess.Popen[bytes]] = []

    def start(mode: str = "default") -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, mode], stdout=subprocess.PIPE)
        started.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def test_identity_tells_a_reused_pid_apart() -> None:
    me = ProcessIdentity.me()
    assert me.pid == os.getpid()
    assert me.start_time == process_start_time(os.getpid())
    assert alive(me)
    assert alive(me.pid)
    assert not alive(ProcessIdentity(pid=me.pid, start_time=me.start_time + 1))


def test_identity_checks_the_command_line(spawn: Spawn) -> None:
    child = spawn()
    assert ProcessIdentity.of(child.pid, argv_check=lambda argv: "-c" in argv) is not None
    assert ProcessIdentity.of(child.pid, argv_check=lambda argv: "etcd" in argv) is None
    argv = command_line(child.pid)
    assert argv is not None
    assert argv[0] == sys.executable


def test_an_exited_child_is_not_alive_even_before_it_is_reaped(spawn: Spawn) -> None:
    child = spawn()
    identity = ProcessIdentity.of(child.pid)
    assert identity is not None
    child.kill()
    while process_start_time(child.pid) is not None:  # a zombie until reaped
        os.sched_yield()
    assert not alive(identity)
    assert command_line(child.pid) is None
    assert stop_process(identity, term_timeout=1.0) is Ended.GONE


def test_sigterm_is_enough_for_a_well_behaved_process(spawn: Spawn) -> None:
    child = spawn()
    identity = ProcessIdentity.of(child.pid)
    assert identity is not None
    assert stop_process(identity, term_timeout=5.0) is Ended.TERMINATED
    assert child.wait(1) == -signal.SIGTERM


def test_sigkill_follows_when_sigterm_is_ignored(spawn: Spawn) -> None:
    child = spawn("ignore")
    assert stop_process(child.pid, term_timeout=0.3) is Ended.KILLED
    assert child.wait(1) == -signal.SIGKILL


def test_a_stopped_process_is_woken_to_act_on_sigterm(spawn: Spawn) -> None:
    child = spawn()
    os.kill(child.pid, signal.SIGSTOP)
    wait_stopped(child.pid)
    assert is_stopped(child.pid)
    assert stop_process(child.pid, term_timeout=5.0) is Ended.TERMINATED
    assert child.wait(1) == -signal.SIGTERM


def test_a_stale_identity_is_never_signalled(spawn: Spawn) -> None:
    child = spawn()
    identity = ProcessIdentity.of(child.pid)
    assert identity is not None
    stale = ProcessIdentity(pid=child.pid, start_time=identity.start_time - 1)
    assert stop_process(stale, term_timeout=0.1) is Ended.GONE
    assert child.poll() is None  # the process now behind the PID was left alone


async def test_async_stop(spawn: Spawn) -> None:
    polite, stubborn = spawn(), spawn("ignore")
    assert await stop_process_async(polite.pid, term_timeout=5.0) is Ended.TERMINATED
    assert await stop_process_async(stubborn.pid, term_timeout=0.3) is Ended.KILLED
    assert polite.wait(1) == -signal.SIGTERM
    assert stubborn.wait(1) == -signal.SIGKILL


#: A group leader that forks one child ignoring SIGTERM and one that does not.
GROUP = f"""
import subprocess, sys
code = {CHILD!r}
kids = [subprocess.Popen([sys.executable, "-c", code, mode], stdout=subprocess.PIPE)
        for mode in ("ignore", "default")]
for kid in kids:
    kid.stdout.readline()
print(" ".join(str(k.pid) for k in kids), flush=True)
sys.stdin.read()
"""


def _group() -> tuple[subprocess.Popen[bytes], list[int]]:
    leader = subprocess.Popen(
        [sys.executable, "-c", GROUP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert leader.stdout is not None
    kids = [int(pid) for pid in leader.stdout.readline().split()]
    assert sorted(group_members(leader.pid)) == sorted([leader.pid, *kids])
    return leader, kids


def _close(leader: subprocess.Popen[bytes]) -> None:
    for pipe in (leader.stdin, leader.stdout):
        if pipe is not None:
            pipe.close()


def test_a_whole_group_is_stopped() -> None:
    leader, kids = _group()
    try:
        assert stop_group(leader.pid, term_timeout=0.5) == 3
        assert group_members(leader.pid) == []
        assert not any(alive(pid) for pid in kids)
    finally:
        leader.kill()
        leader.wait(5)
        _close(leader)


async def test_a_whole_group_is_stopped_from_asyncio() -> None:
    leader, kids = _group()
    try:
        await stop_group_async(leader.pid, term_timeout=0.5)
        assert group_members(leader.pid) == []
        assert not any(alive(pid) for pid in kids)
        assert leader.wait(1) == -signal.SIGTERM
    finally:
        leader.kill()
        leader.wait(5)
        _close(leader)


def test_stop_all_lists_afresh_and_reports_survivors(spawn: Spawn) -> None:
    children = [spawn(), spawn("ignore")]
    pids = [c.pid for c in children]
    thawed: list[bool] = []
    ended = stop_all(
        lambda: [pid for pid in pids if alive(pid)],
        what="the test",
        term_timeout=0.3,
        after_term=lambda: thawed.append(True),
    )
    assert ended == 2
    assert thawed == [True]
    assert [c.wait(1) for c in children] == [-signal.SIGTERM, -signal.SIGKILL]
    with pytest.raises(ProcessFailed, match=r"processes \[1\] of the immortal did not exit"):
        stop_all(lambda: [1], what="the immortal", term_timeout=0.0, kill_timeout=0.0)


def test_without_pidfds_psutil_does_the_same(spawn: Spawn, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels before 5.3 have no pidfd_open: the psutil path must stop processes alike."""

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    polite, stubborn = spawn(), spawn("ignore")
    identity = ProcessIdentity.of(polite.pid)
    assert identity is not None
    assert stop_process(identity, term_timeout=5.0) is Ended.TERMINATED
    assert stop_process(stubborn.pid, term_timeout=0.3) is Ended.KILLED
    assert polite.wait(1) == -signal.SIGTERM
    assert stubborn.wait(1) == -signal.SIGKILL


def test_the_command_line_of_a_process_in_an_exec_is_never_read_empty() -> None:
    """A shell that execs itself over and over, with a mark in its arguments each time:
    every read while it runs names the mark (an exec's moment without arguments is
    waited out), or the process is gone. Without the wait, about one read in fifty came
    back empty here."""
    script = 'n=$1; [ "$n" -gt 0 ] || exit 0; exec sh -c "$0" "$0" $((n-1)) MARK'
    proc = subprocess.Popen(["sh", "-c", script, script, "1500", "MARK"])
    reads: list[list[str] | None] = []
    try:
        while proc.poll() is None:
            reads.append(command_line(proc.pid))
    finally:
        proc.kill()
        proc.wait(10)
    seen = [argv for argv in reads if argv is not None]
    assert len(seen) > 100
    assert all("MARK" in argv for argv in seen), [a for a in seen if "MARK" not in a][:3]


def test_a_kernel_thread_reads_as_no_arguments_at_once() -> None:
    """kthreadd (PID 2) and its threads have no command line: none is waited for."""
    began = time.monotonic()
    assert command_line(2) == []
    assert time.monotonic() - began < 0.1
