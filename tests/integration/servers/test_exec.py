"""`server exec` for qemu servers without a VM: real agent, real broker, real clients.

A thread stands in for QEMU's chardev socket: it listens where QEMU would
(one host connection at a time) and bridges that connection to the exec
agent, which runs as a subprocess with `--connect`. When the host side
closes, the agent's connection is closed too, as a virtio port reports the
host gone. The broker runs as a subprocess (`execbroker --serve-port`), each
client as `python -m ...execbroker --socket S -- CMD`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import selectors
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from servergroup.common.errors import ConfigError
from servergroup.servers.drivers.qemu.execbroker import ExecBroker
from servergroup.servers.drivers.qemu.execproto import (
    MAGIC,
    Frame,
    FrameType,
    encode_frame,
)
from tests.fixtures import wait
from tests.fixtures.daemons import Daemon, DaemonFactory

pytestmark = pytest.mark.timeout(60)

CLIENT = [sys.executable, "-m", "servergroup.servers.drivers.qemu.execbroker"]
AGENT = [sys.executable, "-m", "servergroup.servers.drivers.qemu.execagent"]
wait_until = functools.partial(wait.wait_until, timeout=10.0)


class PortStandIn:
    """QEMU's side of the exec port: a socket for the host, bridged to the agent's socket."""

    def __init__(self, directory: Path) -> None:
        self.port_path = directory / "exec-port.sock"
        self.agent_path = directory / "agent.sock"
        self._host_listener = _listener(self.port_path)
        self._agent_listener = _listener(self.agent_path)
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._pair: tuple[socket.socket, socket.socket] | None = None
        self.connections = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            host = _accept(self._host_listener, self._stopped)
            if host is None:
                return
            with self._lock:
                self.connections += 1
            # As with QEMU, the host connection outlives the guest side: an agent
            # that dies and starts again opens the same port under it.
            host_open = True
            while host_open:
                guest = _accept(self._agent_listener, self._stopped)
                if guest is None:
                    host.close()
                    return
                with self._lock:
                    self._pair = (host, guest)
                host_open = _bridge(host, guest, self._stopped) is guest
                with self._lock:
                    self._pair = None
                guest.close()
            host.close()

    def drop(self) -> None:
        """The host connection goes away (the VM stopped or migrated)."""
        with self._lock:
            pair = self._pair
        if pair is not None:
            for sock in pair:
                # The bridge may close them as soon as the first one is shut down.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def inject(self, *, to_agent: bytes = b"", to_host: bytes = b"") -> None:
        """Write raw bytes into the port stream, as a misbehaving peer would."""
        with self._lock:
            assert self._pair is not None, "nothing is connected"
            host, guest = self._pair
            guest.sendall(to_agent)
            host.sendall(to_host)

    def stop(self) -> None:
        self._stopped.set()
        self.drop()
        self._thread.join(5)
        self._host_listener.close()
        self._agent_listener.close()


def _listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.fspath(path))
    sock.listen(4)
    sock.settimeout(0.1)
    return sock


def _accept(listener: socket.socket, stopped: threading.Event) -> socket.socket | None:
    while not stopped.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.settimeout(None)
        return conn
    return None


def _bridge(a: socket.socket, b: socket.socket, stopped: threading.Event) -> socket.socket:
    """Copy both ways until one side closes; that side."""
    other = {a: b, b: a}
    with selectors.DefaultSelector() as sel:
        sel.register(a, selectors.EVENT_READ)
        sel.register(b, selectors.EVENT_READ)
        while not stopped.is_set():
            for key, _ in sel.select(0.1):
                src = key.fileobj
                assert isinstance(src, socket.socket)
                try:
                    data = src.recv(65536)
                except OSError:
                    return src
                if not data:
                    return src
                try:
                    other[src].sendall(data)
                except OSError:
                    return other[src]
    return a


@pytest.fixture
def exec_dir() -> Iterator[Path]:
    # Short: socket paths must fit in sun_path.
    with tempfile.TemporaryDirectory(prefix="sgx-") as name:
        yield Path(name)


@pytest.fixture
def standin(exec_dir: Path) -> Iterator[PortStandIn]:
    port = PortStandIn(exec_dir)
    yield port
    port.stop()


StartExec = Callable[..., tuple[Path, Daemon, Daemon]]


@pytest.fixture
def start_exec(exec_dir: Path, standin: PortStandIn, daemon: DaemonFactory) -> StartExec:
    """Start an agent (with extra arguments) and a broker; (client socket, agent, broker)."""

    def start(*agent_args: str) -> tuple[Path, Daemon, Daemon]:
        agent = daemon(
            [*AGENT, "--connect", str(standin.agent_path), "--poll-interval", "0.05", *agent_args],
            name="agent",
        )
        listen = exec_dir / "exec.sock"
        broker = daemon(
            [*CLIENT, "--socket", str(listen), "--serve-port", str(standin.port_path)],
            name="broker",
            ready="exec agent answered",
        )
        return listen, agent, broker

    return start


@pytest.fixture
def broker_socket(start_exec: StartExec) -> Path:
    """A running agent and broker; the broker's client socket."""
    return start_exec()[0]


def run(
    sock: Path, *argv: str, input: bytes = b"", timeout: float = 20
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLIENT, "--socket", str(sock), "--", *argv],
        input=input,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def start(sock: Path, *argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLIENT, "--socket", str(sock), "--", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_exit_status_and_separate_streams(broker_socket: Path) -> None:
    done = run(broker_socket, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
    assert run(broker_socket, "true").returncode == 0


def test_env_and_cwd(broker_socket: Path, exec_dir: Path) -> None:
    options = ["--socket", str(broker_socket), "--env", "SGX=yes", "--cwd", str(exec_dir)]
    done = subprocess.run(
        [*CLIENT, *options, "--", "sh", "-c", 'echo "$SGX $PWD"'],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert done.stdout == f"yes {exec_dir}\n".encode()


def test_a_mebibyte_of_binary_stdin_comes_back_through_cat(broker_socket: Path) -> None:
    data = random.Random(5).randbytes(1 << 20)
    started = time.monotonic()
    done = run(broker_socket, "cat", input=data)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert done.stdout == data
    print(f"1 MiB through cat and back in {elapsed:.2f} s")


def test_command_not_found_is_127_and_one_sentence(broker_socket: Path) -> None:
    done = run(broker_socket, "no-such-command-sgx")
    assert done.returncode == 127
    assert done.stdout == b""
    assert done.stderr.decode().splitlines() == [
        "servergroup server exec: no-such-command-sgx: command not found."
    ]
    assert run(broker_socket, "/etc/passwd").returncode == 126


def test_sigterm_to_the_client_ends_the_remote_command(broker_socket: Path) -> None:
    client = start(broker_socket, "sh", "-c", "echo started; exec sleep 30")
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == b"started\n"
        client.send_signal(signal.SIGTERM)
        assert client.wait(10) == 143
    finally:
        client.kill()
        client.wait()


def test_five_sessions_at_once(broker_socket: Path) -> None:
    clients = [start(broker_socket, "sh", "-c", f"sleep 0.5; echo {n}; exit {n}") for n in range(5)]
    started = time.monotonic()
    try:
        results = [c.communicate(timeout=20) for c in clients]
    finally:
        for c in clients:
            c.kill()
            c.wait()
    elapsed = time.monotonic() - started
    assert [out for out, _ in results] == [f"{n}\n".encode() for n in range(5)]
    assert [c.returncode for c in clients] == list(range(5))
    assert elapsed < 5  # concurrent, not one after another (5 x 0.5 s + start-ups)


def test_a_killed_client_hangs_up_its_command(broker_socket: Path, exec_dir: Path) -> None:
    marker = exec_dir / "hup"
    script = f'trap "echo hup > {marker}; exit 0" HUP; echo ready; while :; do sleep 0.05; done'
    client = start(broker_socket, "sh", "-c", script)
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == b"ready\n"
        client.kill()
        client.wait()
        wait_until(marker.exists, "the command's HUP trap")
        assert marker.read_text() == "hup\n"
    finally:
        client.kill()
        client.wait()
    assert run(broker_socket, "echo", "still serving").stdout == b"still serving\n"


def test_garbage_on_the_port_is_skipped_both_ways(
    broker_socket: Path, standin: PortStandIn
) -> None:
    noise = random.Random(7).randbytes(20000).replace(MAGIC[:1], b"")
    fake = MAGIC + bytes([1, 5]) + bytes(4) + (60000).to_bytes(4, "big") + bytes(8)
    half = encode_frame(Frame(type=FrameType.STDOUT, session=1, payload=b"x" * 100))[:50]
    standin.inject(to_agent=noise + fake + half, to_host=noise + fake)
    # The agent's decoder waits on the half frame; the OPEN that comes next
    # completes it, fails its CRC, and is found again by the rescan.
    done = run(broker_socket, "echo", "after garbage")
    assert (done.returncode, done.stdout) == (0, b"after garbage\n")


def test_garbage_on_the_broker_socket_drops_only_that_client(broker_socket: Path) -> None:
    for junk in [b"hello", random.Random(3).randbytes(5000), MAGIC * 100]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(os.fspath(broker_socket))
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass  # closed by the broker
    stdin_first = encode_frame(Frame(type=FrameType.STDIN, session=0, payload=b"x"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(os.fspath(broker_socket))
        sock.sendall(stdin_first)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        assert b"not OPEN" in reply
    assert run(broker_socket, "echo", "fine").stdout == b"fine\n"


def test_the_port_going_away_ends_sessions_with_an_error(
    broker_socket: Path, standin: PortStandIn
) -> None:
    client = start(broker_socket, "sh", "-c", "echo started; exec sleep 30")
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == b"started\n"
        standin.drop()
        _, err = client.communicate(timeout=10)
    finally:
        client.kill()
        client.wait()
    assert client.returncode == 255
    assert err.decode().splitlines() == [
        "servergroup server exec: the server went away (its exec port closed)."
    ]
    # The broker connects again by itself and serves new sessions.
    wait_until(lambda: standin.connections >= 2, "the broker connecting again")
    assert run(broker_socket, "echo", "back").stdout == b"back\n"


def test_no_broker_is_one_sentence_and_255(exec_dir: Path) -> None:
    done = run(exec_dir / "nobody.sock", "true")
    assert done.returncode == 255
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1
    assert "nothing serves the exec socket" in lines[0]


def test_sessions_over_the_limit_are_refused(start_exec: StartExec) -> None:
    sock, _, _ = start_exec("--max-sessions", "1")
    first = start(sock, "sh", "-c", "echo started; exec sleep 30")
    try:
        assert first.stdout is not None
        assert first.stdout.readline() == b"started\n"
        refused = run(sock, "true")
        assert refused.returncode == 126
        assert b"already runs 1 exec sessions" in refused.stderr
    finally:
        first.kill()
        first.wait()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_client_that_does_not_read_holds_the_command_back(
    start_exec: StartExec, exec_dir: Path
) -> None:
    sock, agent, broker = start_exec()
    size = 64 << 20
    done_marker = exec_dir / "done"
    client = start(sock, "sh", "-c", f"head -c {size} /dev/zero; touch {done_marker}")
    try:
        time.sleep(1.5)  # nothing reads the client's stdout meanwhile
        assert not done_marker.exists()  # the command is held back, not buffered
        assert _rss_kib(agent.pid) < 64 << 10
        assert _rss_kib(broker.pid) < 64 << 10
        assert client.stdout is not None
        started = time.monotonic()
        received = 0
        while chunk := client.stdout.read(1 << 20):
            received += len(chunk)
        elapsed = time.monotonic() - started
        assert client.wait(10) == 0
    finally:
        client.kill()
        client.wait()
    assert received == size
    print(f"{size >> 20} MiB of output in {elapsed:.2f} s ({size / elapsed / 1e6:.0f} MB/s)")


def test_an_agent_that_restarts_ends_the_sessions_it_forgot(
    start_exec: StartExec, standin: PortStandIn, daemon: DaemonFactory
) -> None:
    sock, agent, _ = start_exec()
    client = start(sock, "sh", "-c", "echo $$; exec sleep 30")
    orphan = 0
    try:
        assert client.stdout is not None
        orphan = int(client.stdout.readline())
        agent.kill()  # its command lives on, in a session of its own (killed below)
        daemon(
            [*AGENT, "--connect", str(standin.agent_path), "--poll-interval", "0.05"],
            name="agent",
        )
        _, err = client.communicate(timeout=10)
    finally:
        client.kill()
        client.wait()
        if orphan:
            with contextlib.suppress(ProcessLookupError):
                os.kill(orphan, signal.SIGKILL)
    assert client.returncode == 255
    assert b"the exec agent in the server restarted." in err
    assert standin.connections == 1  # the port connection itself stayed up
    assert run(sock, "echo", "again").stdout == b"again\n"


async def test_broker_socket_is_private_replaces_a_stale_one_and_stops_twice(
    exec_dir: Path,
) -> None:
    listen = exec_dir / "exec.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.fspath(listen))
    stale.close()  # bound, never listening: a socket file nobody serves
    broker = ExecBroker(exec_dir / "no-port.sock", listen)
    await broker.start()
    await broker.start()
    try:
        assert stat.S_IMODE(listen.stat().st_mode) == 0o600
        second = ExecBroker(exec_dir / "no-port.sock", listen)
        with pytest.raises(ConfigError, match="another exec broker"):
            await second.start()
        assert not broker.ready  # no port to connect to: it keeps trying
    finally:
        await broker.stop()
        await broker.stop()
    assert not listen.exists()
