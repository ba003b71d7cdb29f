"""The client library of server-group messaging, for applications inside a server.

Shaped like the original libservergroup (seed 000, "USAGE"):

    client = init(broadcast_cb, notification_cb, status_cb)
    # select/poll on client.fileno() (at most client.poll_timeout()); then:
    client.process()                 # calls the callbacks
    ident = client.broadcast("text") # to every other member of the group
    seq = client.request_status()

Callbacks (each optional):
- `broadcast_cb(text, source_instance)`: a broadcast from another member.
- `notification_cb(event)`: `event` is the notification as a parsed JSON
  object (a `dict` with `event_type`, `priority`, `timestamp`, `payload`);
  the original passed the same object as JSON text (`json.dumps(event)`
  gives it back).
- `status_cb(servers)`: once per status query, on `status_response_done`,
  with the list of the members' server-info dicts (what the original joined
  into a JSON list); responses to an older query are dropped.
- `nack_cb(orig_msg_type, reason, id)`: the host refused a request (`id`:
  the refused broadcast's, or None), or a broadcast went unconfirmed (below).
  Without a `nack_cb`, `process()` raises `NackError` when it meets the nack
  (messages after it stay queued for the next call).

`receive()` returns the same as typed events (below) without calling
callbacks, for programs that prefer them (the sample app does).

Theory of operation
-------------------

**Acknowledged broadcasts.** Every broadcast carries an `id`, 1, 2, 3, ...
per client. The client keeps each one it sent (id -> text, send time) in a
*window* of pending broadcasts (`window`, default 1024) until the host
answers. The host's `broadcast_ack(id, seq)` is cumulative: every pending
broadcast with an id up to `id` is in the group's store (acknowledged; the
one with `id` got the group sequence number `seq`). A `nack` carrying an id
refuses that broadcast (refused); the host always sends it before an ack
that passes that id, so an ack never acknowledges a refused broadcast. A
pending broadcast with neither within `ack_timeout` (default 10 s) is
*unconfirmed*: it leaves the window, and the application is told with a
`NackReceived("broadcast", reason, id)` (a `BroadcastUnconfirmed`, its
subclass) whose reason says the host did not confirm it, so it may or may
not have been delivered (the host may have failed before or after storing
it). That outcome is final: a late ack changes no counter, a late nack is
passed on as any nack. The window is what lets a sender run ahead of the
store; it bounds the client's memory (the texts are kept), how much a
host failure can leave unconfirmed, and how much one sender has on its way
to every receiver, which is what a receiver that falls behind must be able
to hold (the guest agent keeps 4096 datagrams for it; see "receivers
first" in guestcomm/guest.py). 1024 is far more than the store's latency
needs at full speed. `stats` gives
`BroadcastStats(sent, acknowledged, refused, unconfirmed, missed,
pending)`; always `sent == acknowledged + refused + unconfirmed + pending`.

**Backpressure.** The client's datagram socket is bound to its own address;
a second socket, never bound, is `connect()`ed to the agent's abstract
address only to be polled (`_AgentSocket`). Linux reports POLLOUT on
a *connected* AF_UNIX datagram socket only while the peer's receive queue
has room (`unix_dgram_poll` checks the peer's queue, `net.unix.max_dgram_qlen`
datagrams, 10 by default in every network namespace, only when the socket
has a peer, and registers the socket to be woken when the peer reads); on
an unconnected socket POLLOUT stays set and a send to a full peer just fails
with EAGAIN, so a sender could only retry on a timer. (A test in
`tests/integration/groups/test_client_flow.py` checks this on the running
kernel.) So a blocking `broadcast()` that meets a full queue
waits in poll() for POLLOUT, never in a sleep loop; it also waits, the same
way, while the window is full. While it waits it reads what arrives (acks
free the window; anything else becomes an event kept, in order, for the
next `process()`/`receive()`). With `send_timeout=None` (the default) it
waits as long as the agent exists; a number bounds the wait
(`AgentBusy` after it). `broadcast(text, block=False)` raises `AgentBusy`
at once instead of waiting. `flush(timeout)` waits, reading the same way,
until every broadcast sent is acknowledged or refused (True), or returns
False after `timeout` or when one went unconfirmed meanwhile. A program
with a loop of its own waits at most `poll_timeout()` on `fileno()`: events
kept while a send waited, and ack timeouts, do not make the socket
readable. The asyncio client waits the same way with
`loop.add_writer`, and reads all the time with `loop.add_reader`, so it
never blocks the loop.

Kept events are bounded (`max_held_events`, default 8192): when the
application takes none, further broadcasts are discarded and counted in
`missed` (it sees the gap in `seq`), as the agent would have done had the
client not read them; other events are few and always kept.

**The agent's lifetime.** The bound socket is not connected (see
`_AgentSocket`): it receives from whichever agent has the address, so a
restarted agent reaches the client at once, and sends go by name. A send
that finds nothing bound raises `AgentUnavailable`. Datagrams the old agent
had queued are lost with it.

**Gaps (`missed`).** A receiver tracks the `seq` of the group's broadcasts
it receives: a jump from s to s+k (k > 1) leaves k-1 holes, and a hole is a
missed broadcast unless it was one of this client's own (the host never
delivers a broadcast back to its sending server). Two facts place the own
ones: a broadcast sent after seq r was received gets a seq above r, and an
ack that acknowledged c broadcasts with seq S places them up to S. A hole is
counted (and logged once, at debug) as soon as it is known not to be an own
broadcast: at once when nothing of this client's awaits an answer (so a pure
receiver counts each jump at once), else when an ack and a later seq place
it. A seq that goes down (the group was created again and numbers from 1,
or a host restarted its numbering) resets the tracking without counting.
Limits: counting starts at the first seq received; broadcasts of another
application in the same server are holes too (counted as missed); an
unconfirmed broadcast that the host did store counts as missed.

Only datagrams from the guest agent whose outer `source_addr` is
`cgcs.server_grp` and whose `version` is 2 are accepted (spec section 4);
anything else is dropped and counted in `dropped`.

**Receiving cheaply.** A receipt is most of what a member's app does: 9 per
broadcast in a group of 10. The datagram the host sends (its exact form) is
read with two string scans instead of a JSON parse and its checks
(`groups.protocol.delivered_broadcast_fields`; any other form is decoded
the general way, to the same result), and the records made per receipt
skip the frozen dataclass's `__init__` (`protocol.record_builder`). A
wake-up that finds a datagram less than 1 ms after the previous such
wake-up yields the CPU once before reading on (`sockets.BurstReader`): the
agent, preempted by this wake-up in the middle of a burst, finishes it, and
one wake-up reads the whole burst instead of one datagram each; at low
rates it never yields, so a lone message is not delayed.

Several applications per server: bind another `address` (at most 15
characters); the client then sends `subscribe` so the host sends the group's
broadcasts and notifications there too (status replies, acks and nacks
always come back to the asking address). The host forgets subscriptions
when the guest's channel or the host daemon restarts, so the client renews
its subscription with every `request_status()` and every
`resubscribe_interval` seconds during `process()` (the async client in the
background).

`AsyncServerGroupClient` is the same for asyncio: `async with`, `async for
event in client.events()` yielding `BroadcastReceived`,
`NotificationReceived`, `StatusReceived` and `NackReceived`; `await
broadcast(text)` returns the id, `await flush(timeout)`, `stats`. Sends of
concurrent tasks go out one at a time, in the order they were asked for.

Neither client is thread-safe: use one from one thread (or one event loop).

Errors are `GroupMessagingError`s: `InvalidBroadcast` (too long, NUL,
newline: raised before anything is sent), `AgentUnavailable` (no guest agent
at `cgcs.messaging` in this network namespace), `AgentBusy`, `AddressInUse`,
`NackError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import select
import socket
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import Final

from servergroup.common.errors import LocalError, RemoteError, ServergroupError, UsageError
from servergroup.groups.protocol import (
    Broadcast,
    BroadcastAck,
    GroupMessage,
    Nack,
    Notification,
    StatusQuery,
    StatusResponse,
    StatusResponseDone,
    Subscribe,
    Unsubscribe,
    broadcast_request_datagram,
    check_broadcast_text,
    decode_group_message,
    delivered_broadcast_fields,
    encode_group_message,
)
from servergroup.guestcomm.protocol import (
    MAX_ADDR_LENGTH,
    MESSAGING_ADDR,
    SERVER_GROUP_ADDR,
    Envelope,
    JsonObject,
    ProtocolError,
    decode_envelope,
    encode_envelope,
    record_builder,
)
from servergroup.guestcomm.sockets import (
    AbstractSocket,
    BurstReader,
    Datagram,
    SendResult,
    abstract_address,
)
from servergroup.guestcomm.sockets import AddressInUse as _SocketAddressInUse

log = logging.getLogger(__name__)

#: How long a send may wait for room (agent's queue, window); None: as long as the agent exists.
DEFAULT_SEND_TIMEOUT: Final[float | None] = None
#: How many broadcasts may await the host's answer at once.
DEFAULT_WINDOW: Final = 1024
#: How long a broadcast may await the host's answer before it is counted unconfirmed.
DEFAULT_ACK_TIMEOUT: Final = 10.0
#: How many received events are kept for the application while it does not take them.
DEFAULT_MAX_HELD_EVENTS: Final = 8192
#: How often a client at another address renews its subscription.
DEFAULT_RESUBSCRIBE_INTERVAL: Final = 30.0
#: How long to wait before sending again when the kernel had no memory (ENOBUFS).
_NO_MEMORY_PAUSE: Final = 0.01


# -- errors ------------------------------------------------------------------------


class GroupMessagingError(ServergroupError):
    """Root of the client library's errors; the message is one sentence."""


class InvalidBroadcast(GroupMessagingError, LocalError):
    """The text cannot be broadcast (too long, NUL, newline); nothing was sent."""

    exit_status = 2


class AddressInUse(GroupMessagingError, LocalError):
    """Another application has the address in this network namespace."""


class InvalidAddress(GroupMessagingError, LocalError):
    """An address that is not a valid abstract name for the protocol."""

    exit_status = 2


class AgentUnavailable(GroupMessagingError, RemoteError):
    """No guest agent is bound at its address in this network namespace."""


class AgentBusy(GroupMessagingError, RemoteError):
    """A send would wait (non-blocking), or waited its whole `send_timeout`.

    The agent's queue was full, or the window of broadcasts awaiting the
    host's answer was; nothing was sent.
    """


class NackError(GroupMessagingError, RemoteError):
    """The host refused a request; `reason` is its `log_msg`, `id` the broadcast's.

    Also raised (with `unconfirmed` true) for a broadcast the host did not
    confirm within the ack timeout; `reason` then says so.
    """

    def __init__(
        self, orig_msg_type: str, reason: str, id: int | None = None, *, unconfirmed: bool = False
    ) -> None:
        which = orig_msg_type if id is None else f"{orig_msg_type} {id}"
        if unconfirmed:
            super().__init__(f"{reason[:1].upper()}{reason[1:]}")
        else:
            super().__init__(f"the host refused the {which}: {reason}")
        self.orig_msg_type = orig_msg_type
        self.reason = reason
        self.id = id
        self.unconfirmed = unconfirmed


# -- events --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BroadcastReceived:
    """A broadcast from another member; `seq` numbers the group's broadcasts (None: old host)."""

    text: str
    source_instance: str | None
    seq: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationReceived:
    """Another member changed; `event` has `event_type`, `priority`, `timestamp`, `payload`."""

    event: JsonObject

    @property
    def event_type(self) -> str:
        value = self.event.get("event_type")
        return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReceived:
    """Every member's server info, the answer to status query `seq`."""

    seq: int
    servers: tuple[JsonObject, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class NackReceived:
    """The host refused a request of type `orig_msg_type`, for `reason`.

    `id` is the refused broadcast's. The client makes one too, with
    `orig_msg_type` "broadcast", when a broadcast went unconfirmed.
    """

    orig_msg_type: str
    reason: str
    id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BroadcastUnconfirmed(NackReceived):
    """The `NackReceived` the client makes for a broadcast the host did not confirm.

    No ack nor nack came within the ack timeout: the host may have failed
    before or after storing it, so it may or may not have been delivered.
    """


ClientEvent = BroadcastReceived | NotificationReceived | StatusReceived | NackReceived
#: `BroadcastReceived(text, source_instance, seq)`, made once per receipt.
_broadcast_received = record_builder(BroadcastReceived)


@dataclass(frozen=True, slots=True, kw_only=True)
class BroadcastStats:
    """What became of this client's broadcasts, and what it missed of the group's.

    `sent == acknowledged + refused + unconfirmed + pending` always.
    """

    #: Broadcasts handed to the agent.
    sent: int
    #: In the group's store: the host acknowledged them.
    acknowledged: int
    #: Refused by the host (or the agent) with a nack.
    refused: int
    #: Neither within `ack_timeout`: the host may have failed; maybe delivered, maybe not.
    unconfirmed: int
    #: Broadcasts of the group this client never received (gaps in `seq`).
    missed: int
    #: Sent, awaiting the host's answer (in the window).
    pending: int


def _agent_missing(agent: str) -> AgentUnavailable:
    return AgentUnavailable(
        f"no guest agent at {agent} in this network namespace: start `servergroup guest`"
    )


def check_text(text: str) -> None:
    """Raise `InvalidBroadcast` when `text` cannot be broadcast (too long, NUL, newline)."""
    if not isinstance(text, str):
        raise InvalidBroadcast("the broadcast text must be a str")
    reason = check_broadcast_text(text)
    if reason is not None:
        raise InvalidBroadcast(reason)


# -- the I/O-free core ---------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    text: str
    sent_at: float
    #: The last seq received when it was sent: its own seq will be above (0: unknown).
    floor: int


#: Acks kept to place own broadcasts among the holes; beyond, the newest are merged.
_MAX_UNSETTLED_ACKS: Final = 64


@dataclass(slots=True)
class _GapCounter:
    """Counts missed seqs of received broadcasts, leaving out this client's own.

    A hole (a seq not received between two received ones) is settled once it
    is known whether it is one of this client's broadcasts:
    - a broadcast sent after seq r was received gets a seq above r (r was
      committed before it was even sent): holes up to the lowest such *floor*
      of the broadcasts still unplaced are not own, so they are missed;
    - an ack that acknowledged c broadcasts with seq S places those c among
      the holes up to S (above the earlier acks' seqs): once a seq above S was
      received, the holes up to S hold c own seqs and the rest were missed.
    """

    missed: int = 0
    #: The last seq received, None before the first.
    last: int | None = None
    #: Unsettled holes (first, last) of seqs not received, ascending.
    holes: deque[tuple[int, int]] = field(default_factory=deque)
    #: Unsettled acks: (seq S, own broadcasts it acknowledged, their lowest floor), ascending S.
    owns: deque[tuple[int, int, int]] = field(default_factory=deque)
    last_ack_seq: int | None = None
    max_acks: int = _MAX_UNSETTLED_ACKS

    @property
    def floor(self) -> int:
        """The floor of a broadcast sent now."""
        return 0 if self.last is None else self.last

    def received(self, seq: int) -> bool:
        """Track a received seq; False when it went down (numbered again: start over)."""
        last = self.last
        self.last = seq
        if last is not None and seq <= last:
            # The group was created again, or a host restarted its numbering:
            # what is unsettled belongs to the old numbering; count none of it.
            self.holes.clear()
            self.owns.clear()
            self.last_ack_seq = None
            return False
        if last is not None and seq > last + 1:
            self.holes.append((last + 1, seq - 1))
        return True

    def acked(self, seq: int, count: int, floor: int) -> None:
        if self.last_ack_seq is not None and seq <= self.last_ack_seq:
            # Numbered again: what is unsettled cannot be placed; drop it, count nothing.
            self.holes.clear()
            self.owns.clear()
        self.last_ack_seq = seq
        if len(self.owns) >= self.max_acks:
            # Bounded memory (a client that sends much and receives little): the
            # newest two merged say less (where in between) and delay the count.
            _, earlier, lowest = self.owns.pop()
            count, floor = count + earlier, lowest
        self.owns.append((seq, count, floor))

    def settle(self, pending_floor: int | None) -> None:
        """Count what can be known now; `pending_floor`: the lowest floor of the
        broadcasts still awaiting an answer (None: none)."""
        last = self.last
        if last is None:
            return
        while True:
            bound = last
            if pending_floor is not None:
                bound = min(bound, pending_floor)
            if self.owns:
                bound = min(bound, self.owns[0][2])
            self._count(self._take_holes(bound), bound + 1)
            if not self.owns or self.owns[0][0] >= last:
                return
            upto, own, _ = self.owns.popleft()
            self._count(self._take_holes(upto) - own, upto)

    def _take_holes(self, upto: int) -> int:
        """Remove the holes' seqs up to `upto`; how many there were."""
        taken = 0
        while self.holes and self.holes[0][0] <= upto:
            first, end = self.holes.popleft()
            if end > upto:
                self.holes.appendleft((upto + 1, end))
                end = upto
            taken += end - first + 1
        return taken

    def _count(self, missed: int, before: int) -> None:
        if missed > 0:
            self.missed += missed
            log.debug("missed %d broadcast(s) of the group, before seq %d", missed, before)


@dataclass(slots=True)
class ClientCore:
    """What both clients share, without I/O or clock: datagrams to send, events received.

    Every method that depends on time takes `now` (seconds of a monotonic
    clock); `next_timer()` says when `handle_timer(now)` has work.
    """

    address: str = SERVER_GROUP_ADDR
    agent: str = MESSAGING_ADDR
    window: int = DEFAULT_WINDOW
    ack_timeout: float = DEFAULT_ACK_TIMEOUT
    dropped: int = 0  # datagrams that were not for us or not valid
    _seqs: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _latest_seq: int | None = None
    _responses: list[JsonObject] = field(default_factory=list)
    _next_id: int = 1
    _pending: OrderedDict[int, _Pending] = field(default_factory=OrderedDict)
    #: Ids that went unconfirmed and may still be acknowledged late (for the gap count).
    _unconfirmed_ids: deque[int] = field(default_factory=deque)
    _sent: int = 0
    _acknowledged: int = 0
    _refused: int = 0
    _unconfirmed: int = 0
    _discarded: int = 0
    _gaps: _GapCounter = field(default_factory=_GapCounter)

    def __post_init__(self) -> None:
        for what, name in (("address", self.address), ("agent address", self.agent)):
            size = len(name.encode("utf-8", "surrogatepass"))
            if not 0 < size <= MAX_ADDR_LENGTH or "\0" in name:
                raise InvalidAddress(
                    f"the {what} {name!r} must be 1 to {MAX_ADDR_LENGTH} bytes without NUL"
                )
        if self.window < 1:
            raise UsageError("the window of pending broadcasts must be at least 1.")
        if self.ack_timeout <= 0:
            raise UsageError("the ack timeout must be positive.")

    @property
    def subscribes(self) -> bool:
        """Whether this client needs a subscription to get the group's traffic."""
        return self.address != SERVER_GROUP_ADDR

    @property
    def latest_seq(self) -> int | None:
        return self._latest_seq

    @property
    def stats(self) -> BroadcastStats:
        return BroadcastStats(
            sent=self._sent,
            acknowledged=self._acknowledged,
            refused=self._refused,
            unconfirmed=self._unconfirmed,
            missed=self._gaps.missed,
            pending=len(self._pending),
        )

    @property
    def window_full(self) -> bool:
        return len(self._pending) >= self.window

    @property
    def pending(self) -> int:
        return len(self._pending)

    def datagram(self, msg: GroupMessage) -> bytes:
        env = Envelope(dest_addr=SERVER_GROUP_ADDR, data=encode_group_message(msg))
        return encode_envelope(env)

    def broadcast(self, text: str, *, checked: bool = False) -> tuple[int, bytes]:
        """The next broadcast's id and datagram; nothing changes until `broadcast_sent`.

        Raises `InvalidBroadcast` for a text that cannot be broadcast (unless
        the caller `checked` it with `check_text` already).
        """
        if not checked:
            check_text(text)
        ident = self._next_id
        datagram = broadcast_request_datagram(text, ident)
        if datagram is None:  # a lone surrogate (refused by check_text unless `checked`)
            datagram = self.datagram(Broadcast(text=text, id=ident))
        return ident, datagram

    def broadcast_sent(self, ident: int, text: str, now: float) -> None:
        """The agent took broadcast `ident` (from `broadcast`) at `now`: it is pending."""
        if ident != self._next_id:
            raise UsageError(f"broadcast {ident} is not the next one ({self._next_id}).")
        self._next_id += 1
        self._sent += 1
        self._pending[ident] = _Pending(text=text, sent_at=now, floor=self._gaps.floor)

    def pending_text(self, ident: int) -> str | None:
        """The text of pending broadcast `ident`, None when it is not pending."""
        entry = self._pending.get(ident)
        return None if entry is None else entry.text

    def status_query(self) -> tuple[int, bytes]:
        seq = next(self._seqs)
        self._latest_seq = seq
        self._responses = []
        return seq, self.datagram(StatusQuery(seq=seq))

    def next_timer(self) -> float | None:
        """When the oldest pending broadcast goes unconfirmed; None when nothing is pending."""
        for entry in self._pending.values():
            return entry.sent_at + self.ack_timeout
        return None

    def _settle(self) -> None:
        for entry in self._pending.values():
            self._gaps.settle(entry.floor)  # the oldest has the lowest floor
            return
        self._gaps.settle(None)

    def handle_timer(self, now: float) -> list[BroadcastUnconfirmed]:
        """Pending broadcasts whose ack timeout passed at `now`, as events: now unconfirmed."""
        events: list[BroadcastUnconfirmed] = []
        while self._pending:
            ident, entry = next(iter(self._pending.items()))
            if entry.sent_at + self.ack_timeout > now:
                break
            del self._pending[ident]
            self._unconfirmed += 1
            self._unconfirmed_ids.append(ident)
            if len(self._unconfirmed_ids) > self.window:
                self._unconfirmed_ids.popleft()
            events.append(
                BroadcastUnconfirmed(
                    orig_msg_type="broadcast",
                    reason=(
                        f"the host did not confirm broadcast {ident} within "
                        f"{self.ack_timeout:g} s: it may or may not have been delivered"
                    ),
                    id=ident,
                )
            )
        if events:
            self._settle()
        return events

    def discarded(self, event: ClientEvent) -> int:
        """The driver could not keep `event` for the application (too many held).

        A broadcast counts as missed. Returns how many were discarded so far.
        """
        if isinstance(event, BroadcastReceived):
            self._gaps.missed += 1
            self._discarded += 1
        return self._discarded

    def receive(self, datagram: Datagram) -> ClientEvent | None:
        """The event in one received datagram, or None (an ack, dropped, a partial status)."""
        if datagram.truncated or datagram.sender != self.agent:
            self.dropped += 1
            return None
        fields = delivered_broadcast_fields(datagram.data)  # the common case
        if fields is not None:
            text, source, seq = fields
            if seq is not None:
                self._received_seq(seq)
            return _broadcast_received(text, source, seq)
        try:
            env = decode_envelope(datagram.data)
            if env.source_addr != SERVER_GROUP_ADDR:
                raise ProtocolError(f"source_addr is {env.source_addr!r}")
            msg = decode_group_message(env.data)
        except ProtocolError as exc:
            self.dropped += 1
            log.debug("dropped a datagram from the agent: %s", exc)
            return None
        match msg:
            case Broadcast(text=text, source_instance=source, seq=seq):
                if seq is not None:
                    self._received_seq(seq)
                return BroadcastReceived(text=text, source_instance=source, seq=seq)
            case BroadcastAck(id=ident, seq=seq):
                self._ack(ident, seq)
                return None
            case Notification(event=event):
                return NotificationReceived(event=event)
            case StatusResponse(seq=seq, server=server):
                if seq == self._latest_seq:
                    self._responses.append(server)
                else:
                    self.dropped += 1
                return None
            case StatusResponseDone(seq=seq):
                if seq != self._latest_seq:
                    self.dropped += 1
                    return None
                servers, self._responses = tuple(self._responses), []
                return StatusReceived(seq=seq, servers=servers)
            case Nack(orig_msg_type=orig, log_msg=reason, id=ident):
                if ident is not None and self._pending.pop(ident, None) is not None:
                    self._refused += 1
                    self._settle()
                elif ident is not None and ident in self._unconfirmed_ids:
                    self._unconfirmed_ids.remove(ident)  # it has no seq after all
                return NackReceived(orig_msg_type=orig, reason=reason, id=ident)
            case StatusQuery() | Subscribe() | Unsubscribe():
                self.dropped += 1
                return None

    def _received_seq(self, seq: int) -> None:
        if not self._gaps.received(seq):
            # Numbered again: the floors of what is pending are stale.
            for entry in self._pending.values():
                entry.floor = 0
        self._settle()

    def _ack(self, ident: int, seq: int) -> None:
        acked = 0
        floor: int | None = None
        while self._pending:
            first, entry = next(iter(self._pending.items()))
            if first > ident:
                break
            del self._pending[first]
            acked += 1
            floor = entry.floor if floor is None else floor
        self._acknowledged += acked
        # Unconfirmed ones acknowledged late: no counter changes, but their seqs are ours.
        late = 0
        while self._unconfirmed_ids and self._unconfirmed_ids[0] <= ident:
            self._unconfirmed_ids.popleft()
            late += 1
        if late:
            floor = 0  # their floors are gone: place them anywhere up to `seq`
        if acked + late:
            self._gaps.acked(seq, acked + late, 0 if floor is None else floor)
            self._settle()


# -- the socket ------------------------------------------------------------------------


def _bind(address: str) -> _AgentSocket:
    try:
        return _AgentSocket(address)
    except _SocketAddressInUse:
        raise AddressInUse(
            f"the address {address!r} is already bound in this network namespace "
            "(another server-group app?): give another address"
        ) from None


class _Sent(Enum):
    """How one send to the agent ended."""

    SENT = "sent"
    #: The agent's queue is full (or our send buffer): wait for POLLOUT.
    FULL = "full"
    #: The kernel had no memory for the datagram (ENOBUFS): try again shortly.
    NO_MEMORY = "no memory"
    #: Nothing is bound at the agent's address, even after connecting again.
    NO_AGENT = "no agent"
    #: Larger than the kernel accepts for one datagram.
    TOO_BIG = "too big"


class _AgentSocket:
    """The client's socket, bound to its abstract name, and a watcher connected to the agent.

    The bound socket stays unconnected: it sends with `sendto`, and what the
    agent sends it is held to the kernel's per-socket queue length like any
    datagram (a connected receiver would lift that limit for its peer, so a
    client that stopped reading could use up the agent's whole send buffer
    and stall every other application of the server). The watcher is a
    second socket, never bound and never used to send, `connect()`ed to the
    agent only so that POLLOUT on it means "the agent's queue has room" (see
    the module docstring): a waiting sender polls the watcher's `fileno` and
    then sends on the bound socket (a datagram that loses the race to
    another sender meets EAGAIN and waits again).
    """

    def __init__(self, name: str) -> None:
        self._bound = AbstractSocket(name)
        # Made now, with the bound socket: a socket belongs to the network namespace
        # of the thread that makes it, and the client may be used from another.
        self._watcher = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        )
        self.agent: str | None = None

    def fileno(self) -> int:
        """The bound socket: poll it for POLLIN."""
        return self._bound.fileno()

    def writable_fileno(self) -> int | None:
        """The watcher: poll it for POLLOUT; None when no agent is bound (send to find out)."""
        if self.agent is None:
            return None
        return self._watcher.fileno()

    def close(self) -> None:
        self._bound.close()
        self._watcher.close()

    def connect(self, agent: str) -> bool:
        """Connect the watcher (again) to the agent at `agent`; False when nothing is bound.

        A failed connect leaves the watcher as it was: unconnected, or connected
        to an agent that is gone, which polls writable (the send then tells).

        Connecting again follows a restarted agent; to the same agent it changes nothing.
        """
        try:
            self._watcher.connect(abstract_address(agent))
        except (ConnectionRefusedError, FileNotFoundError):
            self.agent = None
            return False
        self.agent = agent
        return True

    def send(self, agent: str, data: bytes) -> _Sent:
        """Send one datagram to the agent without waiting."""
        result = self._bound.send_to(agent, data)
        if result is SendResult.WOULD_BLOCK:
            # Waiting follows: make sure the watcher watches the agent there now.
            self.connect(agent)
        return _SENT_OF[result]

    def receive_nowait(self) -> Datagram | None:
        """The next queued datagram, or None when none is waiting."""
        return self._bound.receive_nowait()


_SENT_OF: Final = {
    SendResult.SENT: _Sent.SENT,
    SendResult.WOULD_BLOCK: _Sent.FULL,
    SendResult.NO_MEMORY: _Sent.NO_MEMORY,
    SendResult.NOT_BOUND: _Sent.NO_AGENT,
    SendResult.TOO_BIG: _Sent.TOO_BIG,
}


def _check_sent(result: _Sent, agent: str) -> None:
    """Raise for the outcomes that waiting cannot help."""
    if result is _Sent.NO_AGENT:
        raise _agent_missing(agent)
    if result is _Sent.TOO_BIG:
        raise GroupMessagingError("the message is too big for one datagram")


def _busy_now(agent: str, window_full: bool, window: int) -> AgentBusy:
    if window_full:
        return AgentBusy(
            f"{window} broadcasts await the host's answer (the window is full): try again later"
        )
    return AgentBusy(f"the guest agent at {agent} has no room for the message now: try again later")


def _busy_after(agent: str, timeout: float, window_full: bool) -> AgentBusy:
    what = (
        "the window of broadcasts awaiting the host's answer stayed full"
        if window_full
        else f"the guest agent at {agent} did not take the message"
    )
    return AgentBusy(f"{what} for {timeout:g} s")


def _check_timeout(value: float | None, what: str) -> None:
    if value is not None and value <= 0:
        raise UsageError(f"the {what} must be positive (or None to wait as long as needed).")


# -- the synchronous client ------------------------------------------------------------

BroadcastCallback = Callable[[str, str | None], object]
NotificationCallback = Callable[[JsonObject], object]
StatusCallback = Callable[[list[JsonObject]], object]
NackCallback = Callable[[str, str, int | None], object]

_POLLIN: Final = select.POLLIN
_POLLOUT: Final = select.POLLOUT


class ServerGroupClient:
    """A synchronous client; see the module docstring. Build it with `init`."""

    def __init__(
        self,
        broadcast_cb: BroadcastCallback | None = None,
        notification_cb: NotificationCallback | None = None,
        status_cb: StatusCallback | None = None,
        *,
        address: str = SERVER_GROUP_ADDR,
        agent: str = MESSAGING_ADDR,
        nack_cb: NackCallback | None = None,
        send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
        resubscribe_interval: float = DEFAULT_RESUBSCRIBE_INTERVAL,
        window: int = DEFAULT_WINDOW,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        max_held_events: int = DEFAULT_MAX_HELD_EVENTS,
    ) -> None:
        _check_timeout(send_timeout, "send timeout")
        self._core = ClientCore(
            address=address, agent=agent, window=window, ack_timeout=ack_timeout
        )
        self.broadcast_cb = broadcast_cb
        self.notification_cb = notification_cb
        self.status_cb = status_cb
        self.nack_cb = nack_cb
        self._send_timeout = send_timeout
        self._resubscribe_interval = resubscribe_interval
        self._max_held = max_held_events
        self._subscribed_at: float | None = None
        self._held: deque[ClientEvent] = deque()
        self._bursts = BurstReader()
        self._sock: _AgentSocket | None = _bind(address)
        self._poll = select.poll()
        if self._core.subscribes:
            try:
                self.subscribe()
            except BaseException:
                self.close()
                raise

    @property
    def address(self) -> str:
        return self._core.address

    @property
    def dropped(self) -> int:
        """Datagrams dropped: not from the agent, not server-group traffic, stale status."""
        return self._core.dropped

    @property
    def stats(self) -> BroadcastStats:
        """What became of this client's broadcasts, and what it missed (see `BroadcastStats`)."""
        return self._core.stats

    def fileno(self) -> int:
        """The socket to watch with select/poll; call `process()` when it is readable.

        Also call it when `poll_timeout()` has passed: events read while a
        broadcast waited, and unconfirmed broadcasts, do not make the socket
        readable.
        """
        return self._socket().fileno()

    def poll_timeout(self) -> float | None:
        """How long a select/poll on `fileno()` may wait before `process()` has work anyway.

        0 when events are kept (read while `broadcast()` or `flush()` waited),
        the time until the oldest pending broadcast goes unconfirmed, else None.
        """
        if self._held:
            return 0.0
        at = self._core.next_timer()
        return None if at is None else max(0.0, at - time.monotonic())

    def process(self) -> int:
        """Handle every message waiting now, calling the callbacks; returns how many.

        Raises `NackError` at a nack when no `nack_cb` was given.
        """
        handled = 0
        for event in self._events():
            handled += 1
            self._dispatch(event)
        return handled

    def receive(self) -> list[ClientEvent]:
        """The typed events waiting now, without calling the callbacks (nacks included)."""
        return list(self._events())

    def _events(self) -> Iterator[ClientEvent]:
        self._read()
        self._expire()
        while self._held:
            yield self._held.popleft()
        self._renew_subscription()

    def broadcast(self, text: str, *, block: bool = True) -> int:
        """Send `text` to every other member of the group; returns the broadcast's id.

        Raises `InvalidBroadcast` before anything is sent. When the agent's
        queue or the window is full it waits (reading what arrives meanwhile,
        kept for `process()`), or with `block=False` raises `AgentBusy` at once.
        """
        ident, datagram = self._core.broadcast(text)
        self._send(datagram, block=block, windowed=True)
        self._core.broadcast_sent(ident, text, time.monotonic())
        return ident

    def flush(self, timeout: float) -> bool:
        """Wait until every broadcast sent was acknowledged or refused.

        True then; False when `timeout` seconds passed first or a broadcast
        went unconfirmed meanwhile. Events read while waiting are kept for
        `process()`.
        """
        deadline = time.monotonic() + timeout
        unconfirmed = self._core.stats.unconfirmed
        while self._core.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._wait(writable=False, deadline=deadline)
        return self._core.stats.unconfirmed == unconfirmed

    def request_status(self) -> int:
        """Ask for every member's status; `status_cb` gets the answer. Returns the query's seq."""
        if self._core.subscribes:
            self.subscribe()
        seq, datagram = self._core.status_query()
        self._send(datagram)
        return seq

    def subscribe(self) -> None:
        """(Re)subscribe this address to the group's traffic (done for you; see above)."""
        if self._core.subscribes:
            self._send(self._core.datagram(Subscribe()))
            self._subscribed_at = time.monotonic()

    def close(self) -> None:
        """Unsubscribe (when subscribed) and release the address; closing twice is fine."""
        if self._sock is None:
            return
        if self._subscribed_at is not None:
            with contextlib.suppress(OSError):
                self._sock.send(self._core.agent, self._core.datagram(Unsubscribe()))
        self._sock.close()
        self._sock = None

    def __enter__(self) -> ServerGroupClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _socket(self) -> _AgentSocket:
        if self._sock is None:
            raise GroupMessagingError("the server-group client is closed")
        return self._sock

    def _send(self, datagram: bytes, *, block: bool = True, windowed: bool = False) -> None:
        """Send one datagram, waiting for room as the module docstring says."""
        sock = self._socket()
        agent = self._core.agent
        timeout = self._send_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        result: _Sent | None = None
        while True:
            self._expire()
            window_full = windowed and self._core.window_full
            if not window_full:
                result = sock.send(agent, datagram)
                _check_sent(result, agent)
                if result is _Sent.SENT:
                    return
            if not block:
                raise _busy_now(agent, window_full, self._core.window)
            if deadline is not None and time.monotonic() >= deadline:
                assert timeout is not None
                raise _busy_after(agent, timeout, window_full)
            if not window_full and result is _Sent.NO_MEMORY:
                pause = time.monotonic() + _NO_MEMORY_PAUSE
                self._wait(writable=False, deadline=_earliest(pause, deadline))
            else:
                self._wait(writable=not window_full, deadline=deadline)

    def _wait(self, *, writable: bool, deadline: float | None) -> None:
        """One poll: until a datagram arrives (read and kept), the socket is writable
        (when asked), the next ack timeout, or `deadline`."""
        sock = self._socket()
        until = _earliest(deadline, self._core.next_timer())
        timeout_ms = -1 if until is None else max(0, int((until - time.monotonic()) * 1000) + 1)
        watched = [(sock.fileno(), _POLLIN)]
        out = sock.writable_fileno() if writable else None
        if writable and out is None:
            timeout_ms = 0  # no agent to watch: the next send says what is there
        if out is not None:
            watched.append((out, _POLLOUT))
        for fd, mask in watched:
            self._poll.register(fd, mask)
        try:
            ready = self._poll.poll(timeout_ms)
        finally:
            for fd, _ in watched:
                self._poll.unregister(fd)
        if any(fd == sock.fileno() and mask & _POLLIN for fd, mask in ready):
            self._read()
        self._expire()

    def _read(self) -> None:
        """Read every datagram waiting; keep their events."""
        sock = self._socket()
        datagram = sock.receive_nowait()
        if datagram is None:
            return
        self._bursts.woken()  # in a busy stream, let the agent finish its burst first
        receive = self._core.receive
        while datagram is not None:
            event = receive(datagram)
            if event is not None:
                self._hold(event)
            datagram = sock.receive_nowait()

    def _hold(self, event: ClientEvent) -> None:
        if isinstance(event, BroadcastReceived) and len(self._held) >= self._max_held:
            _discard(self._core, event)
            return
        self._held.append(event)

    def _expire(self) -> None:
        for event in self._core.handle_timer(time.monotonic()):
            self._held.append(event)

    def _renew_subscription(self) -> None:
        at = self._subscribed_at
        if at is None or time.monotonic() - at < self._resubscribe_interval:
            return
        try:
            self.subscribe()
        except GroupMessagingError as exc:
            log.info("cannot renew the subscription of %r yet: %s", self.address, exc)

    def _dispatch(self, event: ClientEvent) -> None:
        match event:
            case BroadcastReceived(text=text, source_instance=source):
                if self.broadcast_cb is not None:
                    self.broadcast_cb(text, source)
            case NotificationReceived(event=notification):
                if self.notification_cb is not None:
                    self.notification_cb(notification)
            case StatusReceived(servers=servers):
                if self.status_cb is not None:
                    self.status_cb(list(servers))
            case NackReceived(orig_msg_type=orig, reason=reason, id=ident):
                if self.nack_cb is None:
                    unconfirmed = isinstance(event, BroadcastUnconfirmed)
                    raise NackError(orig, reason, ident, unconfirmed=unconfirmed)
                self.nack_cb(orig, reason, ident)


def _discard(core: ClientCore, event: ClientEvent) -> None:
    """Drop a broadcast the application has no room for, counted in `missed`."""
    if core.discarded(event) == 1:
        log.warning(
            "the application takes no events: broadcasts beyond the ones kept are "
            "discarded until it does (counted in missed)"
        )


def _earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


def init(
    broadcast_cb: BroadcastCallback | None = None,
    notification_cb: NotificationCallback | None = None,
    status_cb: StatusCallback | None = None,
    *,
    address: str = SERVER_GROUP_ADDR,
    agent: str = MESSAGING_ADDR,
    nack_cb: NackCallback | None = None,
    send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
    window: int = DEFAULT_WINDOW,
    ack_timeout: float = DEFAULT_ACK_TIMEOUT,
) -> ServerGroupClient:
    """Bind `address` and return the client (the original's `init_sg`)."""
    return ServerGroupClient(
        broadcast_cb,
        notification_cb,
        status_cb,
        address=address,
        agent=agent,
        nack_cb=nack_cb,
        send_timeout=send_timeout,
        window=window,
        ack_timeout=ack_timeout,
    )


# -- the asyncio client ------------------------------------------------------------------


class AsyncServerGroupClient:
    """The asyncio client: `async with AsyncServerGroupClient() as c: async for e in c.events()`.

    Nacks arrive as `NackReceived` events (nothing raises for them). While
    open, the client reads its socket whenever it is readable (acks free the
    window even when no task iterates `events()`).
    """

    def __init__(
        self,
        *,
        address: str = SERVER_GROUP_ADDR,
        agent: str = MESSAGING_ADDR,
        send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
        resubscribe_interval: float = DEFAULT_RESUBSCRIBE_INTERVAL,
        window: int = DEFAULT_WINDOW,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        max_held_events: int = DEFAULT_MAX_HELD_EVENTS,
    ) -> None:
        _check_timeout(send_timeout, "send timeout")
        self._core = ClientCore(
            address=address, agent=agent, window=window, ack_timeout=ack_timeout
        )
        self._send_timeout = send_timeout
        self._resubscribe_interval = resubscribe_interval
        self._max_held = max_held_events
        self._sock: _AgentSocket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._held: deque[ClientEvent] = deque()
        self._bursts = BurstReader()
        #: Woken when an event is kept, the window frees room, or the client closes.
        self._changed: asyncio.Event | None = None
        self._send_lock: asyncio.Lock | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: The send awaiting POLLOUT (sends go one at a time), failed by `close`.
        self._write_waiter: asyncio.Future[None] | None = None

    @property
    def address(self) -> str:
        return self._core.address

    @property
    def dropped(self) -> int:
        return self._core.dropped

    @property
    def stats(self) -> BroadcastStats:
        """What became of this client's broadcasts, and what it missed (see `BroadcastStats`)."""
        return self._core.stats

    def bind(self) -> None:
        """Bind the address now (`open` does it when not done yet); binding twice is fine.

        The socket belongs to the network namespace of the calling thread.
        """
        if self._sock is None:
            self._sock = _bind(self._core.address)

    async def open(self) -> None:
        """Bind the address, start reading and, at another address than the default, subscribe."""
        if self._loop is not None:
            return
        self.bind()
        assert self._sock is not None
        loop = self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._send_lock = asyncio.Lock()
        loop.add_reader(self._sock.fileno(), self._on_readable)
        if self._core.subscribes:
            try:
                await self.subscribe()
            except BaseException:
                await self.close()
                raise
            self._renewer = asyncio.create_task(self._renew(), name="servergroup-resubscribe")

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        if self._sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._loop.remove_writer(self._sock.fileno())
        if self._write_waiter is not None and not self._write_waiter.done():
            self._write_waiter.set_exception(
                GroupMessagingError("the server-group client was closed during the send")
            )
        if self._core.subscribes:
            with contextlib.suppress(OSError):
                self._sock.send(self._core.agent, self._core.datagram(Unsubscribe()))
        self._sock.close()
        self._sock = None
        if self._changed is not None:
            self._changed.set()  # wake every waiter: they see the client closed

    async def __aenter__(self) -> AsyncServerGroupClient:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def broadcast(self, text: str, *, block: bool = True) -> int:
        """Send `text` to every other member; returns the broadcast's id.

        Raises `InvalidBroadcast` before sending. Awaits room in the agent's
        queue and the window, or with `block=False` raises `AgentBusy` at once.
        """
        check_text(text)  # before waiting for our turn
        async with self._lock():
            ident, datagram = self._core.broadcast(text, checked=True)
            await self._send_unlocked(datagram, block=block, windowed=True)
            self._core.broadcast_sent(ident, text, self._now())
            self._arm_timer()
            return ident

    async def flush(self, timeout: float) -> bool:
        """Wait until every broadcast sent was acknowledged or refused (see the sync client)."""
        self._opened()
        unconfirmed = self._core.stats.unconfirmed
        try:
            async with asyncio.timeout(timeout):
                while self._core.pending:
                    await self._changes()
        except TimeoutError:
            return False
        return self._core.stats.unconfirmed == unconfirmed

    async def request_status(self) -> int:
        """Ask for every member's status; a `StatusReceived` with this seq follows."""
        if self._core.subscribes:
            await self.subscribe()
        async with self._lock():
            seq, datagram = self._core.status_query()
            await self._send_unlocked(datagram)
        return seq

    async def subscribe(self) -> None:
        if self._core.subscribes:
            async with self._lock():
                await self._send_unlocked(self._core.datagram(Subscribe()))

    async def events(self) -> AsyncIterator[ClientEvent]:
        """Every event, as it arrives, until the client is closed."""
        self._opened()
        while True:
            if self._held:
                yield self._held.popleft()
            elif self._sock is None:
                return
            else:
                await self._changes()

    async def next_event(self, timeout: float) -> ClientEvent:
        """The next event; `TimeoutError` after `timeout` seconds."""
        self._opened()
        async with asyncio.timeout(timeout):
            while not self._held:
                if self._sock is None:
                    raise GroupMessagingError("the server-group client is closed")
                await self._changes()
            return self._held.popleft()

    def _opened(self) -> tuple[_AgentSocket, asyncio.AbstractEventLoop]:
        if self._sock is None or self._loop is None:
            raise GroupMessagingError("the server-group client is not open")
        return self._sock, self._loop

    def _lock(self) -> asyncio.Lock:
        self._opened()
        assert self._send_lock is not None
        return self._send_lock

    def _now(self) -> float:
        return self._opened()[1].time()

    async def _changes(self) -> None:
        """Wait until something changed: an event kept, room in the window, closed."""
        changed = self._changed
        assert changed is not None
        changed.clear()
        await changed.wait()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _send_unlocked(
        self, datagram: bytes, *, block: bool = True, windowed: bool = False
    ) -> None:
        agent = self._core.agent
        timeout = self._send_timeout
        try:
            async with asyncio.timeout(timeout):
                while True:
                    sock, _ = self._opened()
                    window_full = windowed and self._core.window_full
                    if window_full:
                        if not block:
                            raise _busy_now(agent, True, self._core.window)
                        await self._changes()
                        continue
                    result = sock.send(agent, datagram)
                    _check_sent(result, agent)
                    if result is _Sent.SENT:
                        return
                    if not block:
                        raise _busy_now(agent, False, self._core.window)
                    if result is _Sent.NO_MEMORY:
                        await asyncio.sleep(_NO_MEMORY_PAUSE)
                    else:
                        await self._writable(sock)
        except TimeoutError:
            assert timeout is not None
            raise _busy_after(agent, timeout, windowed and self._core.window_full) from None

    async def _writable(self, sock: _AgentSocket) -> None:
        """Wait for POLLOUT on the watcher: room in the agent's queue."""
        _, loop = self._opened()
        ready = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        fd = sock.writable_fileno()
        if fd is None:
            return  # no agent to watch: the next send says what is there
        loop.add_writer(fd, wake)
        self._write_waiter = ready
        try:
            await ready
        finally:
            self._write_waiter = None
            if self._sock is sock:
                loop.remove_writer(fd)

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        kept = False
        freed = self._core.pending
        # A bounded batch per wake-up, so a flood cannot starve the loop.
        for count in range(256):
            datagram = sock.receive_nowait()
            if datagram is None:
                break
            if count == 0:
                self._bursts.woken()  # in a busy stream, let the agent finish its burst first
            event = self._core.receive(datagram)
            if event is not None:
                kept = self._hold(event) or kept
        if kept or self._core.pending != freed:
            self._wake()
        self._arm_timer()

    def _hold(self, event: ClientEvent) -> bool:
        if isinstance(event, BroadcastReceived) and len(self._held) >= self._max_held:
            _discard(self._core, event)
            return False
        self._held.append(event)
        return True

    def _arm_timer(self) -> None:
        """Arm the ack timeout of the oldest pending broadcast (one timer at a time)."""
        if self._loop is None or self._sock is None:
            return
        at = self._core.next_timer()
        if self._timer is not None:
            if at is not None and self._timer.when() == at:
                return
            self._timer.cancel()
            self._timer = None
        if at is not None:
            self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        events = self._core.handle_timer(self._now())
        self._held.extend(events)
        if events:
            self._wake()
        self._arm_timer()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._resubscribe_interval)
            try:
                await self.subscribe()
            except GroupMessagingError as exc:
                log.info("cannot renew the subscription of %r yet: %s", self.address, exc)


__all__ = [
    "DEFAULT_ACK_TIMEOUT",
    "DEFAULT_MAX_HELD_EVENTS",
    "DEFAULT_RESUBSCRIBE_INTERVAL",
    "DEFAULT_SEND_TIMEOUT",
    "DEFAULT_WINDOW",
    "AddressInUse",
    "AgentBusy",
    "AgentUnavailable",
    "AsyncServerGroupClient",
    "BroadcastReceived",
    "BroadcastStats",
    "BroadcastUnconfirmed",
    "ClientCore",
    "ClientEvent",
    "GroupMessagingError",
    "InvalidAddress",
    "InvalidBroadcast",
    "NackError",
    "NackReceived",
    "NotificationReceived",
    "ServerGroupClient",
    "StatusReceived",
    "init",
]
