"""Group messaging against real parts: guest agents in namespaces, real etcd, real relays.

- `guest` (factory): a fresh network namespace running `servergroup guest
  --channel-listen <dir>/<name>.sock` (or the `channel` path given); returns a `Guest` with `ns`,
  `channel` (the socket path) and `call(fn)`, which runs `fn` in a thread
  that entered the namespace, so sockets it creates (a client's) live there.
- `HostEnd`: the test playing the host: a stream connection to a guest's
  channel socket, writing host frames and reading guest frames.
- `short_dir`: a short temporary directory (UNIX socket paths are limited
  to 107 bytes; pytest's tmp_path can be longer).
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from servergroup.guestcomm.protocol import (
    ChannelDecoder,
    Envelope,
    encode_host_frame,
)
from tests.fixtures.daemons import Daemon, DaemonFactory
from tests.fixtures.netns import NETNS_DIR, NetnsFactory

CLI = [sys.executable, "-m", "servergroup", "-v"]
WAIT = 10.0
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


def run_in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run `fn` in a short-lived thread that entered network namespace `ns`."""
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(NETNS_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"cannot enter namespace {ns}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=body, name=f"in-{ns}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


@dataclass
class Guest:
    """A guest agent running in its own namespace."""

    ns: str
    channel: Path
    agent: Daemon | None

    def call(self, fn: Callable[[], T]) -> T:
        return run_in_netns(self.ns, fn)


class GuestFactory(Protocol):
    def __call__(
        self, name: str = "g", *, agent: bool = True, channel: Path | None = None
    ) -> Guest: ...


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sgg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def guest(netns: NetnsFactory, daemon: DaemonFactory, short_dir: Path) -> GuestFactory:
    def make(name: str = "g", *, agent: bool = True, channel: Path | None = None) -> Guest:
        ns = netns()
        if channel is None:
            channel = short_dir / f"{name}.sock"
        handle = None
        if agent:
            handle = daemon(
                # No scale agent: these tests play a host that speaks only group messages.
                netns.command(
                    ns, [*CLI, "guest", "--channel-listen", str(channel), "--no-scale-agent"]
                ),
                name=f"guest-{name}",
                ready=r"guest agent ready",
            )
        return Guest(ns=ns, channel=channel, agent=handle)

    return make


class HostEnd:
    """The host's end of one guest channel, played by the test."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(str(path))
        self.decoder = ChannelDecoder()
        self.pending: list[Envelope] = []

    def close(self) -> None:
        self.sock.close()

    def send(self, env: Envelope) -> None:
        self.sock.sendall(encode_host_frame(env))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_bytes(self, timeout: float = WAIT) -> bytes:
        """Whatever arrives next (at least one byte)."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            pytest.fail(f"nothing arrived on the channel within {timeout:g} s")
        return self.sock.recv(65536)

    def receive(self, timeout: float = WAIT) -> Envelope:
        """The next envelope the guest sends."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no envelope arrived on the channel within {timeout:g} s")
            for item in self.decoder.feed(self.read_bytes(left)):
                if isinstance(item, Envelope):
                    self.pending.append(item)
        return self.pending.pop(0)

    def nothing_within(self, timeout: float) -> bool:
        if self.pending:
            return False
        ready, _, _ = select.select([self.sock], [], [], timeout)
        return not ready
