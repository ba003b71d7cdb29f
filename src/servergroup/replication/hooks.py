"""The named hook points of an epoch and the failure injection at them. Pure.

Remus's control script let an operator kill the protected VM at six points of
the epoch, by typing their names on stdin; we keep the names and the points
(seed 004):

- ``s``  before the postsuspend hooks (nothing of the epoch captured yet)
- ``s2`` after them (captured, not yet resumed)
- ``r``  before the preresume hooks
- ``r2`` after them (about to resume)
- ``c``  before the commit hooks (the backup has the epoch; no output released)
- ``c2`` after them (disk committed and output released)

The primary's state machine emits an `InjectFailure` action at the armed
point, in order among its other actions; the driver dies there (SIGKILL on
itself), so nothing after that point happens, as in Remus.
"""

from __future__ import annotations

from enum import StrEnum

from servergroup.common.errors import UsageError


class FailurePoint(StrEnum):
    """Where in the epoch an injected failure strikes (the seed's command names)."""

    S = "s"
    S2 = "s2"
    R = "r"
    R2 = "r2"
    C = "c"
    C2 = "c2"


def parse_failure_point(text: str) -> FailurePoint:
    """The point a command names (``s``, ``s2``, ``r``, ``r2``, ``c``, ``c2``)."""
    try:
        return FailurePoint(text.strip())
    except ValueError:
        raise UsageError(
            f"{text.strip()!r} is not a failure point; use one of s, s2, r, r2, c, c2."
        ) from None
