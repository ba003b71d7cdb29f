"""Lab hosts on one machine: network namespaces on a bridge, with link rate and loss.

The demo, the benchmarks and the tests all use it::

    from servergroup.lab import Lab

    lab = Lab("sg")
    status = lab.up(3, mtu=9000, rate="1gbit", loss=1)
    lab.exec("h1", ["ip", "addr"], check=True)
    lab.set_link("h2", up=False)
    lab.crash("h3")          # SIGKILL everything on h3 (see `servergroup.lab.faults`)
    lab.freeze("h1"); lab.thaw("h1")
    lab.cut("h2"); lab.heal("h2")
    lab.down()

Addresses come from 198.18.0.0/15; the root namespace has `.1` of the lab's
/24 (`status.root_address`), host `h<i>` has `.(10+i)`. Needs root.
"""

from servergroup.lab.errors import LabError
from servergroup.lab.faults import Satellite, SatelliteFinder
from servergroup.lab.manager import Lab, remove_stale_labs
from servergroup.lab.plan import (
    DEFAULT_MTU,
    DEFAULT_NAME,
    LAB_RANGE,
    MAX_HOSTS,
    LabHost,
    LabStatus,
    LossScope,
    format_rate,
    parse_loss,
    parse_rate,
)

__all__ = [
    "DEFAULT_MTU",
    "DEFAULT_NAME",
    "LAB_RANGE",
    "MAX_HOSTS",
    "Lab",
    "LabError",
    "LabHost",
    "LabStatus",
    "LossScope",
    "Satellite",
    "SatelliteFinder",
    "format_rate",
    "parse_loss",
    "parse_rate",
    "remove_stale_labs",
]
