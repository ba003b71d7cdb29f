"""The `ServerDriver` protocol: what a host does to the servers it runs.

A driver translates; it does not decide (ARCHITECTURE.md, layering rule 2).
`servers.reconcile.decide` says what to do, the `ServerManager` calls the
driver to do it. Every call is idempotent (stopping a stopped server
succeeds, deleting an absent one succeeds) and safe to repeat after a crash
of the caller: a driver finds what already runs and adopts it.

The server's **channel** (the guest-host byte stream of the messaging
protocol) appears in a host's channel directory as
`cgcs.messaging.<instance>.sock`, where that host's relay finds it. `attach`
puts it there and `detach` takes it away; a live migration is `detach` on
the source and `attach` on the target, with the server's processes untouched.

How a **live migration** moves a server depends on the driver (`move_style`):

- `MoveStyle.CHANNEL` (lab): the server's processes are machine-wide; the
  source detaches the channel, the target attaches it.
- `MoveStyle.COPY` (qemu): the target host starts an empty copy waiting for
  the server's state (`receive`, which returns the address it listens at),
  the source sends the running server there (`migrate`) and ends its own
  copy. The copy's channel is in the target's channel directory from its
  start, as libvirt lays it out.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from servergroup.common.errors import RemoteError
from servergroup.servers.model import DriverKind, ServerSpec

#: The name of a server's channel in a host's channel directory (spec section 2).
CHANNEL_PREFIX = "cgcs.messaging."


def channel_name(instance: str) -> str:
    """`cgcs.messaging.<instance>.sock`: the channel's file name in a channel directory."""
    return f"{CHANNEL_PREFIX}{instance}.sock"


class DriverError(RemoteError):
    """A driver could not do what it was asked; the message is one sentence saying why."""


class Power(enum.Enum):
    """What a driver sees of a server's processes."""

    ABSENT = "absent"  # nothing exists: never created, or deleted
    STOPPED = "stopped"  # created, but no process runs
    RUNNING = "running"  # processes run
    FROZEN = "frozen"  # processes exist and are frozen (paused)
    INCOMING = "incoming"  # a copy waits here for a live migration's stream


class MoveStyle(enum.Enum):
    """How a driver moves a running server to another host (see the module docstring)."""

    CHANNEL = "channel"
    COPY = "copy"


@dataclass(frozen=True, slots=True, kw_only=True)
class Observed:
    """One look at a server on this machine."""

    power: Power
    pids: tuple[int, ...] = ()  # every process of the server
    guest_pid: int | None = None  # the guest agent, while it is alive (frozen counts)
    channel_dir: Path | None = None  # the channel directory the server is attached to
    #: Set when the server's processes died without being asked to (one sentence why).
    crashed: str | None = None
    #: Where a copy of the server waits for a live migration (`Power.INCOMING`).
    incoming_uri: str | None = None

    @property
    def guest_alive(self) -> bool:
        return self.guest_pid is not None


class ServerDriver(Protocol):
    """Creates, runs and observes servers on this machine."""

    @property
    def kind(self) -> DriverKind:
        """The kind of server it runs, as in `ServerSpec.driver`."""
        ...

    @property
    def move_style(self) -> MoveStyle:
        """How this driver moves a running server to another host."""
        ...

    async def create(self, spec: ServerSpec) -> None:
        """Make the server exist, stopped (no process runs yet)."""
        ...

    async def start(self, spec: ServerSpec) -> None:
        """Run the server's guest agent (again); returns once its channel is listening."""
        ...

    async def stop(self, spec: ServerSpec) -> None:
        """End every process of the server (SIGTERM, then SIGKILL)."""
        ...

    async def reboot(self, spec: ServerSpec) -> None:
        """Reset the running server: its processes start afresh; returns once it listens."""
        ...

    async def pause(self, spec: ServerSpec) -> None:
        """Freeze every process of the server."""
        ...

    async def unpause(self, spec: ServerSpec) -> None:
        """Thaw the server's processes."""
        ...

    async def delete(self, spec: ServerSpec) -> None:
        """Stop the server and remove everything it had (channel links included)."""
        ...

    async def attach(self, spec: ServerSpec, channel_dir: Path) -> None:
        """Make the server's channel appear in `channel_dir` (and leave any other)."""
        ...

    async def detach(self, spec: ServerSpec, channel_dir: Path) -> None:
        """Take the server's channel out of `channel_dir` (absent already is fine)."""
        ...

    async def receive(self, spec: ServerSpec, channel_dir: Path) -> str:
        """`MoveStyle.COPY`: start a copy here waiting for the server; return its address."""
        ...

    async def migrate(self, spec: ServerSpec, uri: str) -> None:
        """`MoveStyle.COPY`: send the running server to the copy at `uri`, then end ours."""
        ...

    async def observe(self, spec: ServerSpec) -> Observed:
        """What runs of the server now."""
        ...

    def exec_command(self, spec: ServerSpec, argv: Sequence[str]) -> list[str]:
        """The command line that runs `argv` inside the server; DriverError if it is not here."""
        ...

    async def close(self) -> None:
        """Let go of what the driver serves itself (the servers keep running)."""
        ...


__all__ = [
    "CHANNEL_PREFIX",
    "DriverError",
    "MoveStyle",
    "Observed",
    "Power",
    "ServerDriver",
    "channel_name",
]
