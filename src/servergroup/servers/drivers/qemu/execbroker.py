"""The exec broker and client: the host side of `servergroup server exec` on a qemu server.

Theory of operation. QEMU serves the VM's exec port (`org.servergroup.exec`)
as a UNIX socket and accepts one host connection at a time, so one
`ExecBroker` per running VM holds that connection and multiplexes clients
over it:

- The broker connects to the port socket, retrying (with backoff and
  jitter) while it is absent or refused, and on every new connection sends a
  sync (`execproto.encode_sync`) carrying a fresh *epoch*. The port is
  *ready* once the agent echoes that epoch. A RESET 0 from the agent ("I know
  no sessions": it just started, or saw the host come back) ends every
  session the broker had on that connection and starts a new epoch.
- Clients connect to the broker's listening socket (mode 0600), one session
  per connection. A client sends one OPEN first; the broker waits (bounded)
  for the port to be ready, allocates a session id, and from then on
  forwards STDIN / STDIN_EOF / SIGNAL to the port under that id, and the
  port's STDOUT / STDERR / ERROR / EXIT for that id back to the client. After
  EXIT the client's connection is closed.
- A client that goes away before EXIT gets its session a SIGHUP; a client
  that sends garbage is dropped the same way; neither affects the others.
  When the port connection drops (VM stopped or migrated away), every
  client gets ERROR "the server went away" and is closed; the broker goes on
  retrying the port until `stop()`.

Backpressure: the broker awaits the port's drain after each client frame,
and a client's drain (up to `stall_timeout`, then that client is dropped)
after each frame for it. The port is one stream, so a client that does not
read holds up the others' output for at most `stall_timeout`.

The client, `run_exec`, streams this process's stdin (a thread reads fd 0,
whatever it is: tty, pipe, file) and writes stdout/stderr as raw bytes to
fds 1 and 2; SIGINT, SIGTERM and SIGHUP are forwarded as SIGNAL frames. Its
result is the remote status as a shell reports it (code, or 128 + signal);
`main()` exits 255, as ssh does, when there is no status to report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from servergroup.common.backoff import Backoff
from servergroup.common.component import ComponentHealth, HealthState
from servergroup.common.errors import ConfigError, RemoteError, ServergroupError
from servergroup.common.logsetup import log_bug, setup_logging
from servergroup.guestcomm.sockets import reachable_path
from servergroup.servers.drivers.qemu.execproto import (
    MAX_PAYLOAD,
    ExecDecoder,
    ExecProtocolError,
    Frame,
    FrameType,
    OpenRequest,
    decode_error,
    decode_exit,
    decode_open,
    decode_signal,
    encode_error,
    encode_frame,
    encode_open,
    encode_signal,
    encode_sync,
)

log = logging.getLogger(__name__)

#: Status of the client when the remote command gave none (as ssh uses).
STATUS_NO_STATUS = 255
DEFAULT_RETRY_INTERVAL = 0.2
MAX_RETRY_INTERVAL = 2.0
#: How long a client's OPEN waits for the port to be ready (a VM may be booting).
DEFAULT_READY_TIMEOUT = 30.0
#: How long a new client has to send its OPEN.
DEFAULT_OPEN_TIMEOUT = 10.0
#: How long the broker waits for a client that does not read its output.
DEFAULT_STALL_TIMEOUT = 30.0
_HIGH_WATER = 1 << 20
#: How long a connection whose session ended is still read (and what comes thrown
#: away) before it is closed: see `_linger`.
_LINGER = 2.0
_FROM_CLIENT = frozenset({FrameType.STDIN, FrameType.STDIN_EOF, FrameType.SIGNAL})
_TO_CLIENT = frozenset({FrameType.STDOUT, FrameType.STDERR, FrameType.ERROR, FrameType.EXIT})
_SERVER_WENT_AWAY = "the server went away (its exec port closed)."


class ExecUnavailable(RemoteError):
    """Nothing serves the exec socket, or the broker closed without a status."""

    exit_status = STATUS_NO_STATUS

    def __init__(self, message: str, *, already_said: bool = False) -> None:
        super().__init__(message)
        #: True when the message already went to stderr (the broker's ERROR frame).
        self.already_said = already_said


class _Session:
    """A client's session as the broker sees it."""

    def __init__(self, sid: int, epoch: int, writer: asyncio.StreamWriter) -> None:
        self.sid = sid
        self.epoch = epoch
        self.writer = writer
        self.done = asyncio.Event()

    def end(self, sentence: str | None = None) -> None:
        if self.done.is_set():
            return
        self.done.set()
        if self.writer.is_closing():
            return
        if sentence is not None:
            frame = Frame(type=FrameType.ERROR, session=self.sid, payload=encode_error(sentence))
            self.writer.write(encode_frame(frame))
        # Only our half: the client's task closes the connection once the client has
        # read this far (`_linger`).
        if self.writer.can_write_eof():
            self.writer.write_eof()
        else:
            self.writer.close()


class ExecBroker:
    """Serves exec clients on `listen_socket` over the VM's exec port at `port_socket`."""

    def __init__(
        self,
        port_socket: Path,
        listen_socket: Path,
        *,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        open_timeout: float = DEFAULT_OPEN_TIMEOUT,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    ) -> None:
        self.port_socket = port_socket
        self.listen_socket = listen_socket
        # Reconnects to the port: from `retry_interval`, doubling, drawn from 0.5x to 1x.
        self._reconnect = Backoff(
            initial=retry_interval,
            max_delay=max(retry_interval, MAX_RETRY_INTERVAL),
            jitter=(0.5, 1.0),
        )
        self._ready_timeout = ready_timeout
        self._open_timeout = open_timeout
        self._stall_timeout = stall_timeout
        self._epoch = 0
        self._ready = asyncio.Event()
        self._port: asyncio.StreamWriter | None = None
        self._sessions: dict[int, _Session] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None
        self._port_task: asyncio.Task[None] | None = None
        self._clients: set[asyncio.Task[None]] = set()
        #: Non-zero bytes of the port stream that were not frames, over all connections.
        self.port_garbage = 0

    @property
    def ready(self) -> bool:
        """True while the port is connected and its agent has answered."""
        return self._ready.is_set()

    async def start(self) -> None:
        """Listen for clients and start connecting to the port. Idempotent."""
        if self._server is not None:
            return
        sock = _listen(self.listen_socket)
        st = os.stat(self.listen_socket)  # the file's inode, to remove only our own
        self._inode = (st.st_dev, st.st_ino)
        self._server = await asyncio.start_unix_server(self._client_connected, sock=sock)
        self._port_task = asyncio.create_task(self._port_loop(), name="exec-broker-port")
        log.info("exec broker serving %s for the port %s", self.listen_socket, self.port_socket)

    async def stop(self) -> None:
        """Close every client and the port; remove the listening socket. Idempotent."""
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = list(self._clients)
        if self._port_task is not None:
            tasks.append(self._port_task)
            self._port_task = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for session in list(self._sessions.values()):
            session.end("the exec broker stopped.")
        self._sessions.clear()
        self._drop_port()
        with contextlib.suppress(OSError):
            st = os.lstat(self.listen_socket)
            if (st.st_dev, st.st_ino) == self._inode:
                self.listen_socket.unlink()
        self._inode = None

    # -- the port --------------------------------------------------------------------

    async def _port_loop(self) -> None:
        delays = self._reconnect.delays()
        while True:
            try:
                reader, writer = await _connect(self.port_socket)
            except OSError as exc:
                log.debug("exec port %s not reachable: %s", self.port_socket, exc)
                await asyncio.sleep(next(delays))
                continue
            delays = self._reconnect.delays()
            transport = writer.transport
            assert isinstance(transport, asyncio.WriteTransport)
            transport.set_write_buffer_limits(high=_HIGH_WATER)
            self._port = writer
            self._new_epoch()
            log.info("exec port %s connected", self.port_socket)
            try:
                await self._read_port(reader)
            except (OSError, asyncio.IncompleteReadError) as exc:
                log.info("exec port %s failed: %s", self.port_socket, exc)
            finally:
                self._drop_port()
            log.info("exec port %s closed; connecting again", self.port_socket)

    def _new_epoch(self) -> None:
        self._ready.clear()
        self._epoch = self._epoch % 0xFFFFFFFF + 1  # 1 .. 2**32 - 1: 0 is the agent's
        assert self._port is not None
        self._port.write(encode_sync(self._epoch))

    async def _read_port(self, reader: asyncio.StreamReader) -> None:
        decoder = ExecDecoder()
        while data := await reader.read(MAX_PAYLOAD):
            garbage = decoder.garbage
            for frame in decoder.feed(data):
                await self._from_port(frame)
            if decoder.garbage != garbage:
                self.port_garbage += decoder.garbage - garbage
                log.warning(
                    "exec port: skipped %d bytes that were not frames",
                    decoder.garbage - garbage,
                )

    async def _from_port(self, frame: Frame) -> None:
        if frame.type is FrameType.RESET:
            if frame.session == self._epoch:
                if not self._ready.is_set():
                    log.info("exec agent answered on %s (epoch %d)", self.port_socket, self._epoch)
                self._ready.set()
            elif frame.session == 0:
                # The agent knows no sessions: ours on this port are gone.
                log.info("exec agent (re)started; ending its sessions and syncing again")
                self._end_sessions("the exec agent in the server restarted.")
                self._new_epoch()
            return
        if frame.type not in _TO_CLIENT:
            log.warning("exec port sent a %s frame, which only a host sends", frame.type.name)
            return
        session = self._sessions.get(frame.session)
        if session is None or session.epoch != self._epoch:
            return  # a session whose client has gone
        writer = session.writer
        if writer.is_closing():
            return
        writer.write(encode_frame(frame))
        if frame.type is FrameType.EXIT:
            self._sessions.pop(session.sid, None)
            session.end()
            return
        try:
            async with asyncio.timeout(self._stall_timeout):
                await writer.drain()
        except (TimeoutError, ConnectionError):
            log.info("exec session %d: its client does not read; dropping it", session.sid)
            self._hang_up(session)

    def _drop_port(self) -> None:
        self._ready.clear()
        if self._port is not None:
            self._port.close()
            self._port = None
        self._end_sessions(_SERVER_WENT_AWAY)

    def _end_sessions(self, sentence: str) -> None:
        for session in list(self._sessions.values()):
            session.end(sentence)
        self._sessions.clear()

    def _to_port(self, frame: Frame) -> bool:
        if self._port is None or self._port.is_closing():
            return False
        self._port.write(encode_frame(frame))
        return True

    def _hang_up(self, session: _Session) -> None:
        """The client is gone: SIGHUP to its command, as a closed terminal would."""
        if self._sessions.pop(session.sid, None) is None:
            return
        if session.epoch == self._epoch:
            payload = encode_signal(signal.SIGHUP)
            self._to_port(Frame(type=FrameType.SIGNAL, session=session.sid, payload=payload))
        session.end()

    # -- clients ---------------------------------------------------------------------

    def _client_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._serve_client(reader, writer))
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        session: _Session | None = None
        try:
            opened = await self._open_session(reader, writer)
            if opened is not None:
                session, decoder, rest = opened
                await self._pump_client(reader, session, decoder, rest)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client went away; handled below
        except Exception:
            log_bug(log, "an exec client's connection")
        finally:
            if session is not None and not session.done.is_set():
                self._hang_up(session)
            await _linger(reader, writer)
            writer.close()

    async def _open_session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[_Session, ExecDecoder, list[Frame]] | None:
        """Read the client's OPEN, wait for the port, open the session on it."""
        decoder = ExecDecoder()
        frames: list[Frame] = []
        try:
            async with asyncio.timeout(self._open_timeout):
                while not frames:
                    data = await reader.read(MAX_PAYLOAD)
                    if not data:
                        return None
                    frames = decoder.feed(data)
                    if decoder.skipped:
                        log.info("an exec client sent garbage; dropped it")
                        return None
        except TimeoutError:
            log.info("an exec client sent no command in %g s; dropped it", self._open_timeout)
            return None
        first, rest = frames[0], frames[1:]
        try:
            if first.type is not FrameType.OPEN:
                raise ExecProtocolError(f"the first frame is {first.type.name}, not OPEN.")
            request = decode_open(first.payload)
        except ExecProtocolError as exc:
            _refuse(writer, f"the exec request is not valid: {exc}")
            return None
        try:
            async with asyncio.timeout(self._ready_timeout):
                await self._ready.wait()
        except TimeoutError:
            _refuse(
                writer,
                f"the exec agent in the server did not answer within {self._ready_timeout:g} s.",
            )
            return None
        sid = next(self._ids)
        session = _Session(sid, self._epoch, writer)
        self._sessions[sid] = session
        self._to_port(Frame(type=FrameType.OPEN, session=sid, payload=encode_open(request)))
        log.info("exec session %d: %r", sid, request.argv[0])
        return session, decoder, rest

    async def _pump_client(
        self,
        reader: asyncio.StreamReader,
        session: _Session,
        decoder: ExecDecoder,
        frames: list[Frame],
    ) -> None:
        """Forward the client's frames to the port until it closes, errs or the session ends."""
        while True:
            for frame in frames:
                if not await self._client_frame(session, frame):
                    return
            if decoder.skipped:
                log.info("exec session %d: its client sent garbage; dropped it", session.sid)
                return
            if session.done.is_set():
                return
            data = await reader.read(MAX_PAYLOAD)
            if not data:
                return
            frames = decoder.feed(data)

    async def _client_frame(self, session: _Session, frame: Frame) -> bool:
        """Forward one client frame to the port; False when the client must be dropped."""
        if session.done.is_set():
            return False
        if frame.type not in _FROM_CLIENT:
            log.info("exec session %d: its client sent %s; dropped it", session.sid, frame.type)
            return False
        if frame.type is FrameType.SIGNAL:
            try:
                decode_signal(frame.payload)
            except ExecProtocolError:
                return False
        if session.epoch != self._epoch:
            return False
        self._to_port(Frame(type=frame.type, session=session.sid, payload=frame.payload))
        port = self._port
        if port is not None:
            with contextlib.suppress(ConnectionError):
                await port.drain()
        return True


class ExecBrokers:
    """The exec brokers of one host's qemu servers, by server name: a host daemon component.

    The qemu driver asks for a server's broker when it boots or adopts the VM
    (`ensure`) and drops it when the VM stops (`discard`); the host daemon
    stops them all when it stops (the VMs keep running, and the next daemon
    serves their exec ports again when it adopts them).
    """

    name = "exec brokers"

    def __init__(self) -> None:
        self._brokers: dict[str, ExecBroker] = {}
        self._started = False

    def get(self, name: str) -> ExecBroker | None:
        return self._brokers.get(name)

    async def ensure(self, name: str, port_socket: Path, listen_socket: Path) -> ExecBroker:
        """The broker of server `name`, started if it was not."""
        broker = self._brokers.get(name)
        if broker is None:
            broker = ExecBroker(port_socket, listen_socket)
            await broker.start()
            self._brokers[name] = broker
        return broker

    async def discard(self, name: str) -> None:
        """Stop serving server `name`'s exec port (idempotent)."""
        broker = self._brokers.pop(name, None)
        if broker is not None:
            await broker.stop()

    async def start(self) -> None:
        self._started = True

    async def stop(self) -> None:
        """Stop every broker (idempotent)."""
        self._started = False
        for name in list(self._brokers):
            await self.discard(name)

    def health(self) -> ComponentHealth:
        ready = sum(1 for b in self._brokers.values() if b.ready)
        total = len(self._brokers)
        if not self._started and not total:
            return ComponentHealth(state=HealthState.STOPPED, sentence="no exec broker runs")
        state = HealthState.HEALTHY if ready == total else HealthState.DEGRADED
        return ComponentHealth(
            state=state,
            sentence=f"{ready} of {total} qemu server(s) have their exec agent answering",
        )


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read (and throw away) what the client still sends until it closes, for `_LINGER` s.

    A connection closed while the client's frames (stdin, a signal) are on
    their way is reset, and a reset client loses what it had not read yet:
    the session's last words (its status or the sentence saying why it
    ended). So our half is shut first and the connection closed once the
    client closes its own (it does when it has read to the end). Not while
    the broker stops: it must not wait on clients.
    """
    task = asyncio.current_task()
    if writer.is_closing() or (task is not None and task.cancelling()):
        return
    if writer.can_write_eof():
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(_LINGER):
            while await reader.read(MAX_PAYLOAD):
                pass


def _refuse(writer: asyncio.StreamWriter, sentence: str) -> None:
    log.info("refused an exec client: %s", sentence)
    writer.write(
        encode_frame(Frame(type=FrameType.ERROR, session=0, payload=encode_error(sentence)))
    )


def _listen(path: Path) -> socket.socket:
    """A listening socket at `path` (mode 0600), replacing a stale one; ConfigError if in use."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"{path} exists and is not a socket; not replacing it.")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            with reachable_path(path) as where:
                probe.connect(where)
        except OSError:
            path.unlink()  # stale: nobody accepts on it any more
        else:
            raise ConfigError(f"another exec broker is serving {path}.")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with reachable_path(path) as where:
            sock.bind(where)
        # Before listen(): nobody can connect while the mode is still the umask's.
        os.chmod(path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {path}: {exc.strerror}.") from None
    return sock


async def _connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        with reachable_path(path) as where:
            await asyncio.get_running_loop().sock_connect(sock, where)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_unix_connection(sock=sock, limit=MAX_PAYLOAD * 2)


# -- the client ------------------------------------------------------------------------


def _read_stdin(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes]) -> None:
    """Thread body: fd 0 into `queue` (b"" at the end), waiting while the queue is full."""
    while True:
        try:
            data = os.read(0, MAX_PAYLOAD)
        except InterruptedError:
            continue
        except OSError:
            data = b""
        try:
            asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
        except (RuntimeError, asyncio.CancelledError):
            return  # the loop is gone: the session is over
        if not data:
            return


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def run_exec(
    listen_socket: Path,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> int:
    """Run `argv` in the VM whose broker listens on `listen_socket`; its shell status.

    Streams this process's stdin, stdout and stderr (fds 0, 1, 2, raw bytes)
    and forwards SIGINT, SIGTERM and SIGHUP. Raises `ExecUnavailable` when
    nothing serves the socket or the session ended without a status (the
    broker's ERROR sentence, if it sent one, is the message).
    """
    open_frame = Frame(
        type=FrameType.OPEN,
        session=0,
        payload=encode_open(OpenRequest(argv=tuple(argv), env=env, cwd=cwd)),
    )
    try:
        reader, writer = await _connect(listen_socket)
    except (FileNotFoundError, ConnectionRefusedError):
        raise ExecUnavailable(
            f"nothing serves the exec socket {listen_socket}: "
            "the server is not running here, or its host daemon is not."
        ) from None
    except OSError as exc:
        raise ExecUnavailable(
            f"cannot reach the exec socket {listen_socket}: {exc.strerror}."
        ) from None
    loop = asyncio.get_running_loop()
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def forward(signum: int) -> None:
        frame = Frame(type=FrameType.SIGNAL, session=0, payload=encode_signal(signum))
        if not writer.is_closing():
            writer.write(encode_frame(frame))

    for signum in forwarded:
        loop.add_signal_handler(signum, forward, signum)
    sender = asyncio.create_task(_send_stdin(writer, open_frame))
    try:
        return await _receive(reader, writer)
    finally:
        for signum in forwarded:
            loop.remove_signal_handler(signum)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()


async def _send_stdin(writer: asyncio.StreamWriter, open_frame: Frame) -> None:
    writer.write(encode_frame(open_frame))
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
    reader_thread = threading.Thread(
        target=_read_stdin, args=(asyncio.get_running_loop(), queue), daemon=True
    )
    reader_thread.start()
    try:
        while data := await queue.get():
            writer.write(encode_frame(Frame(type=FrameType.STDIN, session=0, payload=data)))
            await writer.drain()
        writer.write(encode_frame(Frame(type=FrameType.STDIN_EOF, session=0)))
        await writer.drain()
    except ConnectionError:
        pass  # the broker closed: _receive reports it


async def _receive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    decoder = ExecDecoder()
    error: str | None = None
    stdout_open = True
    while data := await _read_some(reader):
        for frame in decoder.feed(data):
            if frame.type is FrameType.STDOUT and stdout_open:
                try:
                    await asyncio.to_thread(_write_all, 1, frame.payload)
                except BrokenPipeError:
                    # Our reader is gone: the remote command's stdout breaks too.
                    stdout_open = False
                    payload = encode_signal(signal.SIGPIPE)
                    writer.write(
                        encode_frame(Frame(type=FrameType.SIGNAL, session=0, payload=payload))
                    )
            elif frame.type is FrameType.STDERR:
                with contextlib.suppress(BrokenPipeError):
                    await asyncio.to_thread(_write_all, 2, frame.payload)
            elif frame.type is FrameType.ERROR:
                with contextlib.suppress(ExecProtocolError):
                    error = decode_error(frame.payload)
                    _say(error)
            elif frame.type is FrameType.EXIT:
                try:
                    return decode_exit(frame.payload).shell_status
                except ExecProtocolError as exc:
                    raise ExecUnavailable(f"the exec broker sent a bad status: {exc}") from None
    if error is not None:
        raise ExecUnavailable(error, already_said=True)
    raise ExecUnavailable("the exec broker closed the session before the command's status came.")


async def _read_some(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.read(MAX_PAYLOAD * 2)
    except ConnectionError:
        return b""


def _say(sentence: str) -> None:
    with contextlib.suppress(OSError):
        _write_all(2, f"servergroup server exec: {sentence}\n".encode(errors="replace"))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m servergroup.servers.drivers.qemu.execbroker --socket PATH -- CMD...`.

    With `--serve-port PORT_SOCKET` instead of a command, runs a broker for
    that port on `--socket` until SIGTERM/SIGINT (for debugging and tests).
    """
    parser = argparse.ArgumentParser(
        prog="servergroup server exec",
        description="Run a command in a qemu server through its exec broker.",
    )
    parser.add_argument("--socket", type=Path, required=True, help="the broker's socket")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="set in the command"
    )
    parser.add_argument("--cwd", help="the command's working directory")
    parser.add_argument("--serve-port", type=Path, metavar="PORT_SOCKET", help="run a broker")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if args.serve_port is not None:
        setup_logging()
        try:
            asyncio.run(_serve(args.serve_port, args.socket))
        except ServergroupError as exc:
            _say(str(exc))
            return exc.exit_status
        return 0
    if not command:
        parser.error("give the command to run after --")
    env: dict[str, str] = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--env wants NAME=VALUE, not {item!r}")
        env[name] = value
    try:
        return asyncio.run(run_exec(args.socket, command, env=env or None, cwd=args.cwd))
    except ExecUnavailable as exc:
        if not exc.already_said:
            _say(str(exc))
        return STATUS_NO_STATUS
    except ServergroupError as exc:
        _say(str(exc))
        return STATUS_NO_STATUS


async def _serve(port_socket: Path, listen_socket: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    broker = ExecBroker(port_socket, listen_socket)
    await broker.start()
    try:
        await stop.wait()
    finally:
        await broker.stop()


if __name__ == "__main__":
    sys.exit(main())
