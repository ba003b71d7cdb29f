"""The driver registry: each `DriverKind`, what it needs and offers, and how a host builds it.

Theory of operation. Whatever differs between kinds of server lives here, in
one frozen `DriverInfo` per `DriverKind` (`DRIVERS`), so that code elsewhere
asks `driver_info(kind).<setting>` instead of comparing names: the least
time an operation waits for such a server, its default memory, how it moves
to another host, a one-line description for help texts, and the factory
that builds the driver (`build_driver`, `build_drivers`).

Building a driver takes a `DriverContext`: the machine's state directory
and the host the driver acts for. The host daemon passes its channel
directory; a command that only reaches servers already running (`server
exec`, `console`, `vcpus`) passes none. The drivers' modules are imported
only when one is built, so reading a setting loads neither QEMU's code nor
the lab's.

Adding a kind: a `DriverKind` value (its name in records), a driver class
implementing `ServerDriver` and `Hypervisor`, and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from servergroup.servers.drivers.base import MoveStyle, ServerDriver
from servergroup.servers.drivers.hypervisor import Hypervisor
from servergroup.servers.model import DriverKind

if TYPE_CHECKING:
    from servergroup.servers.drivers.qemu.execbroker import ExecBrokers


class Driver(ServerDriver, Hypervisor, Protocol):
    """A server driver: the lifecycle of its servers and their vCPUs."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverContext:
    """What a driver is built for: a host on this machine."""

    state_dir: Path  # the machine's servergroup state directory
    host: str  # the host the driver acts for
    #: Where the host's relay finds the servers' channels; None for a command that
    #: only reaches servers already running (it starts none).
    channel_dir: Path | None = None
    #: The address of this host a live migration's source connects to (qemu servers).
    migration_address: str = "127.0.0.1"
    #: The exec brokers of the host's VMs, when the host daemon runs them as a component.
    brokers: ExecBrokers | None = None
    #: Whether lab servers' guest agents run the scale agent (`ServersConfig.lab_scale_agent`).
    lab_scale_agent: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverInfo:
    """One kind of server driver: its settings, and the factory that builds it."""

    kind: DriverKind
    #: What such servers are, in a few words ("lab servers (...)" in help texts).
    description: str
    #: How the driver moves a running server to another host (`ServerDriver.move_style`).
    move_style: MoveStyle
    #: The least a lifecycle operation waits for such a server when no timeout is given.
    least_timeout: float
    #: The least memory such a server gets, and what it gets when none is asked for.
    min_memory_mb: int
    #: Builds the driver (imports its module only then).
    factory: Callable[[DriverContext], Driver]


def _lab(context: DriverContext) -> Driver:
    from servergroup.servers.drivers.lab import LabDriver, default_guest_argv

    if context.lab_scale_agent:
        return LabDriver(context.state_dir)
    return LabDriver(
        context.state_dir,
        guest_argv=lambda path, vcpus: default_guest_argv(path, vcpus, scale_agent=False),
    )


def _qemu(context: DriverContext) -> Driver:
    from servergroup.servers.drivers.qemu.driver import QemuDriver

    return QemuDriver(
        context.state_dir,
        host=context.host,
        channel_dir=context.channel_dir,
        migration_address=context.migration_address,
        brokers=context.brokers,
    )


#: Every driver kind, in the order hosts list them.
DRIVERS: Mapping[DriverKind, DriverInfo] = {
    DriverKind.LAB: DriverInfo(
        kind=DriverKind.LAB,
        description="network namespaces with a guest agent",
        move_style=MoveStyle.CHANNEL,
        least_timeout=0.0,
        min_memory_mb=64,
        factory=_lab,
    ),
    DriverKind.QEMU: DriverInfo(
        kind=DriverKind.QEMU,
        description="real VMs",
        move_style=MoveStyle.COPY,
        least_timeout=120.0,  # a VM boots or migrates in seconds, not at once
        min_memory_mb=256,  # its guest runs Python
        factory=_qemu,
    ),
}


def driver_info(kind: DriverKind) -> DriverInfo:
    """The settings of driver `kind`."""
    return DRIVERS[kind]


def build_driver(kind: DriverKind, context: DriverContext) -> Driver:
    """The driver of `kind` for `context.host`."""
    return DRIVERS[kind].factory(context)


def build_drivers(kinds: Iterable[DriverKind], context: DriverContext) -> list[Driver]:
    """The drivers of `kinds` (each once, in the given order) for the host daemon."""
    return [build_driver(kind, context) for kind in dict.fromkeys(kinds)]


__all__ = [
    "DRIVERS",
    "Driver",
    "DriverContext",
    "DriverInfo",
    "DriverKind",
    "build_driver",
    "build_drivers",
    "driver_info",
]
