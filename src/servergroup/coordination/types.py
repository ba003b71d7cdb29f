"""Values that cross the `Coordinator` boundary.

Pure data: no I/O, no clock. Keys are text relative to the coordinator's
namespace prefix (the backend adds and strips the prefix); values are bytes.
Revisions are the store's global, strictly increasing revision numbers; a
key's `create_revision` is the fencing token of whoever created it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
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


class CompareTarget(enum.Enum):
    """What a transaction's `Compare` looks at; for an absent key each number is 0."""

    CREATE = "create"  # the key's create revision (a fencing token)
    MOD = "mod"  # the revision of the key's last write
    VERSION = "version"  # how many puts since the key was created
    VALUE = "value"  # the key's value (an absent key matches nothing)


@dataclass(frozen=True, slots=True, kw_only=True)
class Compare:
    """One condition of a transaction: the key's `target` equals `expected`.

    Build them with the class methods; `Compare.unchanged(key, kv.mod_revision)`
    is the compare-on-mod-revision of a read-modify-write, `Compare.absent(key)`
    a create-if-absent, `Compare.held(guard)` a fencing guard.
    """

    key: str
    target: CompareTarget
    expected: int | bytes

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key=key, target=CompareTarget.CREATE, expected=0)

    @classmethod
    def unchanged(cls, key: str, mod_revision: int) -> Compare:
        """The key was last written at `mod_revision` (0: it does not exist)."""
        return cls(key=key, target=CompareTarget.MOD, expected=mod_revision)

    @classmethod
    def created_at(cls, key: str, create_revision: int) -> Compare:
        return cls(key=key, target=CompareTarget.CREATE, expected=create_revision)

    @classmethod
    def held(cls, guard: Guard) -> Compare:
        """The fencing condition of `guard` as a compare."""
        return cls.created_at(guard.key, guard.create_revision)

    @classmethod
    def value_is(cls, key: str, value: bytes) -> Compare:
        return cls(key=key, target=CompareTarget.VALUE, expected=value)

    def holds(self, kv: KeyValue | None) -> bool:
        """Whether this compare holds for `kv` (None: the key is absent); pure."""
        if self.target is CompareTarget.VALUE:
            return kv is not None and kv.value == self.expected
        actual = 0
        if kv is not None:
            if self.target is CompareTarget.CREATE:
                actual = kv.create_revision
            elif self.target is CompareTarget.MOD:
                actual = kv.mod_revision
            else:
                actual = kv.version
        return actual == self.expected


@dataclass(frozen=True, slots=True, kw_only=True)
class Put:
    """A transaction operation: write `key` (on `lease`, 0 for none)."""

    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Delete:
    """A transaction operation: delete `key` (absent is not an error)."""

    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Get:
    """A transaction operation: read `key` as of the transaction."""

    key: str


#: What a transaction branch may do. A key is written (put or deleted) at most
#: once per branch, as etcd requires.
TxnOp = Put | Delete | Get


@dataclass(frozen=True, slots=True, kw_only=True)
class TxnResult:
    """What a transaction did.

    `succeeded`: every compare held, so the success branch ran (else the
    failure branch). `revision`: the store revision after the transaction
    (every write of it took effect at this one revision). `reads`: the key of
    each `Get` of the branch that ran, with what it read (None: absent).
    `deleted`: the keys of the branch's `Delete`s that existed.
    """

    succeeded: bool
    revision: int
    reads: Mapping[str, KeyValue | None]
    deleted: frozenset[str] = frozenset()


__all__ = [
    "Compare",
    "CompareTarget",
    "Delete",
    "EventKind",
    "Get",
    "Guard",
    "KeyValue",
    "Lease",
    "Put",
    "Range",
    "SessionState",
    "TxnOp",
    "TxnResult",
    "WatchEvent",
]
