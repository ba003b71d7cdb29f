"""Lab hosts on one machine: network namespaces on a bridge, with link rate and loss."""

from servergroup.lab.errors import LabError
from servergroup.lab.plan import LabHost, LabStatus, LossScope, format_rate, parse_loss, parse_rate

__all__ = [
    "LabError",
    "LabHost",
    "LabStatus",
    "LossScope",
    "format_rate",
    "parse_loss",
    "parse_rate",
]
