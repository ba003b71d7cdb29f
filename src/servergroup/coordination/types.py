"""Values that cross the `Coordinator` boundary.

Pure data: no I/O, no clock. Keys are text relative to the coordinator's
namespace prefix (the backend adds and strips the prefix); values are bytes.
Revisions are the store's global, strictly increasing revision numbers; a
key's `create_revision` is the fencing token of whoever created it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EventKind(enum.Enum):
    """What happened to a key."""

    PUT = "put"
    DELETE = "delete"


class SessionState(enum.Enum):
    """A session's standing, reduced as kazoo reduces it.

    CONNECTED: the lease is known alive; owners may act.
    SUSPENDED: renewal is overdue; the lease may be gone: owners stop acting.
    LOST: the lease is gone (or cannot be proven alive); what it held is lost.
    """

    CONNECTED = "connected"
    SUSPENDED = "suspended"
    LOST = "lost"


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyValue:
    """One key as the store holds it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0  # 0: no lease


@dataclass(frozen=True, slots=True, kw_only=True)
class Range:
    """The result of a prefix read: the items, and the store revision it was read at."""

    items: tuple[KeyValue, ...]
    revision: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchEvent:
    """One change, in store order. `revision` is the change's own revision.

    A DELETE carries no value, create revision, version or lease (0), as etcd
    reports it. `version` counts the puts to the key since it was created
    (1 for the creating put), so it numbers the values one key takes.
    """

    kind: EventKind
    key: str
    value: bytes
    revision: int
    create_revision: int
    version: int = 0
    lease: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """A granted lease: its id and the TTL the store actually granted (seconds)."""

    id: int
    ttl: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Guard:
    """A fencing condition: `key` must still exist with this `create_revision`.

    An owner hands `Guard(owner_key, token)` with its writes; the store refuses
    the write once the owner key was deleted (lease expired) or re-created by
    someone else, so a stale token can never act.
    """

    key: str
    create_revision: int


__all__ = ["EventKind", "Guard", "KeyValue", "Lease", "Range", "SessionState", "WatchEvent"]
