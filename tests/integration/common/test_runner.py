"""The one subprocess runner, on real programs: output, errors, timeouts, cancellation, forks."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servergroup.common.errors import MissingDependency, ProcessFailed
from servergroup.common.process import alive, stop_process
from servergroup.common.runner import (
    CommandFailed,
    CommandNotFound,
    CommandTimedOut,
    run,
    run_async,
)

pytestmark = pytest.mark.timeout(30)

#: A program whose process group holds a grandchild that ignores SIGTERM; it prints its PID.
STUBBORN_GROUP = "sh -c 'trap \"\" TERM; exec sleep 30' & echo $!; sleep 30"


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """PIDs a test expects gone; any still running are stopped after the test."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        stop_process(pid, term_timeout=1.0)


def test_output_and_status() -> None:
    done = run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (done.returncode, done.out, done.err) == (3, "out\n", "err\n")
    assert not done.ok
    assert done.argv == ("sh", "-c", "echo out; echo err >&2; exit 3")


def test_check_says_what_failed_in_one_sentence() -> None:
    with pytest.raises(CommandFailed) as caught:
        run(["sh", "-c", "echo 'no such device.' >&2; exit 1"], timeout=10, check=True)
    assert str(caught.value) == "`sh -c echo 'no such device.' >&2; exit 1` failed: no such device."
    assert caught.value.completed.returncode == 1
    with pytest.raises(CommandFailed, match=r"failed: exit status 4\.$"):
        run(["sh", "-c", "exit 4"], timeout=10, check=True)


def test_input_and_large_output() -> None:
    data = os.urandom(1 << 20)
    done = run(["cat"], timeout=10, input=data, check=True)
    assert done.stdout == data
    big = run([sys.executable, "-c", "print('x' * (3 << 20))"], timeout=10, check=True)
    assert len(big.stdout) == (3 << 20) + 1


def test_a_missing_program() -> None:
    with pytest.raises(CommandNotFound, match="cannot run no-such-program-here") as caught:
        run(["no-such-program-here"], timeout=10)
    assert isinstance(caught.value, MissingDependency)


def test_a_timeout_ends_the_whole_group(leftovers: list[int]) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimedOut, match=r"did not finish within 0\.5 s\.$") as caught:
        run(["sh", "-c", STUBBORN_GROUP], timeout=0.5, term_timeout=0.3)
    grandchild = int(caught.value.completed.out.split()[0])
    leftovers.append(grandchild)
    assert not alive(grandchild)  # it ignored SIGTERM: SIGKILL ended it
    assert caught.value.completed.returncode == -signal.SIGTERM
    assert time.monotonic() - started < 5
    assert isinstance(caught.value, ProcessFailed)


def test_a_forked_child_holding_the_pipes_does_not_hang_us(leftovers: list[int]) -> None:
    started = time.monotonic()
    done = run(["sh", "-c", "sleep 30 & echo $!; echo started"], timeout=10, drain_timeout=0.2)
    assert done.returncode == 0
    daemon, said = done.out.split()
    leftovers.append(int(daemon))
    assert said == "started"
    assert time.monotonic() - started < 3
    assert alive(int(daemon))  # what the program started keeps running


async def test_async_output_input_and_status() -> None:
    done = await run_async(["sh", "-c", "cat; echo err >&2; exit 2"], timeout=10, input="hi\n")
    assert (done.returncode, done.out, done.err) == (2, "hi\n", "err\n")
    with pytest.raises(CommandFailed, match="failed: err"):
        done.check()


async def test_async_timeout_ends_the_whole_group(leftovers: list[int]) -> None:
    with pytest.raises(CommandTimedOut) as caught:
        await run_async(["sh", "-c", STUBBORN_GROUP], timeout=0.5, term_timeout=0.3)
    grandchild = int(caught.value.completed.out.split()[0])
    leftovers.append(grandchild)
    assert not alive(grandchild)


async def test_async_forked_child_does_not_hang_us(leftovers: list[int]) -> None:
    started = time.monotonic()
    done = await run_async(
        ["sh", "-c", "sleep 30 & echo $!"], timeout=10, drain_timeout=0.2, check=True
    )
    leftovers.append(int(done.out))
    assert time.monotonic() - started < 3
    assert alive(int(done.out))


async def test_cancelling_ends_the_whole_group(tmp_path: Path, leftovers: list[int]) -> None:
    # The program says its grandchild's PID through a FIFO, then runs on.
    fifo = tmp_path / "grandchild"
    os.mkfifo(fifo)
    script = 'sh -c \'trap "" TERM; exec sleep 30\' & echo $! > "$0"; sleep 30'
    task = asyncio.create_task(
        run_async(["sh", "-c", script, str(fifo)], timeout=20, term_timeout=0.3)
    )
    async with asyncio.timeout(10):
        grandchild = int(await asyncio.to_thread(fifo.read_text))
    leftovers.append(grandchild)
    assert alive(grandchild)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(grandchild)


def test_without_pidfds_the_exit_is_still_seen(
    leftovers: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kernels before 5.3 have no pidfd_open: the runner looks for the exit now and then."""

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    started = time.monotonic()
    done = run(["sh", "-c", "sleep 30 & echo $!"], timeout=10, drain_timeout=0.2, check=True)
    leftovers.append(int(done.out))
    assert time.monotonic() - started < 3
    with pytest.raises(CommandTimedOut):
        run(["sleep", "30"], timeout=0.3)


def test_output_limit_keeps_the_tail_of_each_stream() -> None:
    script = "import sys; print('x' * 100000 + 'END'); sys.stderr.write('y' * 50000 + 'BYE')"
    done = run([sys.executable, "-c", script], timeout=30, output_limit=16)
    assert done.stdout == b"x" * 12 + b"END\n"
    assert done.stderr == b"y" * 13 + b"BYE"
