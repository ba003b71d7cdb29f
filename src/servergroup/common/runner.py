"""Running a program to completion: a timeout, its own process group, output that cannot hang us.

Theory of operation
-------------------
`run` (blocking) and `run_async` (asyncio) start `argv` in a new session,
so that it and everything it forks form one process group that nobody
else's signals reach and that we can end as a whole. They feed it `input`,
collect its stdout and stderr, and return a `Completed` (argv, exit
status, both outputs), or, with `check=True`, raise `CommandFailed` whose
message is one sentence: the command and the first line of what it said on
stderr (or its exit status).

- **Timeout or cancellation**: the whole group gets SIGTERM, then, after
  `term_timeout`, SIGKILL (`common.process.stop_group`), and the leader is
  reaped; `CommandTimedOut` (a `CommandFailed`) is raised, or the
  cancellation goes on. Nothing of the command outlives the call, except a
  process that left the group on purpose (`setsid`).
- **A child that keeps the pipes open**: a program may fork a daemon that
  inherits stdout and stderr (an OCF agent's `start` does). Its output does
  not end when the program exits, so reading to end-of-file could wait for
  ever. The runner waits for the *program's* exit (through a pidfd where
  the kernel has them), then reads what is already in the pipes for at most
  `drain_timeout` and returns; the daemon keeps running (starting it was the
  point), its end of the pipes now leading nowhere.
- The program is not found: `CommandNotFound` (a `MissingDependency`).
- **Bounded output**: with `output_limit`, only the last that many bytes of
  each of stdout and stderr are kept (a chatty program cannot fill our
  memory; the tail is where a program says how it ended).

The child is a plain `subprocess.Popen` watched with a selector (blocking)
or the event loop's readers (asyncio), not asyncio's subprocess transport,
whose `wait()` differs between Python versions on exactly the open-pipe
case above.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from servergroup.common.errors import MissingDependency, ProcessFailed
from servergroup.common.process import POLL_INTERVAL, stop_group, stop_group_async

#: How long a program's process group gets between SIGTERM and SIGKILL by default.
TERM_TIMEOUT = 2.0
#: How long output is still read once the program has exited (see the docstring).
DRAIN_TIMEOUT = 0.5
_CHUNK = 1 << 16


def describe(argv: Sequence[str]) -> str:
    """The command as a user would type it, for messages."""
    return " ".join(argv)


@dataclass(frozen=True, slots=True, kw_only=True)
class Completed:
    """A program that ran to its end: its exit status (negative: the signal) and output."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def out(self) -> str:
        """stdout as text (UTF-8, undecodable bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        """stderr as text (UTF-8, undecodable bytes replaced)."""
        return self.stderr.decode("utf-8", "replace")

    def reason(self) -> str:
        """The first line of stderr, else the exit status, in words."""
        for line in self.err.splitlines():
            if line.strip():
                return line.strip()
        if self.returncode < 0:
            return f"killed by signal {-self.returncode}"
        return f"exit status {self.returncode}"

    def check(self) -> Completed:
        """Self when the program succeeded, else raise `CommandFailed`."""
        if self.returncode != 0:
            raise CommandFailed(
                f"`{describe(self.argv)}` failed: {self.reason().rstrip('.')}.",
                completed=self,
            )
        return self


class CommandFailed(ProcessFailed):
    """A program exited with a non-zero status, or did not finish in time."""

    def __init__(self, message: str, *, completed: Completed) -> None:
        super().__init__(message)
        self.completed = completed


class CommandTimedOut(CommandFailed):
    """A program did not finish within its timeout; its process group was ended."""


class CommandNotFound(MissingDependency):
    """The program to run is not installed (or not executable)."""

    def __init__(self, message: str, *, argv: Sequence[str]) -> None:
        super().__init__(message)
        self.argv = tuple(argv)


class _Child:
    """One started program: its pipes, what came out, and what is left to write in."""

    def __init__(
        self,
        argv: Sequence[str],
        input: bytes | None,
        env: Mapping[str, str] | None,
        cwd: Path | str | None,
        output_limit: int | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.output_limit = output_limit
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                env=env,
                cwd=cwd,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            if cwd is not None and not Path(cwd).is_dir():
                raise
            raise CommandNotFound(
                f"cannot run {self.argv[0]}: {exc.strerror or exc}.", argv=self.argv
            ) from None
        self.pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self.pidfd = os.pidfd_open(self.proc.pid)
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.stdout_fd = self.proc.stdout.fileno()
        self.stderr_fd = self.proc.stderr.fileno()
        self.outputs = {self.stdout_fd: bytearray(), self.stderr_fd: bytearray()}
        self.reading: set[int] = set(self.outputs)
        self.stdin_fd: int | None = None
        self.pending = memoryview(input or b"")
        self._drain_deadline: float | None = None
        self.overdue = False
        if self.proc.stdin is not None:
            self.stdin_fd = self.proc.stdin.fileno()
            os.set_blocking(self.stdin_fd, False)
            if not self.pending:
                self.close_stdin()
        for fd in self.reading:
            os.set_blocking(fd, False)

    @property
    def exited(self) -> bool:
        return self.proc.poll() is not None

    def read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            kept = self.outputs[fd]
            kept += chunk
            if self.output_limit is not None and len(kept) > self.output_limit:
                del kept[: len(kept) - self.output_limit]  # the tail says how it ended
        else:
            self.reading.discard(fd)

    def write(self) -> None:
        assert self.stdin_fd is not None
        try:
            written = os.write(self.stdin_fd, self.pending)
        except BlockingIOError:
            return
        except OSError:  # it closed its stdin (EPIPE): what it did not read, it did not want
            written = len(self.pending)
        self.pending = self.pending[written:]
        if not self.pending:
            self.close_stdin()

    def close_stdin(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self.stdin_fd = None

    def waiting(self, deadline: float, drain_timeout: float) -> float | None:
        """How long to wait for the next event; None when there is nothing more to wait for.

        That is: the program exited and its output is read (or `drain_timeout`
        has passed since it exited), or `deadline` has come (`overdue` says so).
        Call `begin` before the first call of a round.
        """
        now = time.monotonic()
        if self.exited:
            if not self.reading:
                return None
            if self._drain_deadline is None:
                self._drain_deadline = now + drain_timeout
            if now >= self._drain_deadline:
                return None
        elif now >= deadline:
            self.overdue = True
            return None
        until = deadline if self._drain_deadline is None else min(deadline, self._drain_deadline)
        wait = max(0.0, until - now)
        # Without a pidfd, nothing wakes us when the program exits: look now and then.
        return wait if self.pidfd is not None or self.exited else min(wait, POLL_INTERVAL)

    def begin(self) -> None:
        """Start a round of waiting (`waiting`)."""
        self._drain_deadline = None
        self.overdue = False

    def completed(self) -> Completed:
        returncode = self.proc.poll()
        assert returncode is not None
        return Completed(
            argv=self.argv,
            returncode=returncode,
            stdout=bytes(self.outputs[self.stdout_fd]),
            stderr=bytes(self.outputs[self.stderr_fd]),
        )

    def timed_out(self, timeout: float) -> CommandTimedOut:
        done = self.completed()
        return CommandTimedOut(
            f"`{describe(self.argv)}` did not finish within {timeout:g} s.", completed=done
        )

    def close(self) -> None:
        self.close_stdin()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _encode(input: bytes | str | None) -> bytes | None:
    return input.encode() if isinstance(input, str) else input


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    input: bytes | str | None = None,
    check: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    term_timeout: float = TERM_TIMEOUT,
    drain_timeout: float = DRAIN_TIMEOUT,
    output_limit: int | None = None,
) -> Completed:
    """Run `argv` to its end within `timeout` seconds, blocking; see the module's docstring."""
    child = _Child(argv, _encode(input), env, cwd, output_limit)
    try:
        with selectors.DefaultSelector() as selector:
            for fd in child.reading:
                selector.register(fd, selectors.EVENT_READ)
            if child.stdin_fd is not None:
                selector.register(child.stdin_fd, selectors.EVENT_WRITE)
            if child.pidfd is not None:
                selector.register(child.pidfd, selectors.EVENT_READ)
            _serve_blocking(child, selector, time.monotonic() + timeout, drain_timeout)
            if child.overdue:
                stop_group(child.proc.pid, term_timeout=term_timeout)
                child.proc.wait()
                _serve_blocking(child, selector, time.monotonic() + drain_timeout, drain_timeout)
                raise child.timed_out(timeout)
        done = child.completed()
    finally:
        if not child.exited:  # an exception of ours (KeyboardInterrupt...): leave nothing behind
            stop_group(child.proc.pid, term_timeout=term_timeout)
            child.proc.wait()
        child.close()
    return done.check() if check else done


def _serve_blocking(
    child: _Child, selector: selectors.BaseSelector, deadline: float, drain_timeout: float
) -> None:
    """Serve the pipes until the program exits and its output is read, or `deadline`."""
    child.begin()
    while (wait := child.waiting(deadline, drain_timeout)) is not None:
        for key, _ in selector.select(wait):
            fd = key.fd
            if fd == child.pidfd:
                selector.unregister(fd)  # it stays readable from now on
            elif fd == child.stdin_fd:
                child.write()
                if child.stdin_fd is None:
                    selector.unregister(fd)
            else:
                child.read(fd)
                if fd not in child.reading:
                    selector.unregister(fd)


async def run_async(
    argv: Sequence[str],
    *,
    timeout: float,
    input: bytes | str | None = None,
    check: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    term_timeout: float = TERM_TIMEOUT,
    drain_timeout: float = DRAIN_TIMEOUT,
    output_limit: int | None = None,
) -> Completed:
    """`run` for asyncio code; cancelling it ends the program's whole process group."""
    child = _Child(argv, _encode(input), env, cwd, output_limit)
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    watched: list[tuple[int, bool]] = []  # (fd, is a writer)

    def on_read(fd: int) -> None:
        child.read(fd)
        if fd not in child.reading:
            loop.remove_reader(fd)
            watched.remove((fd, False))
        wake.set()

    def on_write() -> None:
        fd = child.stdin_fd
        child.write()
        if child.stdin_fd is None and fd is not None:
            loop.remove_writer(fd)
            watched.remove((fd, True))
        wake.set()

    def on_exit() -> None:
        assert child.pidfd is not None
        loop.remove_reader(child.pidfd)
        watched.remove((child.pidfd, False))
        wake.set()

    for fd in child.reading:
        loop.add_reader(fd, on_read, fd)
        watched.append((fd, False))
    if child.stdin_fd is not None:
        loop.add_writer(child.stdin_fd, on_write)
        watched.append((child.stdin_fd, True))
    if child.pidfd is not None:
        loop.add_reader(child.pidfd, on_exit)
        watched.append((child.pidfd, False))

    async def serve(deadline: float) -> None:
        """`_serve_blocking` on the event loop's readers."""
        child.begin()
        while (wait := child.waiting(deadline, drain_timeout)) is not None:
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await wake.wait()

    try:
        await serve(time.monotonic() + timeout)
        if child.overdue:
            await stop_group_async(child.proc.pid, term_timeout=term_timeout)
            child.proc.wait()  # a zombie by now: the group has no live member left
            await serve(time.monotonic() + drain_timeout)
            raise child.timed_out(timeout)
        done = child.completed()
    except asyncio.CancelledError:
        await stop_group_async(child.proc.pid, term_timeout=term_timeout)
        child.proc.wait()
        raise
    finally:
        for fd, is_writer in watched:
            (loop.remove_writer if is_writer else loop.remove_reader)(fd)
        if not child.exited:
            stop_group(child.proc.pid, term_timeout=0.0, kill_timeout=term_timeout)
            child.proc.wait()
        child.close()
    return done.check() if check else done


__all__ = [
    "CommandFailed",
    "CommandNotFound",
    "CommandTimedOut",
    "Completed",
    "describe",
    "run",
    "run_async",
]
