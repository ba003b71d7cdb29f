"""What the guest's scale agent does with its helper's answer, pure.

Theory of operation. On a scale-down the agent runs the application's
helper (`app_scale_helper --cpu_del`), whose **exit status** names the CPU
to take offline (the original's convention, spec section 5). How the run
ended is a `HelperOutcome`; `named_cpu` reads the convention and
`choose_offline` picks the CPU, given the CPUs online now:

- a status from 1 to `MAX_HELPER_CPU` names that CPU;
- status 0 ("no preference"), a status of `FIRST_ERROR_STATUS` (200) or more
  (the original took a helper's `exit(-1)`, status 255, as CPU 255: spec
  section 6; here every such status is an error), a helper that is missing,
  could not be started or was killed by a signal all name nothing;
- a named CPU that is not online, is CPU 0, or cannot be taken offline
  (no `online` switch) is not taken either;

and whenever nothing usable was named the agent falls back to the
highest-numbered online CPU other than 0 that can be taken offline. CPU 0 is never chosen: with only
CPU 0 online the choice is a refusal (`Refused`), with one sentence. A
helper that was still running at the request's deadline is not a choice
at all: the agent kills it and the request fails (`timed_out_message`).

Every result carries one sentence saying why, for the agent's log.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

#: Exit statuses from here up are errors, never CPU numbers.
FIRST_ERROR_STATUS: Final = 200
#: The highest CPU a helper's exit status can name.
MAX_HELPER_CPU: Final = FIRST_ERROR_STATUS - 1


class HelperEnd(enum.Enum):
    """How a run of the helper ended."""

    EXITED = "exited"  # with `status`
    MISSING = "missing"  # no helper at its path
    NOT_STARTED = "not started"  # there, but could not be run (`detail` says why)
    SIGNALLED = "signalled"  # killed by signal `status`
    TIMED_OUT = "timed out"  # still running at the deadline: killed by the agent


@dataclass(frozen=True, slots=True, kw_only=True)
class HelperOutcome:
    """One run of the helper: how it ended, its status or signal, and what it printed."""

    end: HelperEnd
    status: int | None = None
    detail: str = ""
    output: str = ""  # the start of what it printed, for the log only


@dataclass(frozen=True, slots=True, kw_only=True)
class Chosen:
    """Take `cpu` offline; `reason` says why that one."""

    cpu: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """Take nothing offline; `reason` is the sentence the host is told."""

    reason: str


def describe(outcome: HelperOutcome) -> str:
    """How the helper's run ended, as a phrase ("exited with status 3", ...)."""
    match outcome.end:
        case HelperEnd.EXITED:
            return f"exited with status {outcome.status}"
        case HelperEnd.MISSING:
            return "is not installed"
        case HelperEnd.NOT_STARTED:
            return f"could not be started ({outcome.detail or 'unknown error'})"
        case HelperEnd.SIGNALLED:
            return f"was killed by signal {outcome.status}"
        case HelperEnd.TIMED_OUT:
            return "was still running at the deadline and was killed"


def named_cpu(outcome: HelperOutcome) -> int | None:
    """The CPU the helper's exit status names, or None when it names none (see above)."""
    if outcome.end is not HelperEnd.EXITED or outcome.status is None:
        return None
    if 1 <= outcome.status <= MAX_HELPER_CPU:
        return outcome.status
    return None


def choose_offline(
    outcome: HelperOutcome, online: Sequence[int], fixed: Collection[int] = ()
) -> Chosen | Refused:
    """The CPU a scale-down takes offline, given the helper's run and the CPUs online now.

    `fixed`: online CPUs that cannot be taken offline (no `online` switch in sysfs).
    """
    others = set(online) - {0}
    if not others:
        return Refused(reason="only CPU 0 is online, and CPU 0 is never taken offline")
    candidates = sorted(others - set(fixed))
    if not candidates:
        return Refused(
            reason=f"no online CPU but 0 can be taken offline (CPU(s) "
            f"{', '.join(map(str, sorted(others)))} have no online switch)"
        )
    if outcome.end is HelperEnd.TIMED_OUT:
        return Refused(reason="the scale helper " + describe(outcome))
    fallback = candidates[-1]
    named = named_cpu(outcome)
    helper = f"the helper {describe(outcome)}"
    if named is not None and named in candidates:
        return Chosen(cpu=named, reason=f"{helper}, naming CPU {named}")
    if named is not None:
        why = f"{helper}, naming CPU {named}, which is not online"
    elif outcome.end is HelperEnd.EXITED and outcome.status == 0:
        why = f"{helper} (no preference)"
    elif outcome.end is HelperEnd.EXITED:
        why = f"{helper}, an error status"
    else:
        why = helper
    return Chosen(cpu=fallback, reason=f"{why}: the highest online CPU {fallback} instead")


def timed_out_message(what: str, timeout_ms: int) -> str:
    """The `err_msg` of a request whose helper outlived its `timeout_ms`."""
    return (
        f"the scale helper ({what}) was still running after the request's timeout of "
        f"{timeout_ms} ms and was killed"
    )


def helper_add_args(cpu: int, online: Sequence[int]) -> list[str]:
    """The helper's arguments after a scale-up: `--cpu_add N [0,1,2]` (compact JSON list)."""
    return ["--cpu_add", str(cpu), "[" + ",".join(str(c) for c in sorted(set(online))) + "]"]


#: The helper's arguments for a scale-down.
HELPER_DEL_ARGS: Final = ("--cpu_del",)


__all__ = [
    "FIRST_ERROR_STATUS",
    "HELPER_DEL_ARGS",
    "MAX_HELPER_CPU",
    "Chosen",
    "HelperEnd",
    "HelperOutcome",
    "Refused",
    "choose_offline",
    "describe",
    "helper_add_args",
    "named_cpu",
    "timed_out_message",
]
