"""Real guest agents in their own network namespaces, and the sockets that talk to them.

A `GuestUnderTest` is `servergroup guest --channel-listen <tmp>/channel.sock`
run with the `daemon` fixture inside a fresh namespace (abstract names are
per namespace, so its `cgcs.messaging` meets nothing else on the machine).
The test plays the host by connecting to the channel socket (`Host`) and
plays applications with datagram sockets created in the namespace (`App`).
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from servergroup.guestcomm.protocol import ChannelDecoder, Dropped, Envelope, JsonObject
from tests.fixtures import wait
from tests.fixtures.daemons import Daemon, DaemonFactory
from tests.fixtures.netns import NetnsFactory

CLI = [sys.executable, "-m", "servergroup", "-v"]
READY = r"guest agent ready"
WAIT = 10.0
wait_until = functools.partial(wait.wait_until, timeout=WAIT)


def log_count(daemon: Daemon, pattern: str) -> int:
    regex = re.compile(pattern)
    return sum(1 for line in daemon.log_text().splitlines() if regex.search(line))


def wait_log_count(daemon: Daemon, pattern: str, count: int, timeout: float = WAIT) -> None:
    wait_until(
        lambda: log_count(daemon, pattern) >= count,
        f"{count} log line(s) /{pattern}/ from {daemon.name}",
        timeout=timeout,
    )


def final_counters(daemon: Daemon) -> dict[str, Any]:
    """Stop `daemon` (SIGTERM, must exit 0) and return the counters it logs on exit."""
    assert daemon.stop() == 0, daemon.log_text()
    match = daemon.wait_for_log(r"stopped; counters: (\{.*?\})\"", timeout=1)
    counters: dict[str, Any] = json.loads(match[1].replace('\\"', '"'))
    return counters


class Host:
    """The host end of a channel: a stream connection to the guest's channel socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(str(path))
        self.decoder = ChannelDecoder()
        self.raw = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_raw(self, size: int) -> bytes:
        """Exactly `size` bytes from the channel."""
        while len(self.raw) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                pytest.fail(f"the channel closed after {len(self.raw)} of {size} bytes")
            self.raw += chunk
        out, self.raw = self.raw[:size], self.raw[size:]
        return out

    def read(self, count: int = 1) -> list[Envelope]:
        """The next `count` envelopes (a Dropped item fails the test)."""
        out: list[Envelope] = []
        pending = self.decoder.feed(self.raw)
        self.raw = b""
        while True:
            for item in pending:
                assert not isinstance(item, Dropped), item
                out.append(item)
            if len(out) >= count:
                assert len(out) == count, out
                return out
            chunk = self.sock.recv(65536)
            if not chunk:
                pytest.fail(f"the channel closed after {len(out)} of {count} messages")
            pending = self.decoder.feed(chunk)

    def expect_nothing(self, quiet: float = 0.3) -> None:
        self.sock.settimeout(quiet)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        finally:
            self.sock.settimeout(WAIT)
        pytest.fail(f"unexpected bytes on the channel: {data[:200]!r}")

    def closed_by_peer(self, timeout: float = WAIT) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(WAIT)

    def close(self) -> None:
        self.sock.close()


class App:
    """An application in the guest's namespace: a datagram socket, abstract or not."""

    def __init__(self, sock: socket.socket, name: str | None) -> None:
        self.sock = sock
        self.name = name
        sock.settimeout(WAIT)

    def send_raw(self, data: bytes, to: str = "cgcs.messaging") -> None:
        self.sock.sendto(data, b"\0" + to.encode())

    def send(self, data: JsonObject, dest_addr: str = "cgcs.server_grp", **extra: object) -> None:
        obj = {"version": 2, "dest_addr": dest_addr, "data": data, **extra}
        self.send_raw(json.dumps(obj).encode())

    def receive(self) -> bytes:
        data, _ = self.sock.recvfrom(65536)
        return bytes(data)

    def expect_nothing(self, quiet: float = 0.3) -> None:
        self.sock.settimeout(quiet)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        finally:
            self.sock.settimeout(WAIT)
        pytest.fail(f"unexpected datagram: {data[:200]!r}")


@dataclass
class GuestUnderTest:
    ns: str
    channel: Path
    netns: NetnsFactory
    start_daemon: DaemonFactory
    daemon: Daemon
    #: Options for the scale agent beside the guest agent: none unless a test asks for it
    #: (its boot sync would write on the channel these tests read).
    scale: tuple[str, ...] = ("--no-scale-agent",)

    def start(self, *extra: str) -> Daemon:
        argv = self.netns.command(
            self.ns,
            [*CLI, "guest", "--channel-listen", str(self.channel), *self.scale, *extra],
        )
        self.daemon = self.start_daemon(argv, name="guest", ready=READY)
        return self.daemon

    def host(self) -> Host:
        """Connect as the host and wait until the agent has taken the connection."""
        before = log_count(self.daemon, "host connected")
        host = Host(self.channel)
        wait_log_count(self.daemon, "host connected", before + 1)
        return host

    def app(self, name: str | None = "cgcs.server_grp") -> App:
        sock = self.netns.socket_in(self.ns, socket.AF_UNIX, socket.SOCK_DGRAM)
        if name is not None:
            sock.bind(b"\0" + name.encode())
        return App(sock, name)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (socket paths must fit in 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sgt-") as name:
        yield Path(name)


@pytest.fixture
def guest(netns: NetnsFactory, daemon: DaemonFactory, short_dir: Path) -> GuestUnderTest:
    """A running guest agent in its own namespace, listening on a channel socket."""
    ns = netns()
    channel = short_dir / f"servers/{secrets.token_hex(3)}/channel.sock"
    under_test = GuestUnderTest(ns, channel, netns, daemon, daemon=None)  # type: ignore[arg-type]
    under_test.start()
    return under_test
