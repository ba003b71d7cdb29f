"""The sender's state machine: rounds of multicast with repair, for many clients.

Theory of operation
-------------------
This follows the round structure of seed 001 (Daisy4nfv's multicast
design): the image is cut into buffers of up to `buffer_packets` packets and
each buffer is one round::

    BufferInfo ──► every client replies Ready
    multicast pass 0 (UDP) ──► Sent ──► each client replies Done or Request
    packets missed by several clients: multicast once more (pass 1, 2, ...)
    the rest: per-client repair over its TCP connection ──► Done
    next buffer ... a buffer of zero packets ends the image ──► Result

and fixes what its implementation got wrong (and, with `overlap`, the
default, keeps the link busy between rounds: the next buffer is announced as
soon as a buffer's first pass begins and multicast right after that pass,
while the buffer before it is confirmed and repaired; its Sent and the rest
of its round wait for their turn; one multicast pass at a time, so shared
re-sends of the older buffer follow the newer one's pass):

- every wait on a client has a deadline (`timeout`); a client that stays
  silent past it, closes its connection or sends garbage is dropped and
  reported, and the round goes on with the others;
- packets that `shared_miss` or more clients lack are multicast again (at
  most `repair_passes` times per buffer) instead of once per client;
- a client that got nothing of a multicast pass is marked *TCP-only*: it is
  served over its connection and does not count for the rate or the
  shared re-sends;
- the rate adapts to the loss the clients report (`rate.RateController`).

The machine does no I/O and reads no clock. Its driver tells it what
happened (`client_connected`, `message_received`, `buffer_loaded`,
`multicast_sent`, `repairs_written`, `client_closed`, `handle_timer`), each
with `now`, and carries out the returned actions in order; `next_timer()`
says when `handle_timer` is due. The driver keeps the image's bytes: the
machine deals in buffer ids, packet indices and counts only.

Invariants: a client is only ever waited on with a deadline; actions for a
client come in the order they must reach it (a `Sent` after the repairs it
follows); exactly one `Finished` ends the machine, after which it ignores
everything.
"""

from __future__ import annotations

from collections import Counter as Tally
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address

from servergroup.multicast.protocol import (
    Abort,
    BufferInfo,
    Counters,
    Done,
    Hello,
    Keepalive,
    Message,
    Ready,
    Request,
    Result,
    Sent,
    Welcome,
    from_ranges,
)
from servergroup.multicast.rate import RateController, RateSample, RateSettings

ClientId = int


@dataclass(frozen=True, slots=True, kw_only=True)
class SenderSettings:
    """What one transfer needs to know; checked by `servergroup.multicast.config`."""

    session: int
    expected_clients: int
    group: IPv4Address
    port: int
    payload_size: int
    buffer_packets: int
    timeout: float = 10.0
    join_timeout: float = 60.0
    rate: RateSettings = field(default_factory=RateSettings)
    repair_passes: int = 2
    shared_miss: int = 2
    #: Overlapping rounds: announce the next buffer once a buffer's first pass
    #: is out, and multicast it while that buffer is confirmed and repaired.
    overlap: bool = True

    @property
    def keepalive_interval(self) -> float:
        return self.timeout / 4


# --- what the driver does -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SendTo:
    """Send `message` on the client's connection (after what was queued for it before)."""

    client: ClientId
    message: Message


@dataclass(frozen=True, slots=True, kw_only=True)
class SendRepairs:
    """Send these packets of the buffer over the client's connection; then `repairs_written`."""

    client: ClientId
    buffer_id: int
    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Multicast:
    """Multicast these packets of the buffer at `rate` bits/s; then `multicast_sent`."""

    buffer_id: int
    pass_number: int
    indices: range | tuple[int, ...]
    rate: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect:
    """Close the client's connection (after sending what is queued)."""

    client: ClientId


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadBuffer:
    """Read the next buffer of the image; then `buffer_loaded`."""

    buffer_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseBuffer:
    """Every client has this buffer: its bytes may go."""

    buffer_id: int


class ClientStatus(Enum):
    FINISHED = "finished"
    FAILED = "failed"
    DROPPED = "dropped"
    MISSING = "missing"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientReport:
    """How one client fared."""

    name: str
    address: str
    status: ClientStatus
    reason: str
    tcp_only: bool
    loss: float
    counters: Counters
    tcp_packets: int
    buffers: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SenderReport:
    """The transfer's outcome: `ok` when every expected client finished and verified."""

    ok: bool
    reason: str
    total_bytes: int
    digest: bytes
    buffers: int
    multicast_packets: int
    multicast_bytes: int
    final_rate: float
    clients: tuple[ClientReport, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    """The transfer is over (the driver closes everything and reports)."""

    report: SenderReport


# --- what the driver logs -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientJoined:
    client: ClientId
    name: str
    address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientDropped:
    client: ClientId
    name: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferCompleted:
    buffer_id: int
    byte_length: int
    passes: int
    repaired: int
    rate: float
    clients: int


Action = SendTo | SendRepairs | Multicast | Disconnect | LoadBuffer | ReleaseBuffer | Finished
Event = ClientJoined | ClientDropped | BufferCompleted
Output = Action | Event


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedBuffer:
    """The driver read a buffer: `packet_count` 0 means the image ended."""

    buffer_id: int
    packet_count: int
    byte_length: int
    total_bytes: int = 0
    digest: bytes = bytes(32)


# --- the machine ----------------------------------------------------------------------


class Phase(Enum):
    JOINING = "joining"
    WAITING_FOR_DATA = "waiting for data"
    READYING = "waiting for ready"
    SENDING = "multicasting"
    COLLECTING = "waiting for requests"
    REPAIRING = "repairing"
    ENDING = "waiting for results"
    FINISHED = "finished"


class _Waiting(Enum):
    NOTHING = "nothing"
    HELLO = "hello"
    READY = "ready"
    REPLY = "done or request"
    DONE = "done"
    RESULT = "result"


class _State(Enum):
    CONNECTED = "connected"
    ACTIVE = "active"
    FINISHED = "finished"
    FAILED = "failed"
    DROPPED = "dropped"


@dataclass(slots=True)
class _Client:
    id: ClientId
    address: str
    name: str = ""
    state: _State = _State.CONNECTED
    waiting: _Waiting = _Waiting.HELLO
    deadline: float | None = None
    last_sent_at: float = 0.0
    done: bool = False
    replied: bool = False
    requested: bool = False
    missing: frozenset[int] = frozenset()
    counters: Counters = field(default_factory=Counters)
    tcp_only: bool = False
    got_multicast: bool = False
    pass0_losses: list[float] = field(default_factory=list)
    # The round announced early (overlapping rounds): its Ready, and its Done
    # when it came before the current round's.
    ahead_ready: bool = False
    ahead_done: Counters | None = None
    tcp_packets: int = 0
    buffers: int = 0
    reason: str = ""

    @property
    def label(self) -> str:
        return self.name or self.address


@dataclass(slots=True)
class _Round:
    info: LoadedBuffer
    pass_number: int = 0
    repaired: int = 0
    worst_loss: float = 0.0
    achieved: float = 0.0
    observed: bool = False
    first_pass_over: bool = False
    started: bool = False
    deferred: tuple[int, ...] = ()


class SenderMachine:
    """One transfer, seen from the sender. Feed it what happens; do what it returns."""

    def __init__(self, settings: SenderSettings) -> None:
        self._settings = settings
        self._rate = RateController(settings.rate)
        self._clients: dict[ClientId, _Client] = {}
        self._phase = Phase.JOINING
        self._join_deadline: float | None = None
        self._round: _Round | None = None
        # The next round, announced while this one is confirmed and repaired.
        self._ahead: _Round | None = None
        # The buffer whose multicast pass is under way (one at a time).
        self._passing: int | None = None
        self._loaded: dict[int, LoadedBuffer] = {}
        self._loading: int | None = None
        self._next_buffer = 0
        self._multicast_packets = 0
        self._multicast_bytes = 0
        self._total_bytes = 0
        self._digest = bytes(32)
        self._report: SenderReport | None = None

    # --- reading ----------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def report(self) -> SenderReport | None:
        return self._report

    @property
    def rate(self) -> float:
        return self._rate.rate

    def active_clients(self) -> list[str]:
        return [c.label for c in self._clients.values() if c.state is _State.ACTIVE]

    def next_timer(self) -> float | None:
        """When `handle_timer` must next be called (None: nothing is timed)."""
        if self._phase is Phase.FINISHED:
            return None
        times = [c.deadline for c in self._clients.values() if c.deadline is not None]
        keepalive = self._settings.keepalive_interval
        times += [c.last_sent_at + keepalive for c in self._active()]
        if self._phase is Phase.JOINING and self._join_deadline is not None:
            times.append(self._join_deadline)
        return min(times) if times else None

    # --- inputs -----------------------------------------------------------------------

    def start(self, now: float) -> list[Output]:
        """Begin: wait for clients, and read the first buffer meanwhile."""
        self._join_deadline = now + self._settings.join_timeout
        return self._load_next()

    def client_connected(self, client: ClientId, address: str, now: float) -> list[Output]:
        if self._phase is Phase.FINISHED:
            return [Disconnect(client=client)]
        c = _Client(id=client, address=address, deadline=now + self._settings.timeout)
        self._clients[client] = c
        return []

    def message_received(self, client: ClientId, message: Message, now: float) -> list[Output]:
        c = self._clients.get(client)
        if c is None or self._phase is Phase.FINISHED:
            return []
        if c.state not in (_State.CONNECTED, _State.ACTIVE):
            return []
        out: list[Output] = []
        match message:
            case Hello(name=name):
                self._on_hello(c, name, now, out)
            case Ready(buffer_id=buffer_id):
                self._on_ready(c, buffer_id, now, out)
            case Request():
                self._on_request(c, message, now, out)
            case Done(buffer_id=buffer_id, counters=counters):
                self._on_done(c, buffer_id, counters, now, out)
            case Result(ok=ok, total_bytes=total, reason=reason):
                self._on_result(c, ok, total, reason, now, out)
            case Abort(reason=reason):
                self._fail(c, _State.FAILED, f"it gave up: {reason}", out, tell=False)
            case _:
                self._unexpected(c, type(message).__name__, out)
        self._advance(now, out)
        return out

    def client_misbehaved(self, client: ClientId, reason: str, now: float) -> list[Output]:
        """The client's connection carried bytes that are not our protocol."""
        c = self._clients.get(client)
        if c is None or self._phase is Phase.FINISHED:
            return []
        out: list[Output] = []
        self._fail(c, _State.DROPPED, f"it sent garbage ({reason})", out, tell=True)
        self._advance(now, out)
        return out

    def client_closed(self, client: ClientId, reason: str, now: float) -> list[Output]:
        c = self._clients.get(client)
        if c is None or self._phase is Phase.FINISHED:
            return []
        out: list[Output] = []
        if c.state is _State.CONNECTED:
            del self._clients[client]
        elif c.state is _State.ACTIVE:
            self._fail(c, _State.DROPPED, f"its connection closed ({reason})", out, tell=False)
        self._advance(now, out)
        return out

    def buffer_loaded(self, info: LoadedBuffer, now: float) -> list[Output]:
        if self._phase is Phase.FINISHED:
            return []
        self._loading = None
        self._loaded[info.buffer_id] = info
        out: list[Output] = []
        if info.packet_count == 0:
            self._total_bytes = info.total_bytes
            self._digest = info.digest
        self._advance(now, out)
        return out

    def multicast_sent(
        self, buffer_id: int, pass_number: int, elapsed: float, now: float
    ) -> list[Output]:
        if self._phase is Phase.FINISHED:
            return []
        if self._passing == buffer_id:
            self._passing = None
        out: list[Output] = []
        a = self._ahead
        r = self._round
        if a is not None and a.info.buffer_id == buffer_id:
            # The next round's first pass is out; its Sent waits for its turn.
            a.first_pass_over = True
            if elapsed > 0:
                a.achieved = a.info.byte_length * 8 / elapsed
        elif self._phase is Phase.SENDING and r is not None and r.info.buffer_id == buffer_id:
            if pass_number == 0:
                r.first_pass_over = True
                if elapsed > 0:
                    r.achieved = r.info.byte_length * 8 / elapsed
            self._pass_over(r, now, out)
        self._advance(now, out)
        return out

    def _pass_over(self, r: _Round, now: float, out: list[Output]) -> None:
        """A pass of the current round is out: tell every client not done yet."""
        self._phase = Phase.COLLECTING
        for c in self._active():
            c.replied = c.done
            if not c.done:
                self._send(c, Sent(buffer_id=r.info.buffer_id, pass_number=r.pass_number), now, out)
                self._wait(c, _Waiting.REPLY, now)

    def repairs_written(self, client: ClientId, buffer_id: int, now: float) -> list[Output]:
        c = self._clients.get(client)
        r = self._round
        if c is None or c.state is not _State.ACTIVE or r is None or r.info.buffer_id != buffer_id:
            return []
        if not c.done and c.waiting is _Waiting.NOTHING and self._phase is Phase.REPAIRING:
            self._wait(c, _Waiting.DONE, now)
        return []

    def handle_timer(self, now: float) -> list[Output]:
        if self._phase is Phase.FINISHED:
            return []
        out: list[Output] = []
        timeout = self._settings.timeout
        for c in list(self._clients.values()):
            if c.deadline is None or c.deadline > now:
                continue
            if c.state is _State.CONNECTED:
                # Never said hello: not a client, just a connection to close.
                del self._clients[c.id]
                out.append(Disconnect(client=c.id))
            else:
                reason = (
                    f"it was silent for {timeout:g} s while we waited for its {c.waiting.value}"
                )
                self._fail(c, _State.DROPPED, reason, out, tell=True)
        if (
            self._phase is Phase.JOINING
            and self._join_deadline is not None
            and now >= self._join_deadline
        ):
            self._join_deadline = None
            self._begin_rounds(now, out)
        for c in self._active():
            if c.last_sent_at + self._settings.keepalive_interval <= now:
                self._send(c, Keepalive(), now, out)
        self._advance(now, out)
        return out

    # --- messages ---------------------------------------------------------------------

    def _on_hello(self, c: _Client, name: str, now: float, out: list[Output]) -> None:
        if c.state is not _State.CONNECTED:
            self._unexpected(c, "a second hello", out)
            return
        joined = len([x for x in self._clients.values() if x.state is not _State.CONNECTED])
        if self._phase is not Phase.JOINING or joined >= self._settings.expected_clients:
            why = (
                "the transfer has already started"
                if self._phase is not Phase.JOINING
                else f"the transfer already has its {self._settings.expected_clients} client(s)"
            )
            out.append(SendTo(client=c.id, message=Abort(reason=why)))
            out.append(Disconnect(client=c.id))
            del self._clients[c.id]
            return
        c.name = name
        c.state = _State.ACTIVE
        s = self._settings
        welcome = Welcome(
            group=s.group,
            port=s.port,
            payload_size=s.payload_size,
            buffer_packets=s.buffer_packets,
            keepalive_interval=s.keepalive_interval,
        )
        self._send(c, welcome, now, out)
        self._wait(c, _Waiting.NOTHING, now)
        out.append(ClientJoined(client=c.id, name=c.name, address=c.address))
        if joined + 1 == self._settings.expected_clients:
            self._begin_rounds(now, out)

    def _on_ready(self, c: _Client, buffer_id: int, now: float, out: list[Output]) -> None:
        r = self._round
        a = self._ahead
        if a is not None and buffer_id == a.info.buffer_id and not c.ahead_ready:
            c.ahead_ready = True
            return
        if self._phase is not Phase.READYING or c.waiting is not _Waiting.READY:
            self._unexpected(c, "ready", out)
        elif r is None or buffer_id != r.info.buffer_id:
            self._unexpected(c, f"ready for buffer {buffer_id}", out)
        else:
            self._wait(c, _Waiting.NOTHING, now)
            c.replied = True

    def _on_request(self, c: _Client, m: Request, now: float, out: list[Output]) -> None:
        r = self._round
        if (
            self._phase is not Phase.COLLECTING
            or c.waiting is not _Waiting.REPLY
            or r is None
            or (m.buffer_id, m.pass_number) != (r.info.buffer_id, r.pass_number)
        ):
            self._unexpected(c, "request", out)
            return
        count = r.info.packet_count
        missing = frozenset(from_ranges(m.missing))
        if not missing or max(missing) >= count or m.received > count:
            self._unexpected(c, "request outside the buffer", out)
            return
        if r.pass_number == 0:
            if m.received == 0:
                c.tcp_only = True
            else:
                c.got_multicast = True
                c.tcp_only = False
                loss = 1.0 - m.received / count
                c.pass0_losses.append(loss)
                r.worst_loss = max(r.worst_loss, loss)
        c.missing = missing
        c.replied = True
        c.requested = True
        self._wait(c, _Waiting.NOTHING, now)

    def _on_done(
        self, c: _Client, buffer_id: int, counters: Counters, now: float, out: list[Output]
    ) -> None:
        r = self._round
        a = self._ahead
        if a is not None and buffer_id == a.info.buffer_id and a.started and c.ahead_ready:
            if c.ahead_done is not None:
                self._unexpected(c, f"done for buffer {buffer_id} twice", out)
            else:
                c.ahead_done = counters  # counted when its round's turn comes
            return
        if (
            self._phase not in (Phase.SENDING, Phase.COLLECTING, Phase.REPAIRING)
            or r is None
            or buffer_id != r.info.buffer_id
            or c.done
        ):
            self._unexpected(c, f"done for buffer {buffer_id}", out)
            return
        self._count_done(c, counters)
        self._wait(c, _Waiting.NOTHING, now)

    def _count_done(self, c: _Client, counters: Counters) -> None:
        if not c.requested:
            # Done before any request: pass 0 brought it everything.
            c.got_multicast = True
            c.tcp_only = False
            c.pass0_losses.append(0.0)
        c.done = True
        c.replied = True
        c.missing = frozenset()
        c.buffers += 1
        c.counters = c.counters.plus(counters)

    def _on_result(
        self, c: _Client, ok: bool, total: int, reason: str, now: float, out: list[Output]
    ) -> None:
        if self._phase is not Phase.ENDING or c.waiting is not _Waiting.RESULT:
            self._unexpected(c, "result", out)
            return
        self._wait(c, _Waiting.NOTHING, now)
        if ok and total == self._total_bytes:
            c.state = _State.FINISHED
            out.append(Disconnect(client=c.id))
        elif ok:
            self._fail(c, _State.FAILED, f"it got {total} bytes of {self._total_bytes}", out, True)
        else:
            self._fail(c, _State.FAILED, reason or "it could not verify the image", out, True)

    def _unexpected(self, c: _Client, what: str, out: list[Output]) -> None:
        state = self._phase.value
        self._fail(c, _State.DROPPED, f"it sent {what} while we were {state}", out, tell=True)

    # --- progress ---------------------------------------------------------------------

    def _begin_rounds(self, now: float, out: list[Output]) -> None:
        if self._phase is not Phase.JOINING:
            return
        if not self._active():
            self._finish("no client connected in time", out)
            return
        self._phase = Phase.WAITING_FOR_DATA

    def _advance(self, now: float, out: list[Output]) -> None:
        """Move on as far as the clients' answers allow (called after every input)."""
        while self._phase is not Phase.FINISHED:
            before = self._phase
            self._step(now, out)
            if self._phase is before:
                return

    def _step(self, now: float, out: list[Output]) -> None:
        active = self._active()
        if self._phase is not Phase.JOINING and not active:
            finished = any(c.state is _State.FINISHED for c in self._clients.values())
            self._finish("" if finished else "every client was dropped or failed", out)
            return
        r = self._round
        match self._phase:
            case Phase.WAITING_FOR_DATA:
                info = self._loaded.pop(self._next_buffer, None)
                if info is not None:
                    self._start_round(info, now, out)
            case Phase.READYING:
                if r is not None and self._passing is None and all(c.replied for c in active):
                    self._phase = Phase.SENDING
                    r.started = True
                    self._multicast(r, range(r.info.packet_count), out)
            case Phase.COLLECTING:
                if r is not None and all(c.done for c in active):
                    self._complete_round(r, now, out)
                elif r is not None and all(c.replied for c in active):
                    self._plan_repairs(r, now, out)
            case Phase.REPAIRING | Phase.SENDING:
                if r is not None and all(c.done for c in active):
                    self._complete_round(r, now, out)
                elif r is not None and r.deferred and self._passing is None:
                    indices, r.deferred = r.deferred, ()
                    self._multicast(r, indices, out)
            case Phase.ENDING:
                if all(c.waiting is not _Waiting.RESULT for c in active):
                    self._finish("", out)
        if self._phase in (Phase.SENDING, Phase.COLLECTING, Phase.REPAIRING):
            self._overlap(now, out)

    def _overlap(self, now: float, out: list[Output]) -> None:
        """Announce the next buffer early, and multicast it once every client is ready.

        The next buffer is announced as soon as the current one's first pass
        begins, so every Ready is in hand when that pass is out; the next pass
        then follows at once (the kernel's queue still keeps the link busy),
        while the current buffer is confirmed and repaired. One pass at a
        time: the current buffer's shared re-sends follow it. Its Sent waits
        until it is the current round.
        """
        r = self._round
        if not self._settings.overlap or r is None or not r.started:
            return
        a = self._ahead
        if a is None:
            info = self._loaded.get(r.info.buffer_id + 1)
            if info is None or info.packet_count == 0:
                return
            del self._loaded[info.buffer_id]
            a = self._ahead = _Round(info=info)
            self._next_buffer = info.buffer_id + 1
            message = _buffer_info(info)
            for c in self._active():
                c.ahead_ready = False
                c.ahead_done = None
                self._send(c, message, now, out)
            out.extend(self._load_next())
        if (
            not a.started
            and self._passing is None
            and self._phase is not Phase.SENDING
            and all(c.ahead_ready for c in self._active())
        ):
            a.started = True
            self._multicast(a, range(a.info.packet_count), out)

    def _start_round(self, info: LoadedBuffer, now: float, out: list[Output]) -> None:
        self._round = _Round(info=info)
        self._next_buffer = info.buffer_id + 1
        message = _buffer_info(info)
        final = info.packet_count == 0
        self._phase = Phase.ENDING if final else Phase.READYING
        for c in self._active():
            c.done = False
            c.replied = False
            c.requested = False
            c.missing = frozenset()
            self._send(c, message, now, out)
            self._wait(c, _Waiting.RESULT if final else _Waiting.READY, now)
        if not final:
            out.extend(self._load_next())

    def _load_next(self) -> list[Output]:
        newest = self._ahead or self._round
        wanted = self._next_buffer if newest is None else newest.info.buffer_id + 1
        if self._loading is not None or wanted in self._loaded:
            return []
        self._loading = wanted
        return [LoadBuffer(buffer_id=wanted)]

    def _multicast(self, r: _Round, indices: range | tuple[int, ...], out: list[Output]) -> None:
        self._passing = r.info.buffer_id
        self._multicast_packets += len(indices)
        self._multicast_bytes += len(indices) * self._settings.payload_size
        out.append(
            Multicast(
                buffer_id=r.info.buffer_id,
                pass_number=r.pass_number,
                indices=indices,
                rate=self._rate.rate,
            )
        )

    def _observe_rate(self, r: _Round) -> None:
        """Once per buffer, after its first pass: feed the worst loss to the rate controller."""
        if not r.observed and r.achieved > 0:
            r.observed = True
            self._rate.observe(
                RateSample(rate=self._rate.rate, achieved=r.achieved, loss=r.worst_loss)
            )

    def _plan_repairs(self, r: _Round, now: float, out: list[Output]) -> None:
        self._observe_rate(r)
        waiting = [c for c in self._active() if not c.done]
        tally: Tally[int] = Tally()
        for c in waiting:
            if not c.tcp_only:
                tally.update(c.missing)
        shared = frozenset(i for i, n in tally.items() if n >= self._settings.shared_miss)
        again = bool(shared) and r.pass_number < self._settings.repair_passes
        for c in waiting:
            own = c.missing - shared if again else c.missing
            if own:
                indices = tuple(sorted(own))
                out.append(SendRepairs(client=c.id, buffer_id=r.info.buffer_id, indices=indices))
                c.tcp_packets += len(indices)
                r.repaired += len(indices)
                c.last_sent_at = now
            c.replied = False
            self._wait(c, _Waiting.NOTHING, now)
        if again:
            r.pass_number += 1
            self._phase = Phase.SENDING
            if self._passing is None:
                self._multicast(r, tuple(sorted(shared)), out)
            else:
                # The next buffer's first pass is under way: this one follows it
                # (one pass at a time).
                r.deferred = tuple(sorted(shared))
        else:
            self._phase = Phase.REPAIRING

    def _complete_round(self, r: _Round, now: float, out: list[Output]) -> None:
        self._observe_rate(r)
        out.append(ReleaseBuffer(buffer_id=r.info.buffer_id))
        out.append(
            BufferCompleted(
                buffer_id=r.info.buffer_id,
                byte_length=r.info.byte_length,
                passes=r.pass_number + 1,
                repaired=r.repaired,
                rate=self._rate.rate,
                clients=len(self._active()),
            )
        )
        self._round = None
        self._phase = Phase.WAITING_FOR_DATA
        a, self._ahead = self._ahead, None
        if a is not None:
            self._promote(a, now, out)
        out.extend(self._load_next())

    def _promote(self, a: _Round, now: float, out: list[Output]) -> None:
        """The round announced early becomes the current one, where its clients left it."""
        self._round = a
        for c in self._active():
            c.done = False
            c.replied = c.ahead_ready
            c.requested = False
            c.missing = frozenset()
            if c.ahead_done is not None:
                self._count_done(c, c.ahead_done)
            c.ahead_ready = False
            c.ahead_done = None
        if not a.started:
            self._phase = Phase.READYING
            for c in self._active():
                if not c.replied:
                    self._wait(c, _Waiting.READY, now)
        elif not a.first_pass_over:
            self._phase = Phase.SENDING  # multicast_sent moves it on
        else:
            self._pass_over(a, now, out)

    # --- clients ----------------------------------------------------------------------

    def _active(self) -> list[_Client]:
        return [c for c in self._clients.values() if c.state is _State.ACTIVE]

    def _send(self, c: _Client, message: Message, now: float, out: list[Output]) -> None:
        out.append(SendTo(client=c.id, message=message))
        c.last_sent_at = now

    def _wait(self, c: _Client, what: _Waiting, now: float) -> None:
        c.waiting = what
        c.deadline = None if what is _Waiting.NOTHING else now + self._settings.timeout

    def _fail(self, c: _Client, state: _State, reason: str, out: list[Output], tell: bool) -> None:
        if c.state is _State.CONNECTED:
            del self._clients[c.id]
            if tell:
                out.append(SendTo(client=c.id, message=Abort(reason=f"refused: {reason}")))
            out.append(Disconnect(client=c.id))
            return
        if c.state is not _State.ACTIVE:
            return
        c.state = state
        c.reason = reason
        c.deadline = None
        c.waiting = _Waiting.NOTHING
        if tell:
            out.append(
                SendTo(client=c.id, message=Abort(reason=f"the sender dropped you: {reason}"))
            )
        out.append(Disconnect(client=c.id))
        out.append(ClientDropped(client=c.id, name=c.label, reason=reason))

    def _finish(self, reason: str, out: list[Output]) -> None:
        for c in self._clients.values():
            if c.state is _State.ACTIVE:
                c.state = _State.FAILED
                c.reason = c.reason or "the transfer ended before it finished"
            if c.state in (_State.ACTIVE, _State.CONNECTED, _State.FAILED):
                out.append(Disconnect(client=c.id))
        self._phase = Phase.FINISHED
        rows = [
            self._client_report(c)
            for c in self._clients.values()
            if c.state is not _State.CONNECTED
        ]
        missing = self._settings.expected_clients - len(rows)
        rows += [
            ClientReport(
                name="",
                address="",
                status=ClientStatus.MISSING,
                reason="it never connected",
                tcp_only=False,
                loss=0.0,
                counters=Counters(),
                tcp_packets=0,
                buffers=0,
            )
            for _ in range(max(0, missing))
        ]
        everyone = all(row.status is ClientStatus.FINISHED for row in rows) and bool(rows)
        if not reason and not everyone:
            failed = sum(row.status is not ClientStatus.FINISHED for row in rows)
            reason = f"{failed} of {len(rows)} client(s) did not finish"
        self._report = SenderReport(
            ok=everyone,
            reason=reason,
            total_bytes=self._total_bytes,
            digest=self._digest,
            buffers=self._next_buffer,
            multicast_packets=self._multicast_packets,
            multicast_bytes=self._multicast_bytes,
            final_rate=self._rate.rate,
            clients=tuple(rows),
        )
        out.append(Finished(report=self._report))

    def _client_report(self, c: _Client) -> ClientReport:
        status = {
            _State.FINISHED: ClientStatus.FINISHED,
            _State.FAILED: ClientStatus.FAILED,
            _State.DROPPED: ClientStatus.DROPPED,
        }.get(c.state, ClientStatus.FAILED)
        losses = c.pass0_losses
        return ClientReport(
            name=c.name,
            address=c.address,
            status=status,
            reason=c.reason,
            tcp_only=c.tcp_only and not c.got_multicast,
            loss=sum(losses) / len(losses) if losses else (1.0 if c.tcp_only else 0.0),
            counters=c.counters,
            tcp_packets=c.tcp_packets,
            buffers=c.buffers,
        )


def _buffer_info(info: LoadedBuffer) -> BufferInfo:
    return BufferInfo(
        buffer_id=info.buffer_id,
        packet_count=info.packet_count,
        byte_length=info.byte_length,
        total_bytes=info.total_bytes,
        digest=info.digest,
    )
