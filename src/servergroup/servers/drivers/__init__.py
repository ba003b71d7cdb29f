"""Server drivers: what a host does to its servers (`ServerDriver`), and the lab and qemu drivers.

The drivers (`servergroup.servers.drivers.lab.LabDriver`,
`servergroup.servers.drivers.qemu.driver.QemuDriver`) are imported from their
modules, so that code needing only the protocol does not load them.
"""

from servergroup.servers.drivers.base import (
    CHANNEL_PREFIX,
    DriverError,
    MoveStyle,
    Observed,
    Power,
    ServerDriver,
    channel_name,
)

__all__ = [
    "CHANNEL_PREFIX",
    "DriverError",
    "MoveStyle",
    "Observed",
    "Power",
    "ServerDriver",
    "channel_name",
]
