"""The receiver's state machine: fill each buffer from multicast and repairs, in order.

Theory of operation
-------------------
The receiver's half of the rounds of seed 001 (see `sending`)::

    connect ─► Hello ─► Welcome (group, port, packet size): join the group
    BufferInfo ─► room for the buffer ─► Ready   (the next one may come early)
    data packets (multicast, or repairs on the connection) fill the buffer
    Sent ─► Request(the missing ranges) ... until the buffer is whole ─► Done
    BufferInfo with zero packets ─► every buffer written ─► BLAKE3 digest checked ─► Result

Rounds overlap: the sender announces the next buffer while this one is
still being received (its pass under way, or its repairs), and multicasts it
as soon as this one's pass is out. So two buffers may be open at once: the
older gets its repairs (and any shared re-send) while multicast fills the
newer. Either may be whole first; `Done` goes out for each the moment it is
whole, but buffers are delivered in order (a newer one whole first waits for
the older). Never more than two are open, and the end (an empty buffer) is
announced only when none is.

A buffer is handed to the driver (`Deliver`) the moment it is whole and
every buffer before it was, and `Done` goes out at once; the driver writes
it in the background and says `delivered`. At most two buffers wait to be
written: `Ready` for a new buffer waits while two are still being written.
A written buffer's memory is kept and filled again by a later buffer (fresh
memory would be zeroed and faulted in page by page, for every buffer). The
digest of the whole image is the driver's to compute as it writes; the machine asks for the check
(`Verify`) once the last buffer is written and turns the answer into the
`Result` the sender waits for.

Multicast datagrams take a fast path (`datagrams_received`, one call per
receive, which may hold a run the kernel coalesced): a datagram of the buffer
being filled is recognised by a few integer comparisons of its header, its
CRC-32C (and tag, with a key) is checked where it lies and its payload
copied once, into its place in the buffer; no packet object is made.
Anything else goes the general way (`datagram_received`, through
`check_data`), which names what is wrong; the two agree on every input (a
property test holds them to it). The driver's usual path goes further:
`landing` says where the next datagrams belong, the driver has the kernel
put each payload straight there, and `datagrams_landed` checks them where
they landed (moving the few that landed one slot off after a loss); it too
agrees with the general path on every input.

Garbage never stops the receiver: a data packet that fails to decode, comes
from another session, or belongs to no buffer being filled is counted and
dropped. Control messages come only from the sender's TCP connection; one
that breaks the protocol ends the transfer, as does a sender silent for
`timeout` (data packets count as signs of life) or a closed connection.

The machine does no I/O and reads no clock: the driver calls it with `now`
and carries out the actions in order; `next_timer()` says when to call
`handle_timer`. Invariants: buffers are delivered in order, each exactly
once, and only whole; exactly one `Close` ends the machine.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address

from servergroup.multicast.protocol import (
    DATA_HEADER_SIZE,
    FLAG_AUTH,
    MAGIC,
    TAG_SIZE,
    VERSION,
    Abort,
    Auth,
    BufferInfo,
    Counters,
    DataPacket,
    Done,
    Fault,
    Hello,
    Keepalive,
    Kind,
    Message,
    ProtocolError,
    Ready,
    Request,
    Result,
    Sent,
    Welcome,
    check_data,
    crc32c,
)

#: Buffers handed over but not yet written, beyond which `Ready` waits.
MAX_UNWRITTEN = 2

#: A data packet's header as the fast path reads it: magic, version and kind
#: as one number, session and buffer id as one, index, length, flags, crc.
_FAST_UNPACK = struct.Struct("!IQIHHI").unpack_from
_FIRST = int.from_bytes(MAGIC + bytes((VERSION, Kind.DATA)), "big")
_DATA_CRC_AT = DATA_HEADER_SIZE - 4
_crc32c = crc32c
#: A data header as six 32-bit words: magic, version and kind; session; buffer
#: id; index; length and flags; crc. The bulk path compares them column by column.
_WORDS = DATA_HEADER_SIZE // 4
_SWAP = sys.byteorder == "little"  # the words are big-endian on the wire


def _word(value: int, size: int = 4) -> bytes:
    return value.to_bytes(size, "big")


def _bulk_header_views(headers: memoryview, count: int) -> list[memoryview]:
    """The part of each header in `headers` its CRC-32C covers (all but the crc field)."""
    head = DATA_HEADER_SIZE
    return [headers[j * head : j * head + _DATA_CRC_AT] for j in range(count)]


#: Allocates `n` bytes of writable memory for a buffer (the driver's choice of pages).
Allocate = Callable[[int], memoryview]


def zeroed(size: int) -> memoryview:
    """The default buffer memory: a zeroed bytearray."""
    return memoryview(bytearray(size))


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiverSettings:
    name: str
    timeout: float = 10.0
    auth: Auth | None = None
    #: Where buffers live; the machine keeps and refills the few it allocates.
    memory: Allocate = zeroed


# --- what the driver does -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    message: Message


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinGroup:
    """Open the multicast socket: join `group`, receive on `port`."""

    group: IPv4Address
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Deliver:
    """Write this buffer after the ones before it (and hash it); then `delivered`.

    `data` stays untouched until `delivered` (or the end): then its memory is reused.
    """

    buffer_id: int
    data: memoryview


@dataclass(frozen=True, slots=True, kw_only=True)
class Verify:
    """Everything is written: compare length and digest; then `verified`."""

    total_bytes: int
    digest: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiverReport:
    ok: bool
    reason: str
    total_bytes: int
    buffers: int
    counters: Counters
    tcp_only: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Close:
    """The transfer is over for this receiver: close everything; `report.ok` says how."""

    report: ReceiverReport


@dataclass(frozen=True, slots=True, eq=False)
class Landing:
    """Where the driver should have the kernel put the next datagrams (`landing`).

    Datagram j of the next receive lands in three pieces, as one scatter
    receive puts it: its first DATA_HEADER_SIZE bytes at `j *
    DATA_HEADER_SIZE` of the driver's header area, the next `slot_size`
    bytes straight into `memory` at `slots[j] * slot_size` (where its
    payload belongs if it is the packet expected there), the rest in the
    driver's tail area at `j * tail_size`. Hand the result to
    `datagrams_landed` before anything else is fed to the machine.
    """

    memory: memoryview
    slots: Sequence[int]
    slot_size: int
    buffer: object  # the buffer being filled, as the machine knows it


# --- what the driver logs -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Joined:
    session: int
    group: IPv4Address
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferReceived:
    buffer_id: int
    byte_length: int
    counters: Counters


Action = Send | JoinGroup | Deliver | Verify | Close
Event = Joined | BufferReceived
Output = Action | Event


class Phase(Enum):
    CONNECTING = "connecting"
    JOINING = "waiting for the welcome"
    IDLE = "waiting for a buffer"
    RECEIVING = "receiving"
    VERIFYING = "verifying"
    CLOSED = "closed"


class _Tally:
    """Mutable counters of one buffer (or of the whole transfer)."""

    __slots__ = ("corrupt", "duplicate", "foreign", "forged", "multicast", "repaired", "stale")

    def __init__(self) -> None:
        self.multicast = 0
        self.repaired = 0
        self.duplicate = 0
        self.corrupt = 0
        self.foreign = 0
        self.forged = 0
        self.stale = 0

    def freeze(self) -> Counters:
        return Counters(
            multicast=self.multicast,
            repaired=self.repaired,
            duplicate=self.duplicate,
            corrupt=self.corrupt,
            foreign=self.foreign,
            forged=self.forged,
            stale=self.stale,
        )


class _Incoming:
    __slots__ = (
        "byte_length",
        "count",
        "cursor",
        "data",
        "flags",
        "full_count",
        "full_size",
        "have",
        "have_count",
        "id",
        "indices",
        "key",
        "last_length",
        "ready",
        "slot_views",
        "tag_size",
        "tally",
        "words",
    )

    def __init__(
        self,
        info: BufferInfo,
        memory: tuple[memoryview, list[memoryview]],
        session: int,
        payload_size: int,
        auth: bool,
    ) -> None:
        self.id = info.buffer_id
        self.count = info.packet_count
        self.byte_length = info.byte_length
        # What the fast path compares: session and buffer id as one number (as
        # `_FAST_UNPACK` reads them) and the flags of a datagram of this buffer.
        self.key = session << 32 | info.buffer_id
        self.flags = FLAG_AUTH if auth else 0
        self.tag_size = TAG_SIZE if auth else 0
        self.full_size = DATA_HEADER_SIZE + payload_size + self.tag_size
        self.last_length = info.byte_length - (info.packet_count - 1) * payload_size
        # At least byte_length long: reused memory may be longer.
        self.data, self.slot_views = memory
        # For the bulk path: the packets that fill their slot (all but a short
        # last one), the header words every datagram of the buffer shares
        # (magic, version and kind; session; buffer id; length and flags of a
        # whole packet), and the packets' indices as big-endian words (made
        # when first needed).
        self.full_count = info.packet_count - (self.last_length != payload_size)
        self.words = (
            MAGIC + bytes((VERSION, Kind.DATA)),
            _word(session),
            _word(info.buffer_id),
            _word(payload_size, 2) + _word(self.flags, 2),
        )
        self.indices = b""
        self.have = bytearray(info.packet_count)
        self.have_count = 0
        # Where the next multicast datagram is expected: after the last one taken.
        self.cursor = 0
        self.ready = False
        self.tally = _Tally()


_NOTHING: Sequence[Output] = ()


class ReceiverMachine:
    """One transfer, seen from a receiver. Feed it what happens; do what it returns."""

    def __init__(self, settings: ReceiverSettings) -> None:
        self._settings = settings
        self._auth = settings.auth
        self._phase = Phase.CONNECTING
        self._session: int | None = None
        self._payload_size = 0
        self._heard_at = 0.0
        #: How long the sender may be silent: our timeout, but at least two of the
        #: keepalive intervals its welcome announces (a receiver given a shorter
        #: --timeout than the sender's would give up while the sender waits for others).
        self._silence = settings.timeout
        # The oldest buffer not yet whole, and the next one when the sender
        # announced it early (overlapping rounds): multicast fills the newest
        # while the older one gets its repairs.
        self._incoming: _Incoming | None = None
        self._ahead: _Incoming | None = None
        self._next_id = 0
        # Handed over, not yet written: (buffer id, its memory), oldest first.
        # A buffer's memory goes with the views of its slots (made when first
        # needed, then kept as long as the memory).
        self._unwritten: list[tuple[int, tuple[memoryview, list[memoryview]]]] = []
        # Written buffers' memory, to be filled again.
        self._spare: list[tuple[memoryview, list[memoryview]]] = []
        # The driver's header area as the bulk path reads it (see `_bulk_header_views`).
        self._header_area: object = None
        self._header_views: list[memoryview] = []
        self._delivered_bytes = 0
        self._final: BufferInfo | None = None
        self._verifying = False
        self._total = _Tally()
        self._buffers = 0
        self._report: ReceiverReport | None = None

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def report(self) -> ReceiverReport | None:
        return self._report

    @property
    def datagram_size(self) -> int:
        """Bytes of a whole data datagram of this session (0 before the welcome)."""
        if self._session is None:
            return 0
        return DATA_HEADER_SIZE + self._payload_size + (TAG_SIZE if self._auth else 0)

    @property
    def received_bytes(self) -> int:
        """Bytes of whole buffers so far (for progress displays)."""
        return self._delivered_bytes

    def counters(self) -> Counters:
        """Everything counted so far, the current buffer included."""
        total = self._total.freeze()
        for b in self._open():
            total = total.plus(b.tally.freeze())
        return total

    def next_timer(self) -> float | None:
        if self._phase is Phase.CLOSED:
            return None
        return self._heard_at + self._silence

    # --- inputs -----------------------------------------------------------------------

    def connected(self, now: float) -> list[Output]:
        self._phase = Phase.JOINING
        self._heard_at = now
        return [Send(message=Hello(name=self._settings.name))]

    def message_received(self, session: int, message: Message, now: float) -> list[Output]:
        if self._phase is Phase.CLOSED:
            return []
        out: list[Output] = []
        if self._session is not None and session != self._session:
            self._fail(f"the sender switched to session {session:#x}", out, tell=True)
            return out
        self._heard_at = now
        match message:
            case Welcome():
                self._on_welcome(session, message, out)
            case BufferInfo():
                self._on_buffer_info(message, out)
            case Sent(buffer_id=buffer_id, pass_number=pass_number):
                self._on_sent(buffer_id, pass_number, out)
            case Keepalive():
                pass
            case Abort(reason=reason):
                self._fail(f"the sender ended the transfer: {reason}", out, tell=False)
            case _:
                self._fail(f"the sender sent {type(message).__name__}", out, tell=True)
        return out

    def datagram_received(
        self, data: bytes | bytearray | memoryview, now: float
    ) -> Sequence[Output]:
        """One datagram from the multicast socket (anything may arrive there).

        The general path, which `datagrams_received` (the driver's) must agree
        with: the packet is checked in place by `check_data` and its payload
        copied into the buffer.
        """
        view = data if isinstance(data, memoryview) else memoryview(data)
        return self._datagrams_slowly(view, len(view), now)

    def datagrams_received(self, data: memoryview, segment: int, now: float) -> Sequence[Output]:
        """One receive from the multicast socket: datagrams of `segment` bytes back to back.

        The hot path of the receiver. A receive holds one datagram, or a run
        the kernel coalesced (UDP receive offload): all `segment` long but the
        last. A datagram of the buffer being filled, of the expected size, is
        checked with a few integer comparisons, its CRC-32C (and tag, with a
        key) and copied into its place; anything else takes the general path
        of `check_data`, which says what is wrong with it.
        """
        b = self._target()
        size = len(data)
        if b is None or size == 0:
            return self._datagrams_slowly(data, segment, now)
        payload_size = self._payload_size
        auth = self._auth
        full = b.full_size
        key = b.key
        flags = b.flags
        last_index = b.count - 1
        last_length = b.last_length
        have = b.have
        memory = b.data
        taken = 0
        heard = False
        out: Sequence[Output] = _NOTHING
        start = 0
        while start < size:
            end = min(start + segment, size)
            d = data[start:end]
            start = end
            fields = _FAST_UNPACK(d) if len(d) >= DATA_HEADER_SIZE else None
            if fields is None or fields[0] != _FIRST or fields[1] != key or fields[4] != flags:
                b.tally.multicast += taken
                taken = 0
                out = _join(out, self._datagrams_slowly(d, len(d), now))
                if self._target() is not b:
                    out = _join(out, self._datagrams_slowly(data[start:], segment, now))
                    break
                continue
            _, _, index, length, _, crc = fields
            payload_end = DATA_HEADER_SIZE + length
            if (
                index > last_index
                or length != (payload_size if index < last_index else last_length)
                or len(d) != (full if index < last_index else payload_end + b.tag_size)
            ):
                b.tally.multicast += taken
                taken = 0
                out = _join(out, self._datagrams_slowly(d, len(d), now))
                if self._target() is not b:
                    out = _join(out, self._datagrams_slowly(data[start:], segment, now))
                    break
                continue
            payload = d[DATA_HEADER_SIZE:payload_end]
            if _crc32c(payload, _crc32c(d[:_DATA_CRC_AT])) != crc:
                b.tally.corrupt += 1
                continue
            if auth is not None and not auth.check(d[payload_end:], d[:DATA_HEADER_SIZE], payload):
                b.tally.forged += 1
                continue
            heard = True
            if have[index]:
                b.tally.duplicate += 1
                continue
            at = index * payload_size
            memory[at : at + length] = payload
            have[index] = 1
            b.cursor = index + 1
            taken += 1
            b.have_count += 1
            if b.have_count == b.count:
                b.tally.multicast += taken
                taken = 0
                out = _join(out, self._complete(b))
                out = _join(out, self._datagrams_slowly(data[start:], segment, now))
                break
        b.tally.multicast += taken
        if heard:
            self._heard_at = now
        return out

    def _datagrams_slowly(self, data: memoryview, segment: int, now: float) -> Sequence[Output]:
        """The general path, one datagram at a time: whatever arrived, counted right."""
        out: Sequence[Output] = _NOTHING
        size = len(data)
        for start in range(0, size, segment) if size else ():
            d = data[start : min(start + segment, size)]
            try:
                session, buffer_id, index, length = check_data(d, self._auth)
            except ProtocolError as exc:
                self._count_fault(exc.fault)
                continue
            payload = d[DATA_HEADER_SIZE : DATA_HEADER_SIZE + length]
            out = _join(out, self._take(session, buffer_id, index, payload, now, True))
        return out

    # --- datagrams received in place --------------------------------------------------

    def landing(self, limit: int) -> Landing | None:
        """Where the next (at most `limit`) datagrams should land; None: no buffer is being filled.

        The slots are missing packets of the buffer being filled, from the one
        after the last datagram taken (wrapping to the start): where the next
        datagrams belong if they come in order, as they do unless one is lost.
        A slot never holds a packet already taken, so a datagram that lands in
        the wrong one costs a copy, never data.
        """
        b = self._target()
        if b is None or limit <= 0:
            return None
        have = b.have
        n = min(limit, b.count - b.have_count)
        c = b.cursor
        slots: Sequence[int]
        if c + n <= b.count and have.find(1, c, c + n) < 0:
            slots = range(c, c + n)
        else:
            found: list[int] = []
            for start, stop in ((c, b.count), (0, c)):
                at = have.find(0, start, stop)
                while at >= 0 and len(found) < n:
                    found.append(at)
                    at = have.find(0, at + 1, stop)
            slots = found
        return Landing(memory=b.data, slots=slots, slot_size=self._payload_size, buffer=b)

    def datagrams_landed(
        self,
        landing: Landing,
        lengths: Sequence[int],
        headers: bytes | bytearray | memoryview,
        tails: bytes | bytearray | memoryview,
        tail_size: int,
        now: float,
    ) -> Sequence[Output]:
        """`len(lengths)` datagrams received where `landing` said, each `lengths[j]` bytes long.

        The hot path of the receiver: a datagram of the buffer being filled is
        checked where it landed (CRC-32C, and its tag with a key) and, if it
        landed in its own slot, costs nothing more; one that landed in
        another packet's slot (after a loss) is moved to its own. Anything
        else is put together and takes the general path. Each datagram's room
        (header, slot and `tail_size`) must hold any datagram whole, and
        there are at most as many datagrams as the landing has slots.
        """
        b = self._target()
        count = len(lengths)
        if count == 0:
            return _NOTHING
        head = DATA_HEADER_SIZE
        size = landing.slot_size
        memory = landing.memory
        header_area = headers
        headers = memoryview(headers)
        tails = memoryview(tails)
        slots = landing.slots

        def whole(j: int) -> bytes:
            n = lengths[j]
            at = slots[j] * size
            return b"".join(
                (
                    headers[j * head : j * head + min(n, head)],
                    memory[at : at + min(max(n - head, 0), size)],
                    tails[j * tail_size : j * tail_size + max(n - head - size, 0)],
                )
            )

        if b is not landing.buffer or b is None or max(lengths) > b.full_size:
            # The buffer changed under the landing, or the kernel coalesced runs
            # (UDP receive offload): put every datagram together, then one by one.
            pieces = [whole(j) for j in range(count)]
            out: Sequence[Output] = _NOTHING
            for piece in pieces:
                view = memoryview(piece)
                full = self.datagram_size
                out = _join(out, self.datagrams_received(view, full if full else len(view), now))
            return out
        auth = self._auth
        if auth is None and lengths.count(b.full_size) == count:
            bulk = self._landed_in_bulk(b, slots, count, headers, header_area, now)
            if bulk is not None:
                return bulk
        key = b.key
        flags = b.flags
        full = b.full_size
        last_index = b.count - 1
        last_length = b.last_length
        tag_size = b.tag_size
        have = b.have
        tally = b.tally
        taken = 0
        heard = False
        moves: list[tuple[int, int, int]] = []  # (from slot, to index, length)
        rest: list[bytes] = []  # put together, for the general path
        out = _NOTHING
        last_full = head + last_length + tag_size
        # Counted here and added to the buffer at the end (no other path takes
        # a packet of this buffer meanwhile: what is not one of its packets,
        # the general path only counts).
        remaining = b.count - b.have_count
        cursor = b.cursor
        for j, (n, s) in enumerate(zip(lengths, slots, strict=False)):
            o = j * head
            if n >= head:
                first, k, index, length, fl, crc = _FAST_UNPACK(headers, o)
                ours = (
                    first == _FIRST
                    and k == key
                    and fl == flags
                    and (
                        (index < last_index and length == size and n == full)
                        or (index == last_index and length == last_length and n == last_full)
                    )
                )
            else:
                ours = False
            if not ours:
                # Not a packet of this buffer: counted where the general path counts it
                # (it never takes one, so the slots stay as they are).
                out = _join(out, self._datagrams_slowly(memoryview(whole(j)), n, now))
                if self._target() is not b:
                    # It was the first of the next buffer, which multicast now fills:
                    # the rest count where the general path counts them (as there).
                    rest = [whole(k) for k in range(j + 1, count)]
                    break
                continue
            at = s * size
            payload = memory[at : at + length]
            if _crc32c(payload, _crc32c(headers[o : o + _DATA_CRC_AT])) != crc:
                tally.corrupt += 1
                continue
            if auth is not None:
                if length == size:
                    tag: bytes | memoryview = tails[j * tail_size : j * tail_size + TAG_SIZE]
                else:
                    tag = bytes(memory[at + length : at + min(size, length + TAG_SIZE)]) + bytes(
                        tails[j * tail_size : j * tail_size + max(0, length + TAG_SIZE - size)]
                    )
                if not auth.check(tag, headers[o : o + head], payload):
                    tally.forged += 1
                    continue
            heard = True
            if have[index]:
                tally.duplicate += 1
                continue
            have[index] = 1
            cursor = index + 1
            taken += 1
            if index != s:
                moves.append((s, index, length))
            if taken == remaining:
                # Whole. This was the last datagram of the receive: each one fills
                # at most one of the slots, and there are no more slots than missing
                # packets.
                break
        _move(memory, size, moves)
        tally.multicast += taken
        b.have_count += taken
        b.cursor = cursor
        if heard:
            self._heard_at = now
        if b.have_count == b.count:
            out = _join(out, self._complete(b))
        for piece in rest:
            out = _join(out, self._datagrams_slowly(memoryview(piece), len(piece), now))
        return out

    def _landed_in_bulk(
        self,
        b: _Incoming,
        slots: Sequence[int],
        count: int,
        headers: memoryview,
        header_area: object,
        now: float,
    ) -> Sequence[Output] | None:
        """Take `count` whole datagrams of `b` at once, if each is new and intact; else None.

        The common case of `datagrams_landed` (no key, whole packets of the
        buffer being filled, in increasing order): the same checks as one
        datagram at a time, column by column over the header area. Each of
        the header's words but the index and crc must be the buffer's, every
        index a missing packet that fills its slot, and each datagram's
        CRC-32C (over its header and its payload where it landed) the one it
        carries. The checks read the memory only: anything else (a foreign,
        stale, corrupt or repeated datagram, the short last packet, indices
        out of order) returns None with nothing changed, and the caller takes
        the datagrams one by one. After a loss the datagrams that landed one
        slot off are moved to their own, as there.
        """
        words = headers[: count * DATA_HEADER_SIZE].cast("I")
        magic, session, buffer_id, length_flags = b.words
        if (
            words[0::_WORDS].tobytes() != magic * count
            or words[1::_WORDS].tobytes() != session * count
            or words[2::_WORDS].tobytes() != buffer_id * count
            or words[4::_WORDS].tobytes() != length_flags * count
        ):
            return None
        if not b.indices:
            indices = array("I", range(b.count))
            if _SWAP:
                indices.byteswap()
            b.indices = indices.tobytes()
        index_words = words[3::_WORDS].tobytes()
        have = b.have
        first = slots[0]
        in_place = (
            isinstance(slots, range)
            and index_words == b.indices[4 * first : 4 * (first + count)]
            and first + count <= b.full_count
        )
        if in_place:
            # Each in the slot it belongs to: the common case.
            if have.find(1, first, first + count) >= 0:
                return None
            last = first + count - 1
        else:
            found = struct.unpack(f">{count}I", index_words)
            last = found[-1]
            if (
                last >= b.full_count
                or (count > 1 and not all(map(int.__lt__, found, found[1:])))
                or any(map(have.__getitem__, found))
            ):
                return None
        views = b.slot_views
        if not views:
            size = self._payload_size
            memory = b.data
            views.extend(memory[at : at + size] for at in range(0, len(memory) - size + 1, size))
        if header_area is not self._header_area or len(self._header_views) < count:
            self._header_area = header_area
            self._header_views = _bulk_header_views(
                headers, max(count, len(headers) // DATA_HEADER_SIZE)
            )
        payloads = (
            views[first : first + count]
            if in_place
            else list(map(views.__getitem__, slots[:count]))
        )
        sums = array("I", map(_crc32c, payloads, map(_crc32c, self._header_views[:count])))
        if _SWAP:
            sums.byteswap()
        if sums.tobytes() != words[5::_WORDS].tobytes():
            return None
        # Every one is taken.
        if in_place:
            have[first : last + 1] = b"\x01" * count
        else:
            for index in found:
                have[index] = 1
            size = self._payload_size
            _move(
                b.data, size, [(s, i, size) for s, i in zip(slots, found, strict=False) if s != i]
            )
        b.have_count += count
        b.tally.multicast += count
        b.cursor = last + 1
        self._heard_at = now
        if b.have_count == b.count:
            return self._complete(b)
        return _NOTHING

    def repair_received(self, packet: DataPacket, now: float) -> Sequence[Output]:
        """A data packet that came on the connection (already decoded and checked)."""
        if self._phase is Phase.CLOSED:
            return _NOTHING
        if packet.session != self._session:
            out: list[Output] = []
            self._fail("the sender sent a repair of another session", out, tell=True)
            return out
        return self._take(
            packet.session, packet.buffer_id, packet.index, packet.payload, now, False
        )

    def protocol_error(self, error: ProtocolError, now: float) -> list[Output]:
        """The connection carried bytes that are not our protocol."""
        if self._phase is Phase.CLOSED:
            return []
        out: list[Output] = []
        if error.fault is Fault.KEY_NEEDED:
            reason = "the sender authenticates its packets: give the same --key-file"
        elif error.fault in (Fault.FORGED, Fault.UNAUTHENTICATED) and self._session is None:
            reason = "the sender's messages fail authentication: is the key the same on both ends?"
        elif error.fault is Fault.VERSION:
            reason = f"the sender speaks another protocol version ({error})"
        else:
            reason = f"the sender's connection carried a {error}"
        self._fail(reason, out, tell=True)
        return out

    def connection_closed(self, reason: str, now: float) -> list[Output]:
        if self._phase is Phase.CLOSED:
            return []
        out: list[Output] = []
        self._fail(f"the sender closed the connection ({reason})", out, tell=False)
        return out

    def delivered(self, buffer_id: int, byte_length: int, now: float) -> list[Output]:
        if self._phase is Phase.CLOSED:
            return []
        if self._unwritten and self._unwritten[0][0] == buffer_id:
            _, memory = self._unwritten.pop(0)
            self._spare.append(memory)
        self._delivered_bytes += byte_length
        out: list[Output] = []
        for b in (self._incoming, self._ahead):
            if b is not None and not b.ready and len(self._unwritten) < MAX_UNWRITTEN:
                b.ready = True
                out.append(Send(message=Ready(buffer_id=b.id)))
        self._maybe_verify(out)
        return out

    def delivery_failed(self, reason: str, now: float) -> list[Output]:
        if self._phase is Phase.CLOSED:
            return []
        out: list[Output] = []
        self._fail(reason, out, tell=True)
        return out

    def verified(self, ok: bool, reason: str, now: float) -> list[Output]:
        if self._phase is not Phase.VERIFYING or self._final is None:
            return []
        total = self._final.total_bytes
        out: list[Output] = [Send(message=Result(ok=ok, total_bytes=total, reason=reason))]
        self._close(ok, reason, out)
        return out

    def handle_timer(self, now: float) -> list[Output]:
        if self._phase is Phase.CLOSED or now < self._heard_at + self._silence:
            return []
        out: list[Output] = []
        timeout = self._silence
        if self._phase is Phase.JOINING:
            reason = f"the sender sent no welcome within {timeout:g} s"
        else:
            reason = f"the sender sent nothing for {timeout:g} s"
        self._fail(reason, out, tell=True)
        return out

    # --- messages ---------------------------------------------------------------------

    def _on_welcome(self, session: int, m: Welcome, out: list[Output]) -> None:
        if self._phase is not Phase.JOINING:
            self._fail("the sender welcomed us twice", out, tell=True)
            return
        self._session = session
        self._payload_size = m.payload_size
        self._silence = max(self._settings.timeout, 2 * m.keepalive_interval)
        self._phase = Phase.IDLE
        out.append(JoinGroup(group=m.group, port=m.port))
        out.append(Joined(session=session, group=m.group, port=m.port))

    def _on_buffer_info(self, m: BufferInfo, out: list[Output]) -> None:
        # The next buffer may be announced while one is still being received
        # (overlapping rounds), never a third, nor the end before all are whole.
        early = self._phase is Phase.RECEIVING and self._ahead is None and not m.final
        if (self._phase is not Phase.IDLE and not early) or m.buffer_id != self._next_id:
            self._fail(f"the sender announced buffer {m.buffer_id} out of turn", out, tell=True)
            return
        self._next_id += 1
        if m.final:
            self._final = m
            self._phase = Phase.VERIFYING
            self._maybe_verify(out)
            return
        size = self._payload_size
        if not (m.packet_count - 1) * size < m.byte_length <= m.packet_count * size:
            self._fail(f"buffer {m.buffer_id}'s length does not fit its packets", out, tell=True)
            return
        assert self._session is not None  # welcomed: IDLE comes after the welcome
        b = _Incoming(
            m, self._memory(m.packet_count * size), self._session, size, self._auth is not None
        )
        if early:
            self._ahead = b
            ready = self._incoming is None or self._incoming.ready
        else:
            self._incoming = b
            ready = True
        self._phase = Phase.RECEIVING
        if ready and len(self._unwritten) < MAX_UNWRITTEN:
            b.ready = True
            out.append(Send(message=Ready(buffer_id=b.id)))

    def _on_sent(self, buffer_id: int, pass_number: int, out: list[Output]) -> None:
        b = self._find(buffer_id)
        if b is None and buffer_id < self._next_id and self._phase is not Phase.VERIFYING:
            return  # whole before the sender's pass ended: our Done is on its way
        if b is None:
            self._fail(f"the sender ended a pass of buffer {buffer_id} out of turn", out, True)
            return
        missing = _missing_ranges(b.have)
        out.append(
            Send(
                message=Request(
                    buffer_id=b.id,
                    pass_number=pass_number,
                    received=b.tally.multicast,
                    missing=missing,
                )
            )
        )

    # --- data -------------------------------------------------------------------------

    def _memory(self, size: int) -> tuple[memoryview, list[memoryview]]:
        """Memory for a buffer of `size` bytes: a written buffer's if one is large enough."""
        while self._spare:
            memory = self._spare.pop()
            if len(memory[0]) >= size:
                return memory
        return self._settings.memory(size), []

    def _take(
        self,
        session: int,
        buffer_id: int,
        index: int,
        payload: bytes | memoryview,
        now: float,
        multicast: bool,
    ) -> Sequence[Output]:
        if session != self._session:
            self._current_tally().foreign += 1
            return _NOTHING
        self._heard_at = now
        b = self._find(buffer_id)
        if b is None:
            self._current_tally().stale += 1
            return _NOTHING
        size = self._payload_size
        start = index * size
        length = len(payload)
        if index >= b.count or length != min(size, b.byte_length - start):
            b.tally.corrupt += 1
            return _NOTHING
        if b.have[index]:
            b.tally.duplicate += 1
            return _NOTHING
        b.data[start : start + length] = payload
        b.have[index] = 1
        b.have_count += 1
        if multicast:
            b.tally.multicast += 1
            b.cursor = index + 1
        else:
            b.tally.repaired += 1
        if b.have_count < b.count:
            return _NOTHING
        return self._complete(b)

    def _complete(self, b: _Incoming) -> list[Output]:
        """`b` is whole: Done at once; delivered now, or after the buffer before it."""
        counters = b.tally.freeze()
        self._total = _add(self._total, counters)
        self._buffers += 1
        done: list[Output] = [
            Send(message=Done(buffer_id=b.id, counters=counters)),
            BufferReceived(buffer_id=b.id, byte_length=b.byte_length, counters=counters),
        ]
        if b is self._ahead:
            return done  # the buffer before it still waits for repairs
        out: list[Output] = [self._deliver(b), *done]
        self._incoming = None
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            if ahead.have_count == ahead.count:
                out.append(self._deliver(ahead))
            else:
                self._incoming = ahead
        self._phase = Phase.RECEIVING if self._incoming is not None else Phase.IDLE
        return out

    def _deliver(self, b: _Incoming) -> Deliver:
        self._unwritten.append((b.id, (b.data, b.slot_views)))
        return Deliver(buffer_id=b.id, data=b.data[: b.byte_length])

    def _open(self) -> list[_Incoming]:
        """The buffers being received (not yet whole), oldest first."""
        return [
            b for b in (self._incoming, self._ahead) if b is not None and b.have_count < b.count
        ]

    def _find(self, buffer_id: int) -> _Incoming | None:
        """The buffer being received with this id, if any."""
        for b in (self._incoming, self._ahead):
            if b is not None and b.id == buffer_id and b.have_count < b.count:
                return b
        return None

    def _target(self) -> _Incoming | None:
        """The buffer multicast is filling: the next one once any of it came, else the older.

        The next buffer is announced while the older one's pass is still
        under way; its datagrams follow that pass.
        """
        ahead = self._ahead
        if ahead is not None and 0 < ahead.have_count < ahead.count:
            return ahead
        return self._incoming

    def _current_tally(self) -> _Tally:
        b = self._target()
        return b.tally if b is not None else self._total

    def _count_fault(self, fault: Fault) -> None:
        tally = self._current_tally()
        if fault in (Fault.FORGED, Fault.UNAUTHENTICATED, Fault.KEY_NEEDED):
            tally.forged += 1
        elif fault is Fault.VERSION:
            tally.foreign += 1
        else:
            tally.corrupt += 1

    # --- ending -----------------------------------------------------------------------

    def _maybe_verify(self, out: list[Output]) -> None:
        final = self._final
        if self._phase is not Phase.VERIFYING or final is None or self._unwritten:
            return
        if self._verifying:
            return
        self._verifying = True
        out.append(Verify(total_bytes=final.total_bytes, digest=final.digest))

    def _fail(self, reason: str, out: list[Output], tell: bool) -> None:
        if tell and self._phase is not Phase.CONNECTING:
            out.append(Send(message=Abort(reason=reason)))
        self._close(False, reason, out)

    def _close(self, ok: bool, reason: str, out: list[Output]) -> None:
        counters = self.counters()
        total = self._final.total_bytes if self._final is not None and ok else 0
        self._report = ReceiverReport(
            ok=ok,
            reason=reason,
            total_bytes=total if ok else self._delivered_bytes,
            buffers=self._buffers,
            counters=counters,
            tcp_only=counters.multicast == 0 and counters.repaired > 0,
        )
        self._phase = Phase.CLOSED
        self._incoming = None
        self._ahead = None
        out.append(Close(report=self._report))


def _add(tally: _Tally, counters: Counters) -> _Tally:
    tally.multicast += counters.multicast
    tally.repaired += counters.repaired
    tally.duplicate += counters.duplicate
    tally.corrupt += counters.corrupt
    tally.foreign += counters.foreign
    tally.forged += counters.forged
    tally.stale += counters.stale
    return tally


def _join(first: Sequence[Output], more: Sequence[Output]) -> Sequence[Output]:
    if not more:
        return first
    if not first:
        return more
    return [*first, *more]


def _move(memory: memoryview, size: int, moves: list[tuple[int, int, int]]) -> None:
    """Copy each (from slot, to index, length) payload to its own slot.

    A destination may be another move's source (a loss shifts every later
    datagram of a receive by one slot): when every move goes up, the highest
    goes first and no source is overwritten before it is read; otherwise
    (reordering) the sources are copied out first.
    """
    if not moves:
        return
    if all(s < to for s, to, _ in moves):
        for s, to, length in sorted(moves, key=lambda m: -m[1]):
            memory[to * size : to * size + length] = memory[s * size : s * size + length]
        return
    saved = [bytes(memory[s * size : s * size + length]) for s, _, length in moves]
    for (_, to, length), payload in zip(moves, saved, strict=True):
        memory[to * size : to * size + length] = payload


def _missing_ranges(have: bytearray) -> tuple[tuple[int, int], ...]:
    """(first, count) runs of the zero bytes of `have` (found at C speed)."""
    runs: list[tuple[int, int]] = []
    start = have.find(0)
    while start >= 0:
        end = have.find(1, start)
        if end < 0:
            end = len(have)
        runs.append((start, end - start))
        start = have.find(0, end)
    return tuple(runs)
