"""The group service: broadcast, status and notifications for the guests of one host.

Theory of operation (docs/design/messaging.md, spec section 4):

- **Requests.** The service routes `cgcs.server_grp` on the host's
  `ChannelRelay`. A message from a guest is accepted only when the guest's
  instance is a server of the registry placed on this host. Each guest has
  its own queue and worker, served in arrival order, so one guest's flood
  fills only its own queue and never delays the others. The queue drives
  flow control: at `high_water` requests waiting the relay stops reading
  that guest's channel (`relay.throttle(instance, True)`), at `low_water` it
  reads again, so a fast sender is slowed in its own channel and agent, not
  dropped. Pausing acts on whole reads, so a few hundred more may arrive;
  a request beyond the hard cap `hard_cap` (far above `high_water`) is
  answered at once with a nack `busy: ...` (carrying a broadcast's `id`),
  never dropped silently.
- **Broadcast, sending.** A valid text goes to the batcher of its group
  (one per group on this host, made on demand), in arrival order, without
  waiting for the store: the worker waits only while the batcher holds
  `batch_pending` broadcasts (that is what fills the guest's queue and
  pauses its channel). When the last transaction held 4 broadcasts or
  more (they arrive much faster than one per round trip), the batcher lets
  more gather for `batch_linger` (2 ms) before the next one, unless 100
  wait already: a transaction costs about the same CPU on every host
  whatever its size, and on a busy machine that, not etcd, bounds the
  group. Each host writes its batches of a group to its own key
  `broadcasts/<group>/<host>`, which no other host writes, so hosts never
  compete for a key. The batcher runs one transaction at a time: its key
  compared on the mod revision it last wrote (or absent), a put of one
  `BroadcastBatch` of up to `MAX_BATCH_ITEMS` broadcasts and
  `MAX_BATCH_BYTES` of value carrying `host_total` (this host's broadcasts
  of the group so far, this batch's included), under the host's
  registration guard; the failure branch reads its own key (and the
  guard's) only. It starts from this host's key as the group's first read
  found it, and sends nothing before that read. One transaction in flight
  per group per host keeps each sender's order. Once the group's watch
  has numbered a stored batch (`GroupFeed`: it needs every host's totals up
  to that revision), each (guest, address) that sent ids in it gets one
  cumulative `broadcast_ack` (its highest id, that broadcast's seq). A
  batch that cannot be stored (etcd unreachable, this host fenced) is
  nacked, each broadcast with its id and one sentence; those nacks go out
  before any later batch is tried, so before any ack that passes them.
  A transaction that got no answer is in doubt: it is sent again exactly as
  it was, and the first answer settles it: success (the earlier attempt
  did not land), or a failed compare whose read of this host's key finds
  the batch's own bytes (it landed: acked once, never stored twice), or
  other bytes (the key moved on without it, so it never can land: made
  again on what the key holds). Etcd unreachable for `in_doubt_timeout`,
  the batch is nacked unless the watch saw it stored, and counted as
  `nacked_but_stored` should it show up later.
  Broadcasts without an id (old applications) get no ack.
- **Broadcast, receiving.** The service watches the prefix
  `broadcasts/<group>/` of each group with a server on this host (from a
  read of the group's keys, when the registry change that placed the first
  one here is handled) and nothing else. The group's order is the store's
  order of those writes; each write of n items by host h is numbered from
  the sum of every host's latest `host_total` (h's included): its items
  are sum - n + 1 ... sum (`groups.sequencing.GroupFeed`, started from the
  totals the read found). Each batch's items are delivered in order to the
  LOCAL connected members of the group except that item's sender (and to
  their subscribed addresses); each delivered envelope is encoded once and
  the same bytes go to every member (`relay.send_to_guests`). One total
  order per group across all hosts, numbered 1, 2, 3... Seqs already
  delivered are skipped, a batch starting past the next seq is a gap
  (counted in `broadcasts_missed`, logged once), and once the group's keys
  are all deleted (the group was deleted) it numbers from 1 again. A host
  that fell behind the store's compaction reads the group's keys again:
  their totals say how many seqs it missed, and the key written last holds
  the group's latest batch, whose new items it delivers.
  A text that is too long, has a NUL or a newline, or comes from a server
  whose group does not exist is refused with a `nack` that says why.
- **Status.** A `status_query` gets one `status_response` per member of the
  requester's group (requester included; `server_info` with `host_alive`
  from the registry) and then `status_response_done`, all with the query's
  `seq`, sent back to the address that asked.
- **Notifications.** Every registry change of a server goes through the pure
  `notify.notification_for`; a host record that disappears (its daemon's
  lease expired) makes every server placed there "lost", one that appears
  makes them "recovered" (`notify.host_notifications`). Each event goes to
  the other LOCAL members of the server's group, never to the server itself.
- **Addresses.** Group traffic (broadcasts, notifications) goes to
  `cgcs.server_grp` in each guest and to every address that subscribed on
  that guest (`subscribe`, bounded per guest, forgotten when the guest's
  channel disconnects). Replies (status, nack, ack) go to the address that
  asked.
- **Size.** Every datagram a guest's agent will deliver is checked to stay
  under 4096 bytes before it is written; a larger one is dropped and counted.
  What the relay cannot write (the guest's 1 MiB write buffer is full, or
  it is not connected) is dropped and counted there and in `send_failures`,
  except a batch's last broadcast to a member, which the relay holds until
  the member's guest has room (`ChannelRelay.write_frames`, `newest`): its
  applications then see the gap even when nothing follows it.

Garbage from a guest is logged (rate-limited) and dropped; an unknown
`msg_type` gets a nack. Every outcome is counted in `counters`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii

from servergroup.common import metrics
from servergroup.common.backoff import Backoff
from servergroup.common.clock import Clock, SystemClock
from servergroup.common.component import ComponentHealth, HealthState, cancel_and_wait
from servergroup.common.errors import ConfigError
from servergroup.common.logsetup import log_bug
from servergroup.coordination import (
    Compare,
    CoordinationError,
    Coordinator,
    EventKind,
    Get,
    Guard,
    KeyValue,
    Put,
    StoreUnavailable,
    TxnOp,
    WatchCompacted,
    WatchEvent,
)
from servergroup.groups.notify import host_notifications, notification_for
from servergroup.groups.protocol import (
    Broadcast,
    BroadcastAck,
    GroupMessage,
    MsgType,
    Nack,
    Notification,
    StatusQuery,
    StatusResponse,
    StatusResponseDone,
    Subscribe,
    UnknownMessageType,
    Unsubscribe,
    check_broadcast_text,
    decode_group_message,
    encode_broadcast_json,
    encode_group_message,
    msg_type_of,
)
from servergroup.groups.sequencing import (
    GroupFeed,
    HostTotal,
    Numbered,
    cumulative_acks,
    take_batch,
)
from servergroup.guestcomm.drops import Counters, DropLog
from servergroup.guestcomm.protocol import (
    MAX_DATAGRAM,
    SERVER_GROUP_ADDR,
    Envelope,
    ProtocolError,
    host_frame_with,
)
from servergroup.guestcomm.relay import ChannelRelay
from servergroup.guestcomm.sockets import encode_delivery
from servergroup.servers.model import (
    BroadcastBatch,
    BroadcastItem,
    RecordError,
    RegistrySnapshot,
    Server,
    decode_batch,
    encode_batch,
    server_info,
)
from servergroup.servers.registry import (
    BROADCASTS,
    ChangeKind,
    RegistryCache,
    RegistryChange,
    broadcast_key,
    broadcast_prefix,
    parse_broadcast_key,
)

log = logging.getLogger(__name__)

#: Requests waiting per guest at which the relay stops reading its channel.
DEFAULT_HIGH_WATER = 1024
#: Requests waiting per guest at which the relay reads its channel again.
DEFAULT_LOW_WATER = 256
#: Requests waiting per guest beyond which a request is refused with a busy nack.
DEFAULT_HARD_CAP = 4096
#: Addresses one guest may subscribe besides `cgcs.server_grp`.
DEFAULT_MAX_SUBSCRIPTIONS = 8
#: The most broadcasts one transaction writes.
MAX_BATCH_ITEMS = 1000
#: The most bytes of value one transaction writes (etcd takes requests of up to 1.5 MiB).
MAX_BATCH_BYTES = 512 * 1024
#: Broadcasts that may wait per group for their transaction before senders wait.
DEFAULT_BATCH_PENDING = 2 * MAX_BATCH_ITEMS
#: How long the batcher lets broadcasts gather before a transaction, when the last one
#: held `_LINGER_AFTER` or more (so more are coming) and fewer than `_LINGER_FILL` wait.
#: At low load (a broadcast or two per round trip) it never waits: no latency added.
DEFAULT_BATCH_LINGER = 0.002
_LINGER_AFTER = 4
_LINGER_FILL = 100
#: Pause before a broadcast watch that ended is opened again.
_REWATCH_INTERVAL = 0.5
#: A guest's requests handled in a row before the loop runs other work: `queue.get()`
#: does not yield while the queue holds something, and one guest's backlog of
#: thousands handled at once held up everything else (lease renewals too: the host
#: lost its session under a burst).
_HANDLED_BEFORE_YIELD = 64
#: Conflicts in a row retried at once; the next ones after a short jittered pause.
#: Only this host writes its key, so a conflict means the key is not what this host
#: last wrote (the group deleted and made again, the service restarted, a batch nacked
#: in doubt stored after all); the failed transaction's read says what to compare on.
_CONFLICTS_AT_ONCE = 8
_CONFLICT_BACKOFF = Backoff(initial=0.001, max_delay=0.01)
#: A batch that meets a conflict at every attempt for this long is refused.
_CONFLICT_TIMEOUT = 10.0
#: How long a batch whose answer was lost (etcd stopped answering) is sent again before
#: it is nacked; the default of the service's `in_doubt_timeout`.
DEFAULT_IN_DOUBT_TIMEOUT = 15.0
_IN_DOUBT_RETRY_INTERVAL = 0.2
#: This host's writes the watch numbered before their transaction's answer came, kept.
_NUMBERED_KEPT = 64
#: How long `stop` lets a transaction in flight finish before it gives up on it.
_STOP_TIMEOUT = 2.0
#: The bytes of a batch's value besides its items (group, host, host_total, sent_at, brackets).
_BATCH_OVERHEAD = 256

#: What a guest may send; the others are the host's to send.
_REQUEST_TYPES = (MsgType.BROADCAST, MsgType.STATUS_QUERY, MsgType.SUBSCRIBE, MsgType.UNSUBSCRIBE)


@dataclass(slots=True)
class ServiceCounters:
    """What the group service has done since it started (mutable; read, do not keep)."""

    received: int = 0  # messages routed to the service by the relay
    broadcasts_accepted: int = 0  # broadcasts this host stored in batches
    batches: int = 0  # transactions that stored a batch
    batch_max: int = 0  # the most broadcasts stored in one batch
    txn_conflicts: int = 0  # transactions whose compare failed: this host's key had moved
    acks: int = 0  # broadcast_ack messages sent
    busy_nacks: int = 0  # requests refused because their guest's queue was at the hard cap
    throttles: int = 0  # times a guest's channel was paused
    nacked_but_stored: int = 0  # nacked when etcd did not answer, yet the attempt had landed
    unacked_stored: int = 0  # stored, but the group was left before its watch numbered them
    broadcasts_delivered: int = 0  # deliveries to guests (one per member and address)
    broadcasts_missed: int = 0  # gaps in seq: never seen by this host
    status_queries: int = 0
    status_responses: int = 0  # status_response messages sent
    notifications: int = 0  # notification messages sent
    nacks: int = 0
    subscriptions: int = 0  # currently held, over all guests
    send_failures: int = 0  # the relay could not write (guest gone, channel full)
    dropped: dict[str, int] = field(default_factory=dict)  # by reason

    @property
    def batch_mean(self) -> float:
        """Broadcasts per stored batch, on average."""
        return self.broadcasts_accepted / self.batches if self.batches else 0.0

    def as_dict(self) -> dict[str, int]:
        """Every counter, the drops as `dropped.<reason>`."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "dropped"}
        for reason, count in sorted(self.dropped.items()):
            out[f"dropped.{reason}"] = count
        return out


#: The longest `data` JSON a delivery from `cgcs.server_grp` may carry and stay
#: within MAX_DATAGRAM (the delivered envelope adds its version and source_addr).
_MAX_DATA_JSON = MAX_DATAGRAM - (
    len(encode_delivery(Envelope(data={}, source_addr=SERVER_GROUP_ADDR))) - len(b"{}")
)


class _Drop:
    """Why the service dropped something (the keys of `ServiceCounters.dropped`)."""

    GARBAGE = "garbage"
    UNKNOWN_SENDER = "unknown sender"
    NOT_A_REQUEST = "not a request"
    NO_SOURCE_ADDR = "no source_addr"
    OVERSIZE = "datagram too big"
    BAD_RECORD = "bad broadcast record"


def iso_time(wall: float) -> str:
    """Wall-clock seconds as ISO 8601 UTC with milliseconds (for display in events)."""
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class _OwnKey:
    """What a batcher knows of its host's key of the group: the compare, and the total."""

    mod_revision: int  # 0: the key does not exist
    total: int  # this host's broadcasts of the group stored so far


@dataclass(frozen=True, slots=True)
class _GroupRead:
    """A group's keys as read at `revision`: each host's total, this host's key, the latest."""

    revision: int
    totals: dict[str, HostTotal]
    own: _OwnKey
    #: The batch written last (highest mod revision) and its key, if any decodes.
    latest: tuple[KeyValue, BroadcastBatch] | None


class _Decoded:
    """Batches decoded (or encoded) here lately, by their bytes: each decoded once per host.

    The batcher puts the batch it is about to store; the watch then takes
    the same bytes back without decoding them again (a batch's value is
    JSON of up to `MAX_BATCH_BYTES`, and on the sending host decoding it was
    a good part of the work per broadcast). Bounded: what the watch never
    asks for (a transaction that failed) falls out.
    """

    LIMIT = 32

    def __init__(self) -> None:
        self._batches: dict[bytes, BroadcastBatch] = {}

    def put(self, value: bytes, batch: BroadcastBatch) -> None:
        self._batches[value] = batch
        while len(self._batches) > self.LIMIT:
            del self._batches[next(iter(self._batches))]

    def decode(self, value: bytes) -> BroadcastBatch:
        """The batch in `value` (taken from what was put, else decoded); `RecordError`."""
        batch = self._batches.pop(value, None)
        return batch if batch is not None else decode_batch(value)


def _item_size(item: BroadcastItem) -> int:
    """The bytes `item` takes in an encoded batch: `["a","b","c"]` and a comma.

    `encode_batch` writes each string as `json.dumps` does (ASCII, escaped);
    its C string encoder alone is a fraction of the cost of `json.dumps` of
    the list (unit-tested equal).
    """
    return (
        len(encode_basestring_ascii(item.sender))
        + len(encode_basestring_ascii(item.sender_instance))
        + len(encode_basestring_ascii(item.text))
        + 5
    )


@dataclass(frozen=True, slots=True)
class _Pending:
    """A broadcast waiting for its transaction, and whom to answer."""

    item: BroadcastItem
    reply_to: str
    id: int | None
    size: int

    @property
    def instance(self) -> str:
        return self.item.sender_instance


@dataclass(slots=True)
class _Guest:
    """One guest's requests: its queue, its worker, whether its channel is paused."""

    queue: asyncio.Queue[Envelope]
    worker: asyncio.Task[None] | None = None
    paused: bool = False


class _Batcher:
    """Writes this host's broadcasts of one group to its own key, one transaction at a time.

    Each batch is acknowledged once the group's watch has numbered it.
    """

    def __init__(self, service: GroupService, group: str) -> None:
        self._s = service
        self.group = group
        self.key = broadcast_key(group, service.host)
        #: This host's key as last written; from the group's first read, before the first send.
        self.known: _OwnKey | None = None
        self._pending: deque[_Pending] = deque()
        self._in_flight: list[_Pending] = []
        self._last_size = 0  # broadcasts in the last transaction taken
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closed: str | None = None  # why, once closed
        #: Batches stored and not numbered by the watch yet (revision -> batch, items), and
        #: this host's writes the watch numbered before the batcher knew (revision ->
        #: first seq, value): the answer of a transaction and the watch event race.
        self._awaiting: dict[int, tuple[BroadcastBatch, list[_Pending]]] = {}
        self._numbered: dict[int, tuple[int, bytes]] = {}
        self._drained = asyncio.Event()
        self._drained.set()
        #: Values nacked without knowing whether they were stored (etcd did not answer).
        self._unresolved: deque[bytes] = deque(maxlen=16)
        self._task = asyncio.create_task(self._run(), name=f"group-batch-{group}")

    async def append(self, pending: _Pending) -> None:
        """Queue `pending`; waits only while the batcher holds its bound."""
        while len(self._pending) >= self._s._batch_pending and self._closed is None:
            self._room.clear()
            await self._room.wait()
        if self._closed is not None:
            self._s._refuse([pending], self.group, self._closed)
            return
        self._pending.append(pending)
        self._wake.set()

    async def close(self, reason: str, *, timeout: float = _STOP_TIMEOUT) -> None:
        """Take no more; let the transaction in flight finish and the watch number what was
        stored, within `timeout`; refuse the rest."""
        if self._closed is None:
            self._closed = reason
        self._wake.set()
        self._room.set()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.wait({self._task})
                    await self._drained.wait()
        finally:
            self.abort(reason)

    def abort(self, reason: str) -> None:
        """Stop now; every broadcast not stored yet is refused with `reason`."""
        if self._closed is None:
            self._closed = reason
        self._task.cancel()
        self._room.set()
        left = [*self._in_flight, *self._pending]
        self._in_flight = []
        self._pending.clear()
        if left:
            self._s._refuse(left, self.group, reason)
        if self._awaiting:
            count = sum(len(items) for _, items in self._awaiting.values())
            self._s.counters.unacked_stored += count
            log.warning(
                "host %s stored %d broadcast(s) of group %s but stopped following the group "
                "before its watch numbered them: their senders get no ack",
                self._s.host,
                count,
                self.group,
            )
            self._awaiting.clear()
            self._drained.set()

    def _take(self) -> list[_Pending]:
        count = take_batch(
            [p.size for p in itertools.islice(self._pending, MAX_BATCH_ITEMS)],
            max_items=MAX_BATCH_ITEMS,
            max_bytes=MAX_BATCH_BYTES,
            overhead=_BATCH_OVERHEAD,
        )
        batch = [self._pending.popleft() for _ in range(count)]
        if len(self._pending) < self._s._batch_pending:
            self._room.set()
        return batch

    def _top_up(self, items: list[_Pending]) -> None:
        """Append to `items` (a batch about to be made again) what waits, within the limits."""
        room = MAX_BATCH_ITEMS - len(items)
        used = _BATCH_OVERHEAD + sum(p.size for p in items)
        if room <= 0 or used >= MAX_BATCH_BYTES or not self._pending:
            return
        count = take_batch(
            [p.size for p in itertools.islice(self._pending, room)],
            max_items=room,
            max_bytes=MAX_BATCH_BYTES - used,
        )
        items.extend(self._pending.popleft() for _ in range(count))
        if len(self._pending) < self._s._batch_pending:
            self._room.set()

    async def _run(self) -> None:
        while True:
            while not self._pending:
                if self._closed is not None:
                    return
                self._wake.clear()
                await self._wake.wait()
            linger = self._s._batch_linger
            if (
                linger > 0
                and self._last_size >= _LINGER_AFTER
                and len(self._pending) < _LINGER_FILL
            ):
                # Broadcasts arrive faster than one per transaction: let a few more
                # gather (each transaction costs about as much CPU on every host
                # whatever its size; see docs/design/messaging.md, "Batching").
                await asyncio.sleep(linger)
            self._in_flight = self._take()
            self._last_size = len(self._in_flight)
            try:
                if self.known is None:
                    self.known = await self._s._own_key(self.group)
                if self.known is None:
                    self._s._refuse(
                        self._in_flight,
                        self.group,
                        f"host {self._s.host} cannot read the broadcasts of group "
                        f"{self.group} from etcd",
                    )
                else:
                    await self._commit(self._in_flight)
            except asyncio.CancelledError:
                raise
            except Exception:
                log_bug(log, f"the broadcast batcher of group {self.group}")
                self._s._refuse(
                    self._in_flight, self.group, f"host {self._s.host} failed to store it (a bug)"
                )
            self._in_flight = []

    async def _commit(self, items: list[_Pending]) -> None:
        """Store `items` as one batch (acked once numbered); or nack them, saying why."""
        s = self._s
        backoff: Iterator[float] | None = None
        conflicts = 0
        deadline = s._clock.monotonic() + _CONFLICT_TIMEOUT
        value = b""
        batch: BroadcastBatch | None = None
        compare = Compare.absent(self.key)
        doubt_since: float | None = None  # an attempt's answer was lost: it may have landed
        while True:
            guard: Guard | None = None
            if s._fence is not None:
                guard = s._fence()
                if guard is None:
                    # In doubt, wait for the session to come back to find out (bounded).
                    now = s._clock.monotonic()
                    if doubt_since is None or now - doubt_since >= s._in_doubt_timeout:
                        if doubt_since is None or not self._give_up(batch, items, value):
                            s._refuse(items, self.group, s._not_connected())
                        return
                    await s._clock.sleep(_IN_DOUBT_RETRY_INTERVAL)
                    continue
            if doubt_since is None or batch is None:
                # A batch in doubt is sent again exactly as it was: same compare, same bytes.
                known = self.known
                assert known is not None
                batch = BroadcastBatch(
                    group=self.group,
                    host=s.host,
                    host_total=known.total + len(items),
                    sent_at=iso_time(s._clock.wall()),
                    items=tuple(p.item for p in items),
                )
                value = encode_batch(batch)
                s._decoded.put(value, batch)
                compare = (
                    Compare.unchanged(self.key, known.mod_revision)
                    if known.mod_revision
                    else Compare.absent(self.key)
                )
            attempt = [compare]
            failure: list[TxnOp] = [Get(key=self.key)]
            if guard is not None:
                attempt.append(Compare.held(guard))
                failure.append(Get(key=guard.key))
            try:
                result = await s._c.txn(attempt, [Put(key=self.key, value=value)], failure)
            except StoreUnavailable as exc:
                now = s._clock.monotonic()
                if doubt_since is None:
                    doubt_since = now
                if now - doubt_since >= s._in_doubt_timeout:
                    if not self._give_up(batch, items, value):
                        s._refuse(items, self.group, f"the host cannot reach etcd: {exc}")
                    return
                await s._clock.sleep(_IN_DOUBT_RETRY_INTERVAL)
                continue
            except CoordinationError as exc:
                s._refuse(items, self.group, f"etcd refused the broadcasts: {exc}")
                return
            current = result.reads.get(self.key)
            if result.succeeded:
                self._stored(result.revision, batch, items)
                return
            if current is not None and current.value == value:
                # An attempt whose answer was lost had landed: only this host writes the
                # key, so it still holds it. Stored once, acked once.
                self._stored(current.mod_revision, batch, items)
                return
            if guard is not None:
                held = result.reads.get(guard.key)
                if held is None or held.create_revision != guard.create_revision:
                    s._refuse(items, self.group, s._fenced())
                    return
            # The key is not what this host last wrote: the group was deleted (and made
            # again), this host's service started anew, or a batch nacked while etcd did
            # not answer was stored after all. No attempt of this batch landed, and none
            # can any more (the key moved past the compare): make it again on what is there.
            doubt_since = None
            conflicts += 1
            s.counters.txn_conflicts += 1
            self.known = self._learn(current)
            self._top_up(items)
            if s._clock.monotonic() > deadline:
                s._refuse(
                    items,
                    self.group,
                    f"host {s.host}'s key of group {self.group} changed under each of "
                    f"{conflicts} attempts in {_CONFLICT_TIMEOUT:g} s",
                )
                return
            if conflicts >= _CONFLICTS_AT_ONCE:
                if backoff is None:
                    backoff = _CONFLICT_BACKOFF.delays()
                await s._clock.sleep(next(backoff))

    def _learn(self, current: KeyValue | None) -> _OwnKey:
        """This host's key as a failed transaction read it."""
        if current is None:
            return _OwnKey(mod_revision=0, total=0)
        if current.value in self._unresolved:
            self._unresolved.remove(current.value)
            self._s._stored_after_all(self.group, current.value)
        return _OwnKey(mod_revision=current.mod_revision, total=_total_of(current))

    def _stored(self, revision: int, batch: BroadcastBatch, items: list[_Pending]) -> None:
        """`batch` is in the store at `revision`: count it; ack it once the watch numbered it."""
        self.known = _OwnKey(mod_revision=revision, total=batch.host_total)
        self._s._count_stored(items)
        numbered = self._numbered.pop(revision, None)
        for old in [r for r in self._numbered if r < revision]:
            del self._numbered[old]  # writes before this one: nothing will claim them
        if numbered is not None:
            self._s._ack(numbered[0], items)
        else:
            self._awaiting[revision] = (batch, items)
            self._drained.clear()

    def _give_up(self, batch: BroadcastBatch | None, items: list[_Pending], value: bytes) -> bool:
        """Stop trying a batch in doubt: True if the watch saw it stored (then it is acked).

        Otherwise the caller nacks it; should it show up stored later, it is
        counted (`nacked_but_stored`).
        """
        landed = next((r for r, (_, seen) in self._numbered.items() if seen == value), None)
        if landed is not None and batch is not None:
            self._stored(landed, batch, items)
            return True
        self._unresolved.append(value)
        return False

    def numbered(self, revision: int, first: int, value: bytes) -> None:
        """The watch numbered this host's write at `revision` from seq `first` on."""
        entry = self._awaiting.pop(revision, None)
        if entry is not None:
            self._s._ack(first, entry[1])
            if not self._awaiting:
                self._drained.set()
            return
        if value in self._unresolved:
            self._unresolved.remove(value)
            self._s._stored_after_all(self.group, value)
        self._numbered[revision] = (first, value)
        while len(self._numbered) > _NUMBERED_KEPT:
            del self._numbered[next(iter(self._numbered))]

    def hidden(self, revision: int, group_total: int, own_total: int) -> None:
        """The watch skipped this host's writes up to `revision` (a compaction).

        Each batch stored there and not numbered yet is acked with the
        highest seq its items can have: the group's total at the read, less
        what this host wrote after it.
        """
        hidden = [r for r in self._awaiting if r <= revision]
        for r in hidden:
            batch, items = self._awaiting.pop(r)
            upper = group_total - (own_total - batch.host_total)
            self._s._ack(upper - len(batch.items) + 1, items)
        if hidden:
            log.warning(
                "host %s acked %d batch(es) of group %s that a compaction hid from its "
                "watch: their seqs are upper bounds",
                self._s.host,
                len(hidden),
                self.group,
            )
        if not self._awaiting:
            self._drained.set()


def _total_of(kv: KeyValue) -> int:
    """The host total a key's batch holds (0 if it does not decode: logged)."""
    try:
        return decode_batch(kv.value).host_total
    except RecordError as exc:
        log.warning("ignoring the broadcast key %s: %s", kv.key, exc)
        return 0


class GroupService:
    """Serves `cgcs.server_grp` for the guests connected to this host's relay.

    A component of the host daemon (`common.component`): `start`, `stop`, `health`.
    """

    name = "groups"

    def __init__(
        self,
        *,
        coordinator: Coordinator,
        cache: RegistryCache,
        relay: ChannelRelay,
        host: str,
        clock: Clock | None = None,
        high_water: int = DEFAULT_HIGH_WATER,
        low_water: int = DEFAULT_LOW_WATER,
        hard_cap: int = DEFAULT_HARD_CAP,
        batch_pending: int = DEFAULT_BATCH_PENDING,
        max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS,
        in_doubt_timeout: float = DEFAULT_IN_DOUBT_TIMEOUT,
        batch_linger: float = DEFAULT_BATCH_LINGER,
        fence: Callable[[], Guard | None] | None = None,
    ) -> None:
        if not 0 <= low_water < high_water < hard_cap:
            raise ConfigError(
                "the group service needs 0 <= low_water < high_water < hard_cap "
                f"(got {low_water}, {high_water}, {hard_cap})."
            )
        if batch_pending < 1:
            raise ConfigError("the group service's batch_pending must be at least 1.")
        if not 0 <= batch_linger <= 1:
            raise ConfigError("the group service's batch_linger must be 0 to 1 s.")
        self._batch_linger = batch_linger
        self._c = coordinator
        #: The guard of this host's registration for every broadcast it writes;
        #: None from it: the host may not write now (its session is not connected).
        self._fence = fence
        self._cache = cache
        self._relay = relay
        self.host = host
        self._clock: Clock = clock or SystemClock()
        self._high_water = high_water
        self._low_water = low_water
        self._hard_cap = hard_cap
        self._batch_pending = batch_pending
        self._in_doubt_timeout = in_doubt_timeout
        self._max_subscriptions = max_subscriptions
        self.counters = ServiceCounters()
        self._drop_counts = Counters(dropped=self.counters.dropped)
        self._drops = DropLog(log, self._drop_counts)
        self._guests: dict[str, _Guest] = {}
        self._subscriptions: dict[str, set[str]] = {}
        self._changes: asyncio.Queue[RegistryChange] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._undo: list[Callable[[], None]] = []
        self._started = False
        #: group -> the watch of its broadcasts, for each group with a server on this host.
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        #: group -> its batcher, made by the first broadcast a local member sends; and
        #: those closing (their stored batches still get acked as the watch numbers them).
        self._batchers: dict[str, _Batcher] = {}
        self._closing: dict[str, _Batcher] = {}
        #: group -> this host's key as its follower's first read found it (a batcher's
        #: first compare), set once that read is done: nothing is sent before it.
        self._own: dict[str, _OwnKey] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self._decoded = _Decoded()
        self._watch_trouble: dict[str, str] = {}  # group -> why its broadcast watch is down

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Route `cgcs.server_grp`, follow broadcasts and registry changes.

        Broadcasts put before `start` are not delivered; those after are.
        """
        if self._started:
            return
        self._changes = self._cache.subscribe()
        snap = self._cache.snapshot
        rng = await self._c.get_prefix(BROADCASTS)
        local = self._local_groups(snap)
        by_group: dict[str, list[KeyValue]] = {group: [] for group in local}
        legacy = 0
        for kv in rng.items:
            parsed = parse_broadcast_key(kv.key)
            if parsed is None:
                legacy += 1
            elif parsed[0] in by_group:
                by_group[parsed[0]].append(kv)
        if legacy:
            log.warning(
                "ignoring %d broadcast key(s) of the previous layout (one key per group): "
                "hosts with members of one group are upgraded together",
                legacy,
            )
        reads = {g: self._group_read(g, kvs, rng.revision) for g, kvs in by_group.items()}
        self._undo = [
            self._relay.route(SERVER_GROUP_ADDR, self._on_message),
            self._relay.on_change(self._on_channel_change),
        ]
        self._tasks = [
            asyncio.create_task(self._follow_registry(self._changes), name="group-notify"),
        ]
        self._follow_groups(snap, reads)
        self._started = True
        log.info(
            "group service of host %s ready (broadcasts of %d local group(s) from revision %d)",
            self.host,
            len(local),
            rng.revision + 1,
        )

    async def stop(self) -> None:
        """Stop serving: requests still queued are dropped, broadcasts not stored are nacked.

        A transaction in flight gets a moment to finish, so that what it
        stores is acknowledged rather than refused.
        """
        if not self._started:
            return
        self._started = False
        for undo in self._undo:
            undo()
        self._undo = []
        if self._changes is not None:
            self._cache.unsubscribe(self._changes)
            self._changes = None
        workers = [g.worker for g in self._guests.values() if g.worker is not None]
        for task in workers:
            task.cancel()
        # The followers run on meanwhile: they number what the batchers store, for the acks.
        reason = f"the group service of host {self.host} stopped before storing it"
        await asyncio.gather(*(b.close(reason) for b in self._batchers.values()))
        self._batchers.clear()
        tasks = [*self._tasks, *self._followers.values(), *self._retiring, *workers]
        await cancel_and_wait(tasks)
        self._tasks = []
        self._followers.clear()
        self._retiring.clear()
        self._closing.clear()
        self._own.clear()
        self._ready.clear()
        self._watch_trouble.clear()
        self._guests.clear()
        self._subscriptions.clear()
        self.counters.subscriptions = 0
        self._drops.close()
        log.info("group service of host %s stopped: %s", self.host, self.counters.as_dict())

    async def __aenter__(self) -> GroupService:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def health(self) -> ComponentHealth:
        """Serving or not; degraded while the broadcast watch is down."""
        if not self._started:
            return ComponentHealth(
                state=HealthState.STOPPED, sentence="the group service is not serving"
            )
        c = self.counters
        done = (
            f"{c.broadcasts_accepted} broadcast(s) stored in {c.batches} batch(es) "
            f"(mean {c.batch_mean:.1f}, max {c.batch_max}), {c.txn_conflicts} conflict(s), "
            f"{c.acks} ack(s), {c.busy_nacks} busy nack(s), {c.throttles} throttle(s) "
            f"({sum(g.paused for g in self._guests.values())} guest channel(s) paused now), "
            f"{c.broadcasts_delivered} delivered, {c.broadcasts_missed} missed, "
            f"{c.notifications} notification(s)"
        )
        if self._watch_trouble:
            down = ", ".join(f"{g} ({why})" for g, why in sorted(self._watch_trouble.items()))
            return ComponentHealth(
                state=HealthState.DEGRADED,
                sentence=f"the broadcast watch of group(s) {down} is down; {done}",
            )
        return ComponentHealth(
            state=HealthState.HEALTHY,
            sentence=f"serving {len(self._followers)} local group(s); {done}",
        )

    def subscriptions(self, instance: str) -> frozenset[str]:
        """The addresses besides `cgcs.server_grp` that get group traffic in `instance`."""
        return frozenset(self._subscriptions.get(instance, ()))

    # -- from the relay (synchronous callbacks: they only enqueue) -------------------

    def _on_message(self, instance: str, envelope: Envelope) -> None:
        self.counters.received += 1
        guest = self._guests.get(instance)
        if guest is None:
            guest = self._guests[instance] = _Guest(queue=asyncio.Queue())
            guest.worker = asyncio.create_task(
                self._serve_guest(instance, guest), name=f"group-guest-{instance}"
            )
        waiting = guest.queue.qsize()
        if waiting >= self._hard_cap:
            self._busy(instance, envelope, waiting)
            return
        guest.queue.put_nowait(envelope)
        if not guest.paused and waiting + 1 >= self._high_water:
            guest.paused = True
            self.counters.throttles += 1
            self._relay.throttle(instance, True)

    def _on_channel_change(self, instance: str, connected: bool) -> None:
        if connected:
            return
        subs = self._subscriptions.pop(instance, set())
        self.counters.subscriptions -= len(subs)
        guest = self._guests.pop(instance, None)
        if guest is not None and guest.worker is not None:
            guest.worker.cancel()

    def _busy(self, instance: str, envelope: Envelope, waiting: int) -> None:
        """Refuse a request at once: its guest has `hard_cap` requests waiting."""
        reply_to = envelope.source_addr
        if reply_to is None:
            self._drops.drop(_Drop.NO_SOURCE_ADDR, f"a message from {instance}")
            return
        try:
            msg = decode_group_message(envelope.data)
        except UnknownMessageType as exc:
            orig, ident = exc.msg_type, None
        except ProtocolError as exc:
            self._drops.drop(_Drop.GARBAGE, f"from {instance} at {reply_to!r}: {exc}")
            return
        else:
            if msg_type_of(msg) not in _REQUEST_TYPES:
                self._drops.drop(_Drop.NOT_A_REQUEST, f"a {msg_type_of(msg).value} from {instance}")
                return
            orig = msg_type_of(msg).value
            ident = msg.id if isinstance(msg, Broadcast) else None
        self.counters.busy_nacks += 1
        self._nack(
            instance,
            reply_to,
            orig,
            f"busy: host {self.host} already has {waiting} requests of {instance} waiting; "
            "send more slowly",
            ident,
        )

    # -- requests --------------------------------------------------------------------

    async def _serve_guest(self, instance: str, guest: _Guest) -> None:
        queue = guest.queue
        in_a_row = 0
        while True:
            if queue.empty():
                in_a_row = 0
            elif in_a_row >= _HANDLED_BEFORE_YIELD:
                in_a_row = 0
                await asyncio.sleep(0)
            envelope = await queue.get()
            in_a_row += 1
            if guest.paused and queue.qsize() <= self._low_water:
                guest.paused = False
                self._relay.throttle(instance, False)
            try:
                await self._handle(instance, envelope)
            except asyncio.CancelledError:
                raise
            except Exception:
                log_bug(log, f"the group service's handling of a message from {instance}")

    async def _handle(self, instance: str, envelope: Envelope) -> None:
        reply_to = envelope.source_addr
        if reply_to is None:
            self._drops.drop(_Drop.NO_SOURCE_ADDR, f"a message from {instance}")
            return
        server = self._local_server(instance)
        if server is None:
            self._drops.drop(
                _Drop.UNKNOWN_SENDER,
                f"a message from {instance}: no server of this host has that instance name",
            )
            return
        try:
            msg = decode_group_message(envelope.data)
        except UnknownMessageType as exc:
            known = ", ".join(t.value for t in _REQUEST_TYPES)
            self._nack(instance, reply_to, exc.msg_type, f"{exc}; a guest may send {known}")
            return
        except ProtocolError as exc:
            self._drops.drop(_Drop.GARBAGE, f"from {instance} at {reply_to!r}: {exc}")
            return
        match msg:
            case Broadcast(text=text, id=ident):
                await self._broadcast(server, reply_to, text, ident)
            case StatusQuery(seq=seq):
                self._status(server, reply_to, seq)
            case Subscribe():
                self._subscribe(instance, reply_to)
            case Unsubscribe():
                self._unsubscribe(instance, reply_to)
            case Nack():
                # Never answer a nack with a nack: two confused peers would loop.
                self._drops.drop(_Drop.NOT_A_REQUEST, f"a nack from {instance} at {reply_to!r}")
            case _:
                kind = msg_type_of(msg).value
                self._nack(
                    instance, reply_to, kind, f"msg_type {kind!r} is sent by the host, not to it"
                )

    def _local_server(self, instance: str) -> Server | None:
        server = self._cache.snapshot.by_instance(instance)
        if server is None:
            return None
        if server.host != self.host and server.spec.host != self.host:
            return None
        return server

    async def _broadcast(self, server: Server, reply_to: str, text: str, ident: int | None) -> None:
        instance = server.spec.instance
        group = server.spec.group
        reason = check_broadcast_text(text)
        if reason is None and group not in self._cache.snapshot.groups:
            reason = f"{server.name} is not a member of any server group"
        if reason is not None:
            self._nack(instance, reply_to, MsgType.BROADCAST.value, reason, ident)
            return
        item = BroadcastItem(sender=server.name, sender_instance=instance, text=text)
        pending = _Pending(item=item, reply_to=reply_to, id=ident, size=_item_size(item))
        batcher = self._batchers.get(group)
        if batcher is None:
            if group not in self._followers:  # the registry change is not handled yet
                self._follow(group, None)
            batcher = self._batchers[group] = _Batcher(self, group)
        await batcher.append(pending)

    async def _own_key(self, group: str) -> _OwnKey | None:
        """This host's key of `group` as its follower first read it; None if that read
        does not come within `in_doubt_timeout` (etcd unreachable)."""
        ready = self._ready.setdefault(group, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._in_doubt_timeout):
                await ready.wait()
        return self._own.get(group) if ready.is_set() else None

    def _not_connected(self) -> str:
        return f"host {self.host} is not connected to etcd now (its session is not live)"

    def _fenced(self) -> str:
        return (
            f"host {self.host} lost its registration (its lease expired): "
            "no broadcast until it has registered again"
        )

    def _count_stored(self, items: list[_Pending]) -> None:
        """A batch is in the store: count it."""
        c = self.counters
        c.batches += 1
        c.broadcasts_accepted += len(items)
        c.batch_max = max(c.batch_max, len(items))

    def _ack(self, first: int, items: list[_Pending]) -> None:
        """A stored batch numbered from seq `first`: acknowledge each sender's highest id."""
        c = self.counters
        acks = cumulative_acks(first, [((p.instance, p.reply_to), p.id) for p in items])
        for (instance, address), ack in acks.items():
            if self._send(instance, address, BroadcastAck(id=ack.id, seq=ack.seq)):
                c.acks += 1

    def _stored_after_all(self, group: str, value: bytes) -> None:
        """A batch nacked while etcd did not answer turns out to be in the store."""
        try:
            count = len(decode_batch(value).items)
        except RecordError:
            count = 0
        self.counters.nacked_but_stored += count
        log.warning(
            "host %s nacked %d broadcast(s) of group %s while etcd did not answer, and they "
            "were stored after all: their receivers get them",
            self.host,
            count,
            group,
        )

    def _refuse(self, items: list[_Pending], group: str, reason: str) -> None:
        """Nack every broadcast of `items` (with its id), in their order."""
        if not items:
            return
        log.warning(
            "host %s refused %d broadcast(s) of group %s: %s", self.host, len(items), group, reason
        )
        for p in items:
            self._nack(p.instance, p.reply_to, MsgType.BROADCAST.value, reason, p.id)

    def _status(self, server: Server, reply_to: str, seq: int) -> None:
        self.counters.status_queries += 1
        instance = server.spec.instance
        snap = self._cache.snapshot
        for member in snap.members(server.spec.group):
            info = server_info(member, host_alive=snap.host_alive(member))
            if self._send(instance, reply_to, StatusResponse(seq=seq, server=info)):
                self.counters.status_responses += 1
        self._send(instance, reply_to, StatusResponseDone(seq=seq))

    def _subscribe(self, instance: str, address: str) -> None:
        if address == SERVER_GROUP_ADDR:
            return  # that one gets the group's traffic anyway
        subs = self._subscriptions.setdefault(instance, set())
        if address in subs:
            return
        if len(subs) >= self._max_subscriptions:
            self._nack(
                instance,
                address,
                MsgType.SUBSCRIBE.value,
                f"{instance} already has {len(subs)} subscribed addresses, the most allowed",
            )
            return
        subs.add(address)
        self.counters.subscriptions += 1
        log.info("%s subscribed %r to its group's traffic", instance, address)

    def _unsubscribe(self, instance: str, address: str) -> None:
        subs = self._subscriptions.get(instance)
        if subs is not None and address in subs:
            subs.discard(address)
            self.counters.subscriptions -= 1
            log.info("%s unsubscribed %r", instance, address)

    def _nack(
        self, instance: str, reply_to: str, orig: str, reason: str, ident: int | None = None
    ) -> None:
        # Rate-limited: a guest that floods bad requests must not flood the log.
        self._drops.note(
            "nack", f"to {instance} at {reply_to!r} for {orig}: {reason}", level=logging.INFO
        )
        if self._send(instance, reply_to, Nack(orig_msg_type=orig, log_msg=reason, id=ident)):
            self.counters.nacks += 1
            metrics.NACKS.inc()

    # -- sending -----------------------------------------------------------------------

    def _send(self, instance: str, address: str, msg: GroupMessage) -> bool:
        # A broadcast's ack or nack is an answer its sender counts on (the relay
        # never drops one while it may keep it; see ChannelRelay.send_to_guests).
        answer = isinstance(msg, BroadcastAck | Nack)
        return self._send_many([instance], address, msg, answer=answer) == 1

    def _send_many(
        self, instances: list[str], address: str, msg: GroupMessage, *, answer: bool = False
    ) -> int:
        """Send `msg` to `address` in each of `instances`, encoded once; how many were written."""
        if not instances:
            return 0
        envelope = Envelope(
            data=encode_group_message(msg), dest_addr=address, source_addr=SERVER_GROUP_ADDR
        )
        size = len(encode_delivery(envelope))
        if size > MAX_DATAGRAM:
            for instance in instances:
                self._drops.drop(
                    _Drop.OVERSIZE,
                    f"a {msg_type_of(msg).value} for {instance} would be a {size}-byte datagram",
                )
            return 0
        failed = self._relay.send_to_guests(instances, envelope, answer=answer)
        self.counters.send_failures += len(failed)
        return len(instances) - len(failed)

    def _send_group(self, instances: list[str], msg: GroupMessage) -> int:
        """Send group traffic to `cgcs.server_grp` and the subscribers of each of `instances`."""
        sent = self._send_many(instances, SERVER_GROUP_ADDR, msg)
        for address, subscribed in self._subscribers(instances).items():
            sent += self._send_many(subscribed, address, msg)
        return sent

    def _subscribers(self, instances: list[str]) -> dict[str, list[str]]:
        """Subscribed address -> the instances of `instances` where it subscribed."""
        out: dict[str, list[str]] = {}
        for instance in instances:
            for address in sorted(self._subscriptions.get(instance, ())):
                out.setdefault(address, []).append(instance)
        return out

    def _local_members(self, snap: RegistrySnapshot, group: str, *, besides: str) -> list[str]:
        """Instances of `group` placed here with a connected channel, except `besides`."""
        connected = self._relay.connected()
        return [
            s.spec.instance
            for s in snap.members(group)
            if s.host == self.host and s.spec.instance in connected and s.spec.instance != besides
        ]

    # -- broadcasts ----------------------------------------------------------------------

    def _local_groups(self, snap: RegistrySnapshot) -> set[str]:
        """The groups with a server on this host (or on its way here)."""
        return {s.spec.group for s in snap.servers.values() if self.host in (s.host, s.spec.host)}

    def _follow_groups(self, snap: RegistrySnapshot, reads: dict[str, _GroupRead] | None) -> None:
        """Follow the broadcasts of each local group (from `reads` if given); drop the others."""
        wanted = self._local_groups(snap)
        for group in sorted(wanted - set(self._followers)):
            self._follow(group, reads.get(group) if reads is not None else None)
        for group in sorted(set(self._followers) - wanted):
            follower = self._followers.pop(group)
            self._watch_trouble.pop(group, None)
            self._own.pop(group, None)
            self._ready.pop(group, None)
            retiring = asyncio.create_task(
                self._retire(group, follower, self._batchers.pop(group, None)),
                name=f"group-retire-{group}",
            )
            self._retiring.add(retiring)
            retiring.add_done_callback(self._retiring.discard)

    def _follow(self, group: str, read: _GroupRead | None) -> None:
        self._followers[group] = asyncio.create_task(
            self._follow_group(group, read), name=f"group-bcast-{group}"
        )

    async def _retire(
        self, group: str, follower: asyncio.Task[None], batcher: _Batcher | None
    ) -> None:
        """The group has no server here any more: close its batcher, then stop following.

        The batcher's transaction in flight may finish, and what it stored is
        acked as the follower (no longer delivering) numbers it; the rest is nacked.
        """
        try:
            if batcher is not None:
                self._closing[group] = batcher
                await batcher.close(f"group {group} has no server on host {self.host} any more")
        finally:
            if batcher is not None and self._closing.get(group) is batcher:
                del self._closing[group]
            await cancel_and_wait([follower])

    def _group_read(self, group: str, kvs: list[KeyValue], revision: int) -> _GroupRead:
        """The totals of a group's keys `kvs` read at `revision` (undecodable ones dropped)."""
        totals: dict[str, HostTotal] = {}
        own = _OwnKey(mod_revision=0, total=0)
        latest: tuple[KeyValue, BroadcastBatch] | None = None
        for kv in kvs:
            parsed = parse_broadcast_key(kv.key)
            if parsed is None or parsed[0] != group:
                continue
            try:
                batch = decode_batch(kv.value)
            except RecordError as exc:
                self._drops.drop(_Drop.BAD_RECORD, f"{kv.key}: {exc}")
                continue
            totals[parsed[1]] = HostTotal(kv.create_revision, batch.host_total)
            if parsed[1] == self.host:
                own = _OwnKey(mod_revision=kv.mod_revision, total=batch.host_total)
            if latest is None or kv.mod_revision > latest[0].mod_revision:
                latest = (kv, batch)
        return _GroupRead(revision=revision, totals=totals, own=own, latest=latest)

    async def _read_group(self, group: str) -> _GroupRead | None:
        """One read of the group's keys; None if the store cannot be read (the caller retries)."""
        try:
            rng = await self._c.get_prefix(broadcast_prefix(group))
        except CoordinationError as exc:
            log.warning("cannot read the broadcasts of group %s (%s); retrying", group, exc)
            return None
        return self._group_read(group, list(rng.items), rng.revision)

    async def _follow_group(self, group: str, read: _GroupRead | None) -> None:
        """Deliver every broadcast of `group` written after `read`, surviving compaction.

        Without `read`, the group's keys are read first. Each host's total
        there starts the group's `GroupFeed`; each watch event numbers a batch.
        When the store compacted the revisions this host had not seen yet
        (it fell behind: cut off, frozen, slow), the watch cannot resume: the
        group's keys are read again, the latest batch's new items are
        delivered, after a log line saying how many were missed. Receivers
        see the gap in `seq`; never a seq twice or out of order.
        """
        while read is None:
            read = await self._read_group(group)
            if read is None:
                await self._clock.sleep(_REWATCH_INTERVAL)
        feed = GroupFeed(read.totals)
        if self._followers.get(group) is asyncio.current_task():
            self._own[group] = read.own
            self._ready.setdefault(group, asyncio.Event()).set()
        prefix = broadcast_prefix(group)
        next_revision = read.revision + 1
        while True:
            try:
                watch = await self._c.watch(prefix, start_revision=next_revision)
                try:
                    self._watch_trouble.pop(group, None)
                    async for event in watch:
                        next_revision = event.revision + 1
                        self._deliver_batch(group, feed, event)
                finally:
                    await watch.close()
            except asyncio.CancelledError:
                raise
            except WatchCompacted as exc:
                self._watch_trouble[group] = "history compacted"
                log.warning(
                    "the broadcasts of group %s from revision %d were compacted (up to %d); "
                    "reading them again",
                    group,
                    next_revision,
                    exc.compact_revision,
                )
                revision = await self._catch_up(group, feed)
                if revision is not None:
                    next_revision = revision + 1
                    continue
            except CoordinationError as exc:
                self._watch_trouble[group] = str(exc)
                log.warning(
                    "the broadcast watch of group %s ended (%s); watching again", group, exc
                )
            except Exception:
                self._watch_trouble[group] = "BUG"
                log_bug(log, f"the broadcast watch of group {group}")
            await self._clock.sleep(_REWATCH_INTERVAL)

    async def _catch_up(self, group: str, feed: GroupFeed) -> int | None:
        """Read the group's keys again; deliver what its latest batch holds that this host has
        not. The revision read, or None if the store cannot be read (the caller retries)."""
        read = await self._read_group(group)
        if read is None:
            return None
        latest = read.latest
        numbered = feed.reread(read.totals, len(latest[1].items) if latest is not None else 0)
        # This host's batches the compaction hid are acked first, in their order (exact
        # for the one written last of all).
        for batcher in (self._batchers.get(group), self._closing.get(group)):
            if batcher is not None:
                batcher.hidden(read.revision, feed.total, read.own.total)
        if latest is not None:
            kv, batch = latest
            if kv.key == broadcast_key(group, self.host):
                self._numbered_own(group, kv.mod_revision, numbered.first_seq, kv.value)
            self._deliver_items(group, batch, numbered)
        elif numbered.gap:
            self._missed(group, numbered)
        return read.revision

    def _numbered_own(self, group: str, revision: int, first: int, value: bytes) -> None:
        """Tell the batchers of `group` that this host's write at `revision` starts at `first`."""
        for batcher in (self._batchers.get(group), self._closing.get(group)):
            if batcher is not None:
                batcher.numbered(revision, first, value)

    def _deliver_batch(self, group: str, feed: GroupFeed, event: WatchEvent) -> None:
        """Number one write of the group's keys, then deliver its items this host has not."""
        parsed = parse_broadcast_key(event.key)
        if parsed is None or parsed[0] != group:
            return
        host = parsed[1]
        if event.kind is not EventKind.PUT:
            feed.delete(host)  # the group was deleted: with its last key, numbered from 1 again
            return
        try:
            batch = self._decoded.decode(event.value)
        except RecordError as exc:
            self._drops.drop(_Drop.BAD_RECORD, f"{event.key}: {exc}")
            return
        numbered = feed.put(host, event.create_revision, batch.host_total, len(batch.items))
        if host == self.host:
            self._numbered_own(group, event.revision, numbered.first_seq, event.value)
        if self._followers.get(group) is asyncio.current_task():  # not one retiring
            self._deliver_items(group, batch, numbered)

    def _missed(self, group: str, numbered: Numbered) -> None:
        self.counters.broadcasts_missed += numbered.missed
        log.warning(
            "host %s missed %d broadcast(s) of group %s (seq %d to %d): the store "
            "compacted them before this host read them; members see the gap",
            self.host,
            numbered.missed,
            group,
            numbered.first_seq - numbered.missed,
            numbered.first_seq - 1,
        )

    def _deliver_items(self, group: str, batch: BroadcastBatch, numbered: Numbered) -> None:
        """Deliver the items of `batch` from `numbered.skip` on, in order, to the local members."""
        if not numbered.fresh:
            return  # delivered already (a re-read after compaction): never a seq twice
        if numbered.gap:
            self._missed(group, numbered)
        members = self._local_members(self._cache.snapshot, group, besides="")
        if not members:
            return
        # Each broadcast is encoded once per address, and each member gets all of
        # its frames of the batch in one write.
        subscribed = {m: sorted(self._subscriptions.get(m, ())) for m in members}
        addresses = sorted({a for subs in subscribed.values() for a in subs})
        frames: dict[str, list[bytes]] = {m: [] for m in members}
        skip = numbered.skip
        for i, item in enumerate(batch.items[skip:], start=numbered.first_seq + skip):
            data = encode_broadcast_json(item.text, item.sender_instance, i)
            if data is None:  # a lone surrogate: the envelope encoder escapes it all
                data = json.dumps(
                    encode_group_message(
                        Broadcast(text=item.text, source_instance=item.sender_instance, seq=i)
                    ),
                    separators=(",", ":"),
                ).encode("ascii")
            if len(data) > _MAX_DATA_JSON:
                self._drops.drop(
                    _Drop.OVERSIZE,
                    f"broadcast seq {i} of group {group} would be a datagram over "
                    f"{MAX_DATAGRAM} bytes",
                )
                continue
            for address in (SERVER_GROUP_ADDR, *addresses):
                frame = host_frame_with(address, SERVER_GROUP_ADDR, data)
                for member in members:
                    if member != item.sender_instance and (
                        address == SERVER_GROUP_ADDR or address in subscribed[member]
                    ):
                        frames[member].append(frame)
        for member, queued in frames.items():
            # Each item goes to the member's group address and each address it subscribed:
            # those frames of the last item are its newest message, kept should frames be
            # lost (so that its applications see the gap even if nothing follows).
            newest = min(len(queued), 1 + len(subscribed[member]))
            written = self._relay.write_frames(member, queued, newest=newest)
            self.counters.broadcasts_delivered += written
            self.counters.send_failures += len(queued) - written

    # -- notifications -------------------------------------------------------------------

    async def _follow_registry(self, changes: asyncio.Queue[RegistryChange]) -> None:
        while True:
            change = await changes.get()
            try:
                if change.kind is ChangeKind.SERVER:
                    self._follow_groups(change.snapshot, None)
                self._notify(change)
            except asyncio.CancelledError:
                raise
            except Exception:
                log_bug(log, f"the notifications for a change of {change.kind.value} {change.name}")

    def _notify(self, change: RegistryChange) -> None:
        now_iso = iso_time(self._clock.wall())
        snap = change.snapshot
        if change.kind is ChangeKind.SERVER:
            before, after = change.before, change.after
            assert before is None or isinstance(before, Server)
            assert after is None or isinstance(after, Server)
            subject = after if after is not None else before
            if subject is None:
                return
            event = notification_for(
                before, after, now_iso=now_iso, host_alive=snap.host_alive(subject)
            )
            if event is not None:
                self._send_notification(snap, subject, Notification(event=event))
        elif change.kind is ChangeKind.HOST:
            if change.name == self.host:
                return  # our own lease: our members are not lost to each other
            for item in host_notifications(
                change.name,
                alive_before=change.before is not None,
                alive_after=change.after is not None,
                snapshot=snap,
                now_iso=now_iso,
            ):
                self._send_notification(snap, item.server, Notification(event=item.event))

    def _send_notification(
        self, snap: RegistrySnapshot, subject: Server, msg: Notification
    ) -> None:
        event_type = msg.event.get("event_type")
        recipients = self._local_members(snap, subject.spec.group, besides=subject.spec.instance)
        log.info(
            "notification %s about %s to %d local member(s)",
            event_type,
            subject.name,
            len(recipients),
        )
        sent = self._send_group(recipients, msg)
        self.counters.notifications += sent
        metrics.NOTIFICATIONS.inc(sent)


__all__ = [
    "DEFAULT_BATCH_LINGER",
    "DEFAULT_BATCH_PENDING",
    "DEFAULT_HARD_CAP",
    "DEFAULT_HIGH_WATER",
    "DEFAULT_IN_DOUBT_TIMEOUT",
    "DEFAULT_LOW_WATER",
    "DEFAULT_MAX_SUBSCRIPTIONS",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_ITEMS",
    "GroupService",
    "ServiceCounters",
    "iso_time",
]
