"""Errors of the coordination layer."""

from __future__ import annotations

from servergroup.common.errors import RemoteError


class CoordinationError(RemoteError):
    """The store refused or failed an operation."""


class StoreUnavailable(CoordinationError):
    """No member of the store answered within the operation's deadline."""


class WatchCompacted(CoordinationError):
    """A watch cannot resume: the store compacted the revisions it needs."""

    def __init__(self, message: str, *, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class LeaseNotFound(CoordinationError):
    """The lease expired or was revoked."""


class FencingError(CoordinationError):
    """A guarded write was refused: the writer's fencing token is stale."""


class RevisionConflict(CoordinationError):
    """A conditional write was refused: the key changed since the writer read it.

    The writer reads again and decides again (a read-modify-write retries).
    """


class StoreFull(CoordinationError):
    """The store refuses writes: its database reached its space quota (etcd's NOSPACE alarm).

    Nothing clears it by itself: an operator compacts the history,
    defragments the database and disarms the alarm (the message says how).
    """


__all__ = [
    "CoordinationError",
    "FencingError",
    "LeaseNotFound",
    "RevisionConflict",
    "StoreFull",
    "StoreUnavailable",
    "WatchCompacted",
]
