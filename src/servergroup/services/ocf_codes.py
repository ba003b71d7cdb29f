"""OCF exit codes and how bad each one is, as Pacemaker reads them (pure).

Theory of operation (no I/O, no clock).

An agent answers every action with an exit code (OCF spec 1.1, REFERENCE.md).
Some codes are *states* a monitor reports (7 not running, 8 running as
master, 0 running), the rest are failures of one of three classes, which
decide recovery:

- **soft** (1 generic, 9 failed master, a timeout, death by a signal, an
  unknown code): restart or move, by the service's recovery policy;
- **hard** (2 bad arguments, 3 unimplemented, 4 no permission, 5 not
  installed): the node cannot run this service: move it and ban the node
  for it;
- **fatal** (6 not configured): the definition itself is wrong, so no node
  can run it: stop it everywhere.

`severity(action, code)` says which class a result of `action` is, or
`Severity.NONE` when it is not a failure: 0 for every action; for
`monitor` also 7 and 8 (whether "not running" is a failure depends on
whether the instance should run, which only the caller knows); for `stop`
also 7 (a stopped resource is what stop wants). `code` None stands for a
timeout or a kill, both soft.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final


class OcfStatus(enum.IntEnum):
    """The exit codes of the OCF resource agent API."""

    SUCCESS = 0
    ERR_GENERIC = 1
    ERR_ARGS = 2
    ERR_UNIMPLEMENTED = 3
    ERR_PERM = 4
    ERR_INSTALLED = 5
    ERR_CONFIGURED = 6
    NOT_RUNNING = 7
    RUNNING_MASTER = 8
    FAILED_MASTER = 9


class Severity(enum.Enum):
    """How bad a result is, in Pacemaker's classes (see the module's docstring)."""

    NONE = "none"
    SOFT = "soft"
    HARD = "hard"
    FATAL = "fatal"


#: The class of each code when it is a failure.
FAILURE_CLASS: Final[Mapping[OcfStatus, Severity]] = {
    OcfStatus.ERR_GENERIC: Severity.SOFT,
    OcfStatus.ERR_ARGS: Severity.HARD,
    OcfStatus.ERR_UNIMPLEMENTED: Severity.HARD,
    OcfStatus.ERR_PERM: Severity.HARD,
    OcfStatus.ERR_INSTALLED: Severity.HARD,
    OcfStatus.ERR_CONFIGURED: Severity.FATAL,
    OcfStatus.NOT_RUNNING: Severity.SOFT,
    OcfStatus.RUNNING_MASTER: Severity.SOFT,
    OcfStatus.FAILED_MASTER: Severity.SOFT,
}

#: Codes that are not failures for an action, beyond SUCCESS.
_EXPECTED: Final[Mapping[str, frozenset[OcfStatus]]] = {
    "monitor": frozenset({OcfStatus.NOT_RUNNING, OcfStatus.RUNNING_MASTER}),
    "stop": frozenset({OcfStatus.NOT_RUNNING}),
}


def status_of(code: int | None) -> OcfStatus | None:
    """The OCF status of an exit code, None for a timeout, a signal or an unknown code."""
    if code is None:
        return None
    try:
        return OcfStatus(code)
    except ValueError:
        return None


def severity(action: str, code: int | None) -> Severity:
    """The class of `action` ending with `code` (None: timed out or killed)."""
    status = status_of(code)
    if status is None:
        return Severity.SOFT
    if status is OcfStatus.SUCCESS or status in _EXPECTED.get(action, frozenset()):
        return Severity.NONE
    return FAILURE_CLASS[status]


__all__ = ["FAILURE_CLASS", "OcfStatus", "Severity", "severity", "status_of"]
