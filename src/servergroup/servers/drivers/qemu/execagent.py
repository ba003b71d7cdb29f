"""The exec agent: runs commands inside a VM for the host's exec broker (guest side).

Theory of operation. The agent owns one end of the exec port: the
virtio-serial port `org.servergroup.exec` (`--port`, a character device) or,
for tests without a VM, a UNIX stream socket standing in for it
(`--connect`). Frames (`execproto`) multiplex any number of sessions over
that one stream.

- OPEN starts `argv` with pipes for stdin/stdout/stderr in a session and
  process group of its own (setsid), so a SIGNAL reaches the whole job.
  STDIN and STDIN_EOF feed its stdin; its stdout and stderr come back as
  STDOUT and STDERR frames; EXIT carries its status once it has exited and
  its pipes have closed (or LINGER_TIMEOUT after it exited, for a job that
  left a background process holding them). Every session ends with exactly
  one EXIT; a command that could not start gets an ERROR sentence first and
  the status a shell would give (127 not found, 126 cannot run).
- The host going away (the device reads 0 bytes or polls a hang-up, the
  socket closes) or a RESET from the host hangs up every session, as a
  terminal hang-up would: SIGHUP to each process group, stdin closed, the
  session forgotten (its remaining output is read and discarded). A job
  started with nohup or setsid survives, as a user expects.
- The agent says "I know no sessions" with a sync (padding + RESET 0) each
  time it sees the host connect, and answers a host's RESET with a sync
  echoing the host's epoch, so the broker knows which sessions are alive.

Bounds: at most `max_sessions` live sessions (more get ERROR + EXIT 126).
Output pumps wait while more than `WRITE_HIGH_WATER` bytes are queued for
the host, so a host that does not read stops the children (their pipes
fill) instead of growing the agent. Stdin waiting for slow children is
bounded by `STDIN_HIGH_WATER`: above it the agent stops reading the port
until they catch up (all sessions wait: the port is one stream).

Commands run with the agent's environment, the `bin` directory of the
Python environment the agent runs from first on PATH (as an activated
virtual environment has it), so `servergroup` and the tools installed with
it are found as on the host; the host's `env` goes over that.

Nothing the host sends stops the agent; garbage is skipped by the decoder
and counted. Only SIGTERM/SIGINT (or cancellation) stop it, after hanging up
every session.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import select
import signal
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from servergroup.common.errors import ConfigError, PermissionNeeded, ServergroupError
from servergroup.common.logsetup import log_bug, setup_logging
from servergroup.servers.drivers.qemu.execproto import (
    MAX_PAYLOAD,
    STATUS_CANNOT_RUN,
    STATUS_NOT_FOUND,
    ExecDecoder,
    ExecProtocolError,
    ExitKind,
    ExitStatus,
    Frame,
    FrameType,
    OpenRequest,
    decode_open,
    decode_signal,
    encode_error,
    encode_exit,
    encode_frame,
    encode_sync,
)

log = logging.getLogger(__name__)

#: The exec port inside a VM.
DEFAULT_PORT_DEVICE = Path("/dev/virtio-ports/org.servergroup.exec")
DEFAULT_MAX_SESSIONS = 64
#: How often the agent checks whether the host side has come (back).
DEFAULT_POLL_INTERVAL = 0.2
#: Output pumps pause while more than this many bytes wait to go to the host.
WRITE_HIGH_WATER = 1 << 20
#: The port is read again once stdin waiting for children is below half of this.
STDIN_HIGH_WATER = 1 << 20
#: How long EXIT waits, after the process exited, for its pipes to close.
LINGER_TIMEOUT = 1.0
_READ_SIZE = MAX_PAYLOAD


class _PortEvents(Protocol):
    def host_connected(self) -> None: ...
    def host_disconnected(self, detail: str) -> None: ...
    def port_data(self, data: bytes) -> None: ...


class Port(Protocol):
    """The agent's end of the exec port."""

    @property
    def connected(self) -> bool: ...
    async def start(self) -> None: ...
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...


def command_environment(
    base: Mapping[str, str], extra: Mapping[str, str] | None, *, bin_dir: str
) -> dict[str, str]:
    """The environment of a command: `base` with `bin_dir` first on PATH, then `extra` over it."""
    path = [bin_dir, *(p for p in base.get("PATH", os.defpath).split(os.pathsep) if p != bin_dir)]
    return {**base, "PATH": os.pathsep.join(path), **(extra or {})}


class _WriteQueue:
    """Bytes waiting for the host, with waiters for "below the high-water mark"."""

    def __init__(self) -> None:
        self.chunks: deque[memoryview] = deque()
        self.size = 0
        self._below = asyncio.Event()
        self._below.set()

    def add(self, data: bytes) -> None:
        self.chunks.append(memoryview(data))
        self.size += len(data)
        if self.size > WRITE_HIGH_WATER:
            self._below.clear()

    def consumed(self, count: int) -> None:
        head = self.chunks[0]
        self.size -= count
        if count == len(head):
            self.chunks.popleft()
        else:
            self.chunks[0] = head[count:]
        if self.size <= WRITE_HIGH_WATER // 2:
            self._below.set()

    def clear(self) -> None:
        self.chunks.clear()
        self.size = 0
        self._below.set()

    async def wait_below(self) -> None:
        await self._below.wait()


class DevicePort:
    """The virtio-serial character device; 0 bytes read or a hang-up means the host is away."""

    def __init__(self, path: Path, events: _PortEvents, poll_interval: float) -> None:
        self._path = path
        self._events = events
        self._poll_interval = poll_interval
        self._fd = -1
        self._connected = False
        self._paused = False
        self._queue = _WriteQueue()
        self._host_gone = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    async def start(self) -> None:
        flags = os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            self._fd = os.open(self._path, flags)
        except FileNotFoundError:
            raise ConfigError(f"the exec port {self._path} does not exist.") from None
        except PermissionError:
            raise PermissionNeeded(f"no permission to open the exec port {self._path}.") from None
        except OSError as exc:
            raise ConfigError(f"cannot open the exec port {self._path}: {exc.strerror}.") from None
        self._watcher = asyncio.create_task(self._watch(), name="exec-port-watch")

    async def _watch(self) -> None:
        # While the host is away the device polls POLLHUP: look again every interval.
        poller = select.poll()
        poller.register(self._fd, select.POLLIN | select.POLLOUT)
        while True:
            revents = dict(poller.poll(0)).get(self._fd, 0)
            if revents & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                await asyncio.sleep(self._poll_interval)
                continue
            self._connected = True
            self._host_gone.clear()
            if not self._paused:
                asyncio.get_running_loop().add_reader(self._fd, self._readable)
            self._events.host_connected()
            await self._host_gone.wait()
            await asyncio.sleep(self._poll_interval)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._gone(f"reading the exec port failed: {exc.strerror}")
            return
        if not data:
            self._gone("the exec port read 0 bytes: the host side closed")
            return
        self._events.port_data(data)

    def _gone(self, detail: str) -> None:
        if not self._connected:
            return
        self._connected = False
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._fd)
        loop.remove_writer(self._fd)
        self._queue.clear()
        self._host_gone.set()
        self._events.host_disconnected(detail)

    def write(self, data: bytes) -> None:
        if not self._connected:
            return  # for a host that is gone: its sessions are being hung up
        was_empty = not self._queue.chunks
        self._queue.add(data)
        if was_empty:
            self._flush()

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue.chunks:
            try:
                written = os.write(self._fd, self._queue.chunks[0])
            except (BlockingIOError, InterruptedError):
                loop.add_writer(self._fd, self._flush)
                return
            except OSError as exc:
                self._gone(f"writing the exec port failed: {exc.strerror}")
                return
            self._queue.consumed(written)
        loop.remove_writer(self._fd)

    async def drain(self) -> None:
        await self._queue.wait_below()

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            if self._connected:
                asyncio.get_running_loop().remove_reader(self._fd)

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._connected:
                asyncio.get_running_loop().add_reader(self._fd, self._readable)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if self._fd >= 0:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._fd)
            loop.remove_writer(self._fd)
            os.close(self._fd)
            self._fd = -1
        self._connected = False
        self._queue.clear()


class _SocketProtocol(asyncio.Protocol):
    def __init__(self, port: SocketPort) -> None:
        self._port = port

    def data_received(self, data: bytes) -> None:
        self._port.events.port_data(data)

    def pause_writing(self) -> None:
        self._port.writable.clear()

    def resume_writing(self) -> None:
        self._port.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._port.lost(exc)


class SocketPort:
    """A UNIX stream socket standing in for the port: connected = the host is there.

    When the connection closes the host has gone; the agent connects again
    every poll interval, as the device is polled.
    """

    def __init__(self, path: Path, events: _PortEvents, poll_interval: float) -> None:
        self._path = path
        self.events = events
        self._poll_interval = poll_interval
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self.writable = asyncio.Event()
        self.writable.set()
        self._lost = asyncio.Event()
        self._connector: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._transport is not None

    async def start(self) -> None:
        self._connector = asyncio.create_task(self._connect_loop(), name="exec-port-connect")

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                transport, _ = await loop.create_unix_connection(
                    lambda: _SocketProtocol(self), os.fspath(self._path)
                )
            except OSError:
                await asyncio.sleep(self._poll_interval)
                continue
            assert isinstance(transport, asyncio.Transport)
            transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_HIGH_WATER // 2)
            self._transport = transport
            self._lost.clear()
            if self._paused:
                transport.pause_reading()
            self.events.host_connected()
            await self._lost.wait()
            await asyncio.sleep(self._poll_interval)

    def lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return
        self._transport = None
        self.writable.set()
        self._lost.set()
        why = f" ({exc})" if exc is not None else ""
        self.events.host_disconnected(f"the exec port socket closed{why}")

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def drain(self) -> None:
        await self.writable.wait()

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            if self._transport is not None:
                self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()

    def close(self) -> None:
        if self._connector is not None:
            self._connector.cancel()
            self._connector = None
        if self._transport is not None:
            transport, self._transport = self._transport, None
            transport.abort()
        self.writable.set()


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """What `ExecAgent` needs: exactly one of `port` (device) and `connect` (socket)."""

    port: Path | None = None
    connect: Path | None = None
    max_sessions: int = DEFAULT_MAX_SESSIONS
    poll_interval: float = DEFAULT_POLL_INTERVAL

    def __post_init__(self) -> None:
        if (self.port is None) == (self.connect is None):
            raise ConfigError("give exactly one exec port: --port DEVICE or --connect SOCKET.")
        if self.max_sessions < 1:
            raise ConfigError("the session limit must be at least 1.")
        if self.poll_interval <= 0:
            raise ConfigError("the poll interval must be positive.")


class _Session:
    """One command: its process, the stdin waiting for it, whether the host still wants it."""

    def __init__(self, agent: ExecAgent, session_id: int) -> None:
        self.agent = agent
        self.id = session_id
        self.live = True
        self.proc: asyncio.subprocess.Process | None = None
        self.stdin: deque[bytes | None] = deque()  # None marks the end of stdin
        self.stdin_size = 0
        self.stdin_ready = asyncio.Event()
        self.stdin_open = True  # until the process's stdin is closed

    def send(self, kind: FrameType, payload: bytes = b"") -> None:
        if self.live:
            self.agent.send(Frame(type=kind, session=self.id, payload=payload))

    async def run(self, request: OpenRequest) -> None:
        try:
            await self._run(request)
        except Exception:
            log_bug(log, f"exec session {self.id}")
            self._finish(ExitStatus(kind=ExitKind.EXITED, value=STATUS_CANNOT_RUN))
        finally:
            self.stdin_open = False
            self.drop_stdin()
            self.agent.ended(self)

    async def _run(self, request: OpenRequest) -> None:
        env = command_environment(os.environ, request.env, bin_dir=os.path.dirname(sys.executable))
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *request.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=request.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            status, sentence = _start_failure(request, exc)
            log.info("exec session %d: %s", self.id, sentence)
            self.send(FrameType.ERROR, encode_error(sentence))
            self._finish(ExitStatus(kind=ExitKind.EXITED, value=status))
            return
        log.info("exec session %d: pid %d runs %r", self.id, self.proc.pid, request.argv[0])
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        pumps = [
            asyncio.create_task(self._pump(self.proc.stdout, FrameType.STDOUT)),
            asyncio.create_task(self._pump(self.proc.stderr, FrameType.STDERR)),
        ]
        feeder = asyncio.create_task(self._feed_stdin())
        try:
            returncode = await self.proc.wait()
            _, pending = await asyncio.wait(pumps, timeout=LINGER_TIMEOUT)
            if pending:
                # A background job still holds the pipes: end the session anyway,
                # and keep reading (and discarding) so that job never blocks.
                log.info("exec session %d: exited; its pipes are still open", self.id)
                self._finish(ExitStatus.from_returncode(returncode))
                await asyncio.wait(pending)
            else:
                self._finish(ExitStatus.from_returncode(returncode))
        finally:
            feeder.cancel()
            for pump in pumps:
                pump.cancel()
            self.drop_stdin()

    def _finish(self, status: ExitStatus) -> None:
        self.send(FrameType.EXIT, encode_exit(status))
        self.live = False

    async def _pump(self, stream: asyncio.StreamReader, kind: FrameType) -> None:
        while data := await stream.read(_READ_SIZE):
            if self.live:
                self.send(kind, data)
                await self.agent.port_drain()

    async def _feed_stdin(self) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        pipe = self.proc.stdin
        try:
            while True:
                await self.stdin_ready.wait()
                while self.stdin:
                    chunk = self.stdin.popleft()
                    if chunk is None:
                        pipe.close()
                        return
                    self.stdin_size -= len(chunk)
                    self.agent.stdin_consumed(len(chunk))
                    pipe.write(chunk)
                    await pipe.drain()
                self.stdin_ready.clear()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the process closed its stdin: what it was sent is lost, as with a pipe
        finally:
            self.stdin_open = False
            self.drop_stdin()
            pipe.close()

    def add_stdin(self, data: bytes | None) -> None:
        """Queue bytes (or, for None, the end) for the process's stdin."""
        if not self.stdin_open:
            return
        if data is not None:
            self.stdin_size += len(data)
            self.agent.stdin_added(len(data))
        self.stdin.append(data)
        self.stdin_ready.set()

    def drop_stdin(self) -> None:
        if self.stdin_size:
            self.agent.stdin_consumed(self.stdin_size)
        self.stdin.clear()
        self.stdin_size = 0

    def signal(self, signum: int) -> None:
        """Deliver `signum` to the session's process group."""
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)

    def hang_up(self) -> None:
        """The host went away: SIGHUP to the process group, stdin ends, output is discarded."""
        self.signal(signal.SIGHUP)
        self.live = False
        self.drop_stdin()
        self.stdin.append(None)
        self.stdin_ready.set()


def _start_failure(request: OpenRequest, exc: OSError) -> tuple[int, str]:
    """The shell-like status and one sentence for a command that could not start."""
    name = request.argv[0]
    if request.cwd is not None and exc.filename == request.cwd:
        return STATUS_CANNOT_RUN, f"cannot change to the directory {request.cwd}: {exc.strerror}."
    if isinstance(exc, FileNotFoundError):
        return STATUS_NOT_FOUND, f"{name}: command not found."
    if isinstance(exc, PermissionError):
        return STATUS_CANNOT_RUN, f"{name}: permission denied."
    return STATUS_CANNOT_RUN, f"{name}: cannot run it: {exc.strerror}."


class ExecAgent:
    """Serves exec sessions on one port; see the module docstring."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._decoder = ExecDecoder()
        self._sessions: dict[int, _Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stdin_backlog = 0
        self._reading_paused = False
        self._port: Port
        if config.port is not None:
            self._port = DevicePort(config.port, self, config.poll_interval)
        else:
            assert config.connect is not None
            self._port = SocketPort(config.connect, self, config.poll_interval)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set (or cancellation), then hang up every session."""
        await self._port.start()
        where = self.config.port or self.config.connect
        log.info("exec agent ready on %s (at most %d sessions)", where, self.config.max_sessions)
        try:
            await stop.wait()
        finally:
            self.hang_up_all("the exec agent is stopping")
            self._port.close()
            # Children got SIGHUP; give their sessions a moment to reap them.
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=LINGER_TIMEOUT)
            log.info("exec agent stopped; %d bytes of garbage skipped", self._decoder.garbage)

    # -- port events

    def host_connected(self) -> None:
        self._decoder = ExecDecoder()
        log.info("host connected to the exec port")
        self._port.write(encode_sync(0))

    def host_disconnected(self, detail: str) -> None:
        log.info("host disconnected from the exec port: %s", detail)
        self.hang_up_all("the host went away")

    def port_data(self, data: bytes) -> None:
        try:
            garbage = self._decoder.garbage
            for frame in self._decoder.feed(data):
                self._handle(frame)
            if self._decoder.garbage != garbage:
                log.warning(
                    "skipped %d bytes that were not exec frames (%d in all)",
                    self._decoder.garbage - garbage,
                    self._decoder.garbage,
                )
        except Exception:
            log_bug(log, "the exec agent's port handler")

    # -- frames from the host

    def _handle(self, frame: Frame) -> None:
        kind = frame.type
        if kind is FrameType.RESET:
            self.hang_up_all("the host reset the port")
            self._port.write(encode_sync(frame.session))
            return
        if kind is FrameType.OPEN:
            self._open(frame)
            return
        session = self._sessions.get(frame.session)
        if session is None:
            log.debug("a %s frame for unknown session %d", kind.name, frame.session)
            return
        if kind is FrameType.STDIN:
            if frame.payload:
                session.add_stdin(frame.payload)
        elif kind is FrameType.STDIN_EOF:
            session.add_stdin(None)
        elif kind is FrameType.SIGNAL:
            try:
                signum = decode_signal(frame.payload)
            except ExecProtocolError as exc:
                log.warning("session %d: %s", frame.session, exc)
                return
            session.signal(signum)
        else:
            log.warning("the host sent a %s frame, which only a guest sends", kind.name)

    def _open(self, frame: Frame) -> None:
        sid = frame.session
        if sid in self._sessions or sid == 0:
            log.warning("the host opened session %d, which is in use or reserved", sid)
            return

        def refuse(sentence: str) -> None:
            self.send(Frame(type=FrameType.ERROR, session=sid, payload=encode_error(sentence)))
            status = ExitStatus(kind=ExitKind.EXITED, value=STATUS_CANNOT_RUN)
            self.send(Frame(type=FrameType.EXIT, session=sid, payload=encode_exit(status)))

        try:
            request = decode_open(frame.payload)
        except ExecProtocolError as exc:
            refuse(str(exc))
            return
        if len(self._sessions) >= self.config.max_sessions:
            refuse(f"the server already runs {len(self._sessions)} exec sessions, the most.")
            return
        session = _Session(self, sid)
        self._sessions[sid] = session
        task = asyncio.create_task(session.run(request), name=f"exec-session-{sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- sessions

    def send(self, frame: Frame) -> None:
        self._port.write(encode_frame(frame))

    async def port_drain(self) -> None:
        await self._port.drain()

    def ended(self, session: _Session) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    def hang_up_all(self, why: str) -> None:
        """End every session as a terminal hang-up would."""
        if self._sessions:
            log.info("hanging up %d exec sessions: %s", len(self._sessions), why)
        for session in list(self._sessions.values()):
            session.hang_up()
        self._sessions.clear()

    def stdin_added(self, count: int) -> None:
        self._stdin_backlog += count
        if self._stdin_backlog > STDIN_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self._port.pause_reading()

    def stdin_consumed(self, count: int) -> None:
        self._stdin_backlog -= count
        if self._stdin_backlog <= STDIN_HIGH_WATER // 2 and self._reading_paused:
            self._reading_paused = False
            self._port.resume_reading()


async def run_agent(config: AgentConfig, stop: asyncio.Event | None = None) -> None:
    """Run the exec agent until `stop` is set, SIGTERM/SIGINT, or cancellation."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await ExecAgent(config).run(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m servergroup.servers.drivers.qemu.execagent --port DEV | --connect SOCK`."""
    parser = argparse.ArgumentParser(
        prog="servergroup-execagent", description="Run commands in this VM for the host."
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--port", type=Path, help="the exec port's character device")
    where.add_argument("--connect", type=Path, help="a UNIX socket standing in for the port")
    parser.add_argument("--max-sessions", type=int, default=DEFAULT_MAX_SESSIONS)
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        port = args.port if args.port or args.connect else DEFAULT_PORT_DEVICE
        config = AgentConfig(
            port=port,
            connect=args.connect,
            max_sessions=args.max_sessions,
            poll_interval=args.poll_interval,
        )
        asyncio.run(run_agent(config))
    except ServergroupError as exc:
        sys.stderr.write(f"servergroup exec agent: {exc}\n")
        return exc.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main())
