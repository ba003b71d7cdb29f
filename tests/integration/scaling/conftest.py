"""A real guest agent with its scale agent, in its own namespace, on a lab CPU tree.

The test plays the host at the other end of the channel (`ScaleHost`):
it sends scale requests the way a host does (an envelope to `cgcs.scale`
from a host address such as `scale-<hex>`) and reads what the guest sends.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from servergroup.guestcomm.protocol import Envelope, JsonObject
from servergroup.scaling.protocol import (
    Direction,
    ScaleMessage,
    ScaleNack,
    ScaleReply,
    ScaleRequest,
    decode_reply,
    decode_request,
    encode_message,
)
from servergroup.scaling.sysfs import CPU_DIR, LabCpuSysfs
from tests.fixtures.daemons import DaemonFactory
from tests.fixtures.netns import NetnsFactory
from tests.integration.guestcomm.conftest import GuestUnderTest, Host, short_dir, wait_until
from tests.integration.scaling.agent import STARTED

__all__ = ["short_dir"]

#: The test that takes this machine's own cpu1 offline is collected only when asked for.
REAL_CPU_ENV = "SERVERGROUP_REAL_CPU_TESTS"
collect_ignore = [] if os.environ.get(REAL_CPU_ENV) == "1" else ["test_guest_real_cpu.py"]

#: The host-side address requests come from (the original's host helper: `scale-<hex>`).
HOST_ADDR = "scale-0000000a"


class ScaleHost:
    """The host end of a guest's channel, speaking the scaling messages."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def send(self, msg: ScaleMessage | JsonObject, source: str = HOST_ADDR) -> None:
        data = msg if isinstance(msg, dict) else encode_message(msg)
        frame = {"version": 2, "source_addr": source, "dest_addr": "cgcs.scale", "data": data}
        self.host.send(json.dumps(frame).encode() + b"\n")

    def read(self) -> Envelope:
        return self.host.read(1)[0]

    def reply(self) -> ScaleReply | ScaleNack:
        envelope = self.read()
        assert envelope.dest_addr == HOST_ADDR, envelope
        assert envelope.source_addr == "cgcs.scale", envelope
        return decode_reply(envelope.data)

    def down(self, timeout_ms: int = 5000) -> ScaleReply:
        self.send(ScaleRequest(direction=Direction.DOWN, timeout_ms=timeout_ms))
        reply = self.reply()
        assert isinstance(reply, ScaleReply), reply
        return reply

    def up(self, cpu: int, timeout_ms: int = 5000) -> ScaleReply:
        self.send(ScaleRequest(direction=Direction.UP, online_cpu=cpu, timeout_ms=timeout_ms))
        reply = self.reply()
        assert isinstance(reply, ScaleReply), reply
        return reply

    def sync_request(self) -> None:
        """Read the guest's boot-sync request (to the host's `cgcs.scale`)."""
        envelope = self.read()
        assert envelope.dest_addr == "cgcs.scale", envelope
        assert envelope.source_addr == "cgcs.scale", envelope
        assert decode_request(envelope.data) == decode_request(
            {"version": 2, "msg_type": "scale_sync_request", "resource": "cpu"}
        )


@dataclass
class ScaledGuest:
    guest: GuestUnderTest
    root: Path  # the sysfs root of the guest's lab CPU tree
    dir: Path

    @property
    def tree(self) -> LabCpuSysfs:
        return LabCpuSysfs(self.root)

    def online_file(self) -> str:
        return (self.root / CPU_DIR / "online").read_text()

    def start(self, *extra: str, cpus: int = 4) -> None:
        self.guest.scale = ("--sysfs-root", str(self.root), "--lab-cpus", str(cpus))
        self.guest.start(*extra)

    def host(self) -> ScaleHost:
        return ScaleHost(self.guest.host())

    def helper(self, body: str) -> Path:
        path = self.dir / f"helper-{secrets.token_hex(3)}"
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)
        return path


@pytest.fixture
def scaled(netns: NetnsFactory, daemon: DaemonFactory, short_dir: Path) -> ScaledGuest:
    """A guest agent in its own namespace, not started yet (`start` takes options)."""
    ns = netns()
    channel = short_dir / f"servers/{secrets.token_hex(3)}/channel.sock"
    guest = GuestUnderTest(ns, channel, netns, daemon, daemon=None)  # type: ignore[arg-type]
    return ScaledGuest(guest=guest, root=short_dir / "sysroot", dir=short_dir)


__all__ += ["HOST_ADDR", "ScaleHost", "ScaledGuest", "wait_until"]


@pytest.fixture(autouse=True)
def scale_agents() -> Iterator[None]:
    """Every scale agent a host-side test started (tests/integration/scaling/agent.py) is
    stopped after it."""
    yield
    while STARTED:
        STARTED.pop().stop()
