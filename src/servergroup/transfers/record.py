"""Transfer records: what `servergroup image send|receive` write to etcd (pure).

Theory of operation. An image transfer is one sender and its receivers,
talking only to each other; so that every host's API, dashboard and metrics
can show it, each of them also writes a small JSON record under the
`transfers/` prefix of the namespace:

    transfers/<address>:<port>                      the sender's record
    transfers/<address>:<port>/receivers/<name>     one receiver's record

`<address>:<port>` is the sender's endpoint (its LOCAL_IP and PORT, which is
also every receiver's SERVER_IP and PORT), so a receiver can name the
transfer it joins without a word from the sender. Only one sender can hold
an endpoint at a time (its TCP port), so the endpoint is the transfer's
slot: a new transfer from the same endpoint replaces the last one's record,
and its sender deletes the finished receiver records the last one left
(`stale_receivers`: at its start, those that ended before it began; at its
end, those not among its clients). Records sit on a lease of `RETENTION_INTERVAL` that
their writer renews while it runs, so a finished or abandoned transfer
disappears that long after its last write: the prefix never grows without
bound.

A writer writes at most once per `WRITE_INTERVAL` (`WritePacer`), again
every `HEARTBEAT_INTERVAL` without news (so a reader can tell a live
transfer from one whose writer died: `updated_at`), and once more at the end.

This module holds the records, their codecs, the key builders, the pacer and
`join()`, which turns the keys under `transfers/` into one `Transfer` per
endpoint. No I/O and no clock: times are passed in.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from servergroup.common.errors import RemoteError

TRANSFERS: Final = "transfers/"
RECEIVERS: Final = "/receivers/"

#: At most one write per record this often (seconds): two per second.
WRITE_INTERVAL: Final = 0.5
#: A record is written again after this long without news (seconds).
HEARTBEAT_INTERVAL: Final = 10.0
#: A running record not written for this long: its writer is gone or cut off from etcd.
STALE_AFTER: Final = 3 * HEARTBEAT_INTERVAL
#: How far apart two hosts' clocks may be when a sender tells old receivers' records apart.
CLOCK_SLACK: Final = 1.0
#: How long a record outlives its writer's last renewal (seconds).
RETENTION_INTERVAL: Final = 3600


class RecordError(RemoteError):
    """A record under `transfers/` that does not decode."""


class TransferState(enum.Enum):
    """Where a transfer, or one receiver's part of it, stands."""

    RUNNING = "running"
    #: Every expected client (a receiver: this one) has the verified image.
    FINISHED = "finished"
    #: The image went out, but not every expected client finished.
    PARTIAL = "partial"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self is not TransferState.RUNNING


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientRow:
    """One client as the sender's final report has it."""

    name: str
    address: str
    status: str  # the sender's ClientStatus: finished, failed, dropped, missing
    reason: str = ""
    tcp_only: bool = False
    loss: float = 0.0
    repaired: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SenderRecord:
    """`transfers/<endpoint>`: the sender's view of its transfer."""

    transfer_id: str  # random, new for each transfer from the endpoint
    host: str  # the sender's host name
    address: str
    port: int
    group: str
    mtu: int
    expected_clients: int
    state: TransferState
    started_at: float  # wall-clock seconds, for display
    updated_at: float
    ended_at: float | None = None
    #: Image size in bytes: the file's size when known, else known at the end.
    size: int | None = None
    #: Bytes every client has (the sender's completed buffers).
    done_bytes: int = 0
    #: The rate control's current sending rate (bytes/s).
    rate: float = 0.0
    #: Packets sent again over TCP so far.
    repairs: int = 0
    result: str = ""
    clients: tuple[ClientRow, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiverRecord:
    """`transfers/<endpoint>/receivers/<name>`: one receiver's own view."""

    name: str
    host: str
    address: str
    state: TransferState
    started_at: float
    updated_at: float
    ended_at: float | None = None
    received_bytes: int = 0
    #: Bytes/s over the receiver's run so far (its start to its last write).
    throughput: float = 0.0
    repaired: int = 0
    tcp_only: bool = False
    size: int | None = None
    result: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Transfer:
    """What readers see: one endpoint's sender record (if any) and its receivers."""

    endpoint: str
    sender: SenderRecord | None
    receivers: tuple[ReceiverRecord, ...] = ()
    problems: tuple[str, ...] = field(default=())

    def stale(self, now: float) -> bool:
        """A running sender whose record has not been written for `STALE_AFTER`."""
        s = self.sender
        return s is not None and not s.state.final and now - s.updated_at > STALE_AFTER


# -- keys ----------------------------------------------------------------------------------


def endpoint(address: object, port: int) -> str:
    return f"{address}:{port}"


def sender_key(endpoint: str) -> str:
    return f"{TRANSFERS}{endpoint}"


def receiver_key(endpoint: str, name: str) -> str:
    return f"{TRANSFERS}{endpoint}{RECEIVERS}{name}"


def receivers_prefix(endpoint: str) -> str:
    return f"{TRANSFERS}{endpoint}{RECEIVERS}"


def parse_key(key: str) -> tuple[str, str | None] | None:
    """`(endpoint, receiver name or None)` of a key under `transfers/`; None if foreign."""
    if not key.startswith(TRANSFERS):
        return None
    rest = key[len(TRANSFERS) :]
    head, sep, name = rest.partition(RECEIVERS)
    if not head or "/" in head:
        return None
    if not sep:
        return head, None
    if not name or "/" in name:
        return None
    return head, name


# -- codecs --------------------------------------------------------------------------------


def _encode(record: SenderRecord | ReceiverRecord) -> bytes:
    def default(value: object) -> object:
        if isinstance(value, enum.Enum):
            return value.value
        raise TypeError(type(value).__name__)

    data = asdict(record)
    return json.dumps(data, default=default, separators=(",", ":"), allow_nan=False).encode()


def encode_sender(record: SenderRecord) -> bytes:
    return _encode(record)


def encode_receiver(record: ReceiverRecord) -> bytes:
    return _encode(record)


def _load(value: bytes) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RecordError("not a JSON object")
    try:
        data["state"] = TransferState(data["state"])
    except (KeyError, ValueError, TypeError):
        raise RecordError("no valid state") from None
    return data


def _finite(data: dict[str, Any], *names: str) -> None:
    for name in names:
        value = data.get(name)
        if value is not None and (not isinstance(value, int | float) or not math.isfinite(value)):
            raise RecordError(f"{name} is not a number")


def decode_sender(value: bytes) -> SenderRecord:
    data = _load(value)
    _finite(data, "started_at", "updated_at", "ended_at", "rate")
    try:
        clients = tuple(ClientRow(**row) for row in data.pop("clients", ()))
        return SenderRecord(**data, clients=clients)
    except TypeError as exc:
        raise RecordError(f"not a sender record: {exc}") from None


def decode_receiver(value: bytes) -> ReceiverRecord:
    data = _load(value)
    _finite(data, "started_at", "updated_at", "ended_at", "throughput")
    try:
        return ReceiverRecord(**data)
    except TypeError as exc:
        raise RecordError(f"not a receiver record: {exc}") from None


# -- reading -------------------------------------------------------------------------------


def join(items: Iterable[tuple[str, bytes]]) -> list[Transfer]:
    """One `Transfer` per endpoint from `(key, value)` pairs under `transfers/`.

    Newest first (by the sender's start, else the first receiver's); a record
    that does not decode is named in its transfer's `problems`, not raised.
    """
    senders: dict[str, SenderRecord | None] = {}
    receivers: dict[str, list[ReceiverRecord]] = {}
    problems: dict[str, list[str]] = {}
    for key, value in items:
        parsed = parse_key(key)
        if parsed is None:
            continue
        ep, name = parsed
        senders.setdefault(ep, None)
        try:
            if name is None:
                senders[ep] = decode_sender(value)
            else:
                receivers.setdefault(ep, []).append(decode_receiver(value))
        except RecordError as exc:
            problems.setdefault(ep, []).append(f"{key}: {exc}")
    out = [
        Transfer(
            endpoint=ep,
            sender=sender,
            receivers=tuple(sorted(receivers.get(ep, ()), key=lambda r: r.name)),
            problems=tuple(problems.get(ep, ())),
        )
        for ep, sender in senders.items()
    ]

    def started(t: Transfer) -> float:
        if t.sender is not None:
            return t.sender.started_at
        return min((r.started_at for r in t.receivers), default=0.0)

    out.sort(key=started, reverse=True)
    return out


def stale_receivers(
    items: Iterable[tuple[str, bytes]],
    endpoint: str,
    *,
    started_at: float | None = None,
    clients: Collection[str] | None = None,
) -> list[str]:
    """Receiver keys of `endpoint` that an earlier transfer from it left.

    `items` are `(key, value)` under the endpoint. Only final records are
    stale, and only those that are:

    - `started_at` (the new sender's start, wall clock): ended more than
      `CLOCK_SLACK` before it. A receiver of the new transfer cannot have
      ended before its sender started; the slack covers clocks that differ
      between hosts. What it leaves, the end removes:
    - `clients` (the names in the new sender's final report): not one of them.

    A record that does not decode is stale too: nobody can read it.
    """
    prefix = receivers_prefix(endpoint)
    stale = []
    for key, value in items:
        if not key.startswith(prefix):
            continue
        try:
            r = decode_receiver(value)
        except RecordError:
            stale.append(key)
            continue
        ended_at = r.ended_at or r.updated_at
        before = started_at is not None and ended_at < started_at - CLOCK_SLACK
        foreign = clients is not None and r.name not in clients
        if r.state.final and (before or foreign):
            stale.append(key)
    return stale


# -- pacing --------------------------------------------------------------------------------


@dataclass(slots=True)
class WritePacer:
    """When a record's writer writes: news at most every `interval`, else a heartbeat.

    `changed()` marks news; `due(now)` says whether to write now; `wrote(now)`
    after a write (successful or not: a failed write is not retried sooner);
    `next_timer()` is when `due` may next turn true.
    """

    interval: float = WRITE_INTERVAL
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    last_write_at: float | None = None
    dirty: bool = True

    def changed(self) -> None:
        self.dirty = True

    def due(self, now: float) -> bool:
        if self.last_write_at is None:
            return True
        since = now - self.last_write_at
        return (self.dirty and since >= self.interval) or since >= self.heartbeat_interval

    def wrote(self, now: float) -> None:
        self.last_write_at = now
        self.dirty = False

    def next_timer(self) -> float | None:
        if self.last_write_at is None:
            return None
        return self.last_write_at + (self.interval if self.dirty else self.heartbeat_interval)


__all__ = [
    "CLOCK_SLACK",
    "HEARTBEAT_INTERVAL",
    "RECEIVERS",
    "RETENTION_INTERVAL",
    "STALE_AFTER",
    "TRANSFERS",
    "WRITE_INTERVAL",
    "ClientRow",
    "ReceiverRecord",
    "RecordError",
    "SenderRecord",
    "Transfer",
    "TransferState",
    "WritePacer",
    "decode_receiver",
    "decode_sender",
    "encode_receiver",
    "encode_sender",
    "endpoint",
    "join",
    "parse_key",
    "receiver_key",
    "receivers_prefix",
    "sender_key",
    "stale_receivers",
]
