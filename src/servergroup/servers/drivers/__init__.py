"""Server drivers: what a host does to its servers (`ServerDriver`), and the lab driver.

The lab driver (`servergroup.servers.drivers.lab.LabDriver`) is imported from
its module, so that code needing only the protocol does not load it.
"""

from servergroup.servers.drivers.base import (
    CHANNEL_PREFIX,
    DriverError,
    Observed,
    Power,
    ServerDriver,
    channel_name,
)

__all__ = ["CHANNEL_PREFIX", "DriverError", "Observed", "Power", "ServerDriver", "channel_name"]
