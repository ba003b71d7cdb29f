"""Wire format of image distribution: data packets and control messages.

Theory of operation
-------------------
Two kinds of packet travel, both in network byte order and both starting
with the same 8-byte prefix ``magic "SG" | version | kind | session``:

- **Data packets** carry one slice of one buffer of the image. They go over
  UDP multicast, and the very same bytes go over a client's TCP connection
  when that client needs a repair. Header (24 bytes)::

      magic(2) version(1) kind=DATA(1) session(4)
      buffer_id(4) index(4) length(2) flags(2) crc32c(4)

  then `length` bytes of payload, then a 16-byte tag when `flags` has AUTH.

- **Control messages** (hello, buffer info, ready, sent, request, done,
  result, keepalive, abort) go over the client's TCP connection only.
  Header (20 bytes)::

      magic(2) version(1) kind(1) session(4) length(4) flags(2) reserved(2) crc32c(4)

  then `length` bytes of body, then the tag when `flags` has AUTH.

The CRC-32C (Castagnoli; the `crc32c` library, which uses the CPU's CRC32
instruction: ~9 GB/s here against ~3.5 GB/s for zlib's crc32, so checking a
9 KB datagram costs ~1 us) covers the header up to the crc field and the
payload or body: a flipped bit anywhere is caught, with the same strength as
crc32 (and better for the burst errors of real links). Version 2 of the wire
format is version 1 with crc32 replaced by CRC-32C (and the image digest in
`BufferInfo` a BLAKE3 one); the two do not talk to each other. With a shared key, the tag is the
first 16 bytes of HMAC-SHA256 over header (crc included) and payload or body,
so a forged, altered or foreign packet is refused. The session id, drawn at
random by the sender for each transfer, separates transfers that share a
group and port; stale packets of another session are the state machines'
business, not the codec's.

Every packet is self-delimiting, so one `StreamDecoder` turns a TCP byte
stream into packets whatever way the stream is split.

Guarantees: `decode_*` of any byte string either returns a packet that
`encode_*` would produce again bit for bit, or raises `ProtocolError` (with
a `Fault` saying which kind of garbage it was); nothing else escapes.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.machinery
import importlib.util
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum, IntEnum
from ipaddress import IPv4Address

from servergroup.common.errors import RemoteError

MAGIC = b"SG"
#: 3: the next buffer may be announced before the one before it is whole
#: (overlapping rounds); a version-2 receiver would take that for a fault.
VERSION = 3
#: First 16 bytes of HMAC-SHA256.
TAG_SIZE = 16
FLAG_AUTH = 0x0001
#: IPv4 (20) + UDP (8) headers: what an MTU must hold besides our datagram.
IP_UDP_OVERHEAD = 28
#: A control body this long is garbage (the largest real one, a request
#: naming every other packet of a 1M-packet buffer, is 4 MiB).
MAX_BODY = 4 * 1024 * 1024 + 64
#: Names and reasons are cut to this many bytes on the wire.
MAX_TEXT = 512
DIGEST_SIZE = 32
U32 = 0xFFFFFFFF


def _load_crc32c() -> Callable[..., int]:
    """The `crc32c` library's C function, loaded without running its package's `__init__`.

    That `__init__` reads the library's version from the installed metadata
    and imports its command line: ~0.1 s of CPU at every start of every
    receiver, as much as the faster checksum saves on 1 GiB. The extension
    module alone has the function; if the layout ever differs, the ordinary
    import is used.
    """
    spec = importlib.util.find_spec("crc32c")
    for where in (spec.submodule_search_locations or []) if spec is not None else []:
        finder = importlib.machinery.FileFinder(
            where,
            (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
        )
        found = finder.find_spec("crc32c._crc32c")
        if found is not None and found.loader is not None:
            module = importlib.util.module_from_spec(found)
            found.loader.exec_module(module)
            function: Callable[..., int] = module.crc32c
            return function
    import crc32c

    return crc32c.crc32c


#: CRC-32C of a buffer, continuing from a previous value (hardware-assisted).
crc32c: Callable[..., int] = _load_crc32c()
_crc32c = crc32c

_PREFIX = struct.Struct("!2sBBI")
_DATA = struct.Struct("!2sBBIIIHHI")
_CONTROL = struct.Struct("!2sBBIIHHI")
DATA_HEADER_SIZE = _DATA.size
CONTROL_HEADER_SIZE = _CONTROL.size


class Kind(IntEnum):
    """What a packet is; the fourth byte of every packet."""

    DATA = 1
    HELLO = 2
    WELCOME = 3
    BUFFER_INFO = 4
    READY = 5
    SENT = 6
    REQUEST = 7
    DONE = 8
    RESULT = 9
    KEEPALIVE = 10
    ABORT = 11


class Fault(Enum):
    """Why a packet was refused."""

    MALFORMED = "malformed"
    VERSION = "unsupported version"
    CORRUPT = "corrupt"
    UNAUTHENTICATED = "unauthenticated"
    FORGED = "forged"
    KEY_NEEDED = "authenticated, but no key is set"


class ProtocolError(RemoteError):
    """A peer sent bytes that are not a valid packet."""

    def __init__(self, fault: Fault, detail: str) -> None:
        super().__init__(f"{fault.value} packet: {detail}")
        self.fault = fault


# --- authentication -------------------------------------------------------------------


class Auth:
    """A shared key: signs and checks packet tags (HMAC-SHA256, first 16 bytes)."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("an authentication key must not be empty")
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def tag(self, *parts: bytes | memoryview) -> bytes:
        mac = self._keyed.copy()
        for part in parts:
            mac.update(part)
        return mac.digest()[:TAG_SIZE]

    def check(self, tag: bytes | memoryview, *parts: bytes | memoryview) -> bool:
        return hmac.compare_digest(self.tag(*parts), bytes(tag))


def payload_size_for(mtu: int, authenticated: bool) -> int:
    """Payload bytes per data packet so that one datagram fills but never exceeds `mtu`."""
    return mtu - IP_UDP_OVERHEAD - DATA_HEADER_SIZE - (TAG_SIZE if authenticated else 0)


# --- data packets ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DataPacket:
    """One slice of a buffer: bytes [index * payload_size, ...) of buffer `buffer_id`."""

    session: int
    buffer_id: int
    index: int
    payload: bytes | memoryview


def data_header(
    session: int,
    buffer_id: int,
    index: int,
    payload: bytes | memoryview,
    auth: Auth | None,
) -> tuple[bytes, bytes]:
    """The header and tag (b"" without a key) that frame `payload` as a data packet.

    Split from the payload so a sender can hand header, payload and tag to
    `sendmsg` without copying the payload.
    """
    flags = FLAG_AUTH if auth is not None else 0
    fields = _DATA.pack(
        MAGIC, VERSION, Kind.DATA, session, buffer_id, index, len(payload), flags, 0
    )
    crc = _crc32c(payload, _crc32c(fields[:-4]))
    header = fields[:-4] + crc.to_bytes(4, "big")
    tag = auth.tag(header, payload) if auth is not None else b""
    return header, tag


def encode_data(packet: DataPacket, auth: Auth | None = None) -> bytes:
    header, tag = data_header(packet.session, packet.buffer_id, packet.index, packet.payload, auth)
    return b"".join((header, packet.payload, tag))


# Bound once: `check_data` runs for every datagram.
_DATA_UNPACK = _DATA.unpack_from
_DATA_CRC_AT = DATA_HEADER_SIZE - 4
_KIND_DATA = int(Kind.DATA)


def decode_data(data: bytes | bytearray | memoryview, auth: Auth | None = None) -> DataPacket:
    """One data packet from exactly these bytes; its payload is a view into `data`."""
    view = memoryview(data)
    session, buffer_id, index, length = check_data(view, auth)
    payload = view[DATA_HEADER_SIZE : DATA_HEADER_SIZE + length]
    return DataPacket(session=session, buffer_id=buffer_id, index=index, payload=payload)


def check_data(
    data: bytes | bytearray | memoryview, auth: Auth | None = None
) -> tuple[int, int, int, int]:
    """Check one data packet where it lies: (session, buffer_id, index, payload length).

    The fast path of `decode_data` for a receiver's datagram loop: it builds
    no packet and copies nothing (give it a memoryview); the payload is
    `data[DATA_HEADER_SIZE : DATA_HEADER_SIZE + length]`. It refuses exactly
    what `decode_data` refuses, with the same `ProtocolError`.
    """
    size = len(data)
    if size < DATA_HEADER_SIZE:
        raise ProtocolError(Fault.MALFORMED, f"{size} bytes is too short for a data packet")
    magic, version, kind, session, buffer_id, index, length, flags, crc = _DATA_UNPACK(data)
    if (
        magic != MAGIC
        or version != VERSION
        or kind != _KIND_DATA
        or flags != (FLAG_AUTH if auth is not None else 0)
    ):
        # The rare case: say exactly what is wrong.
        _check_prefix(magic, version)
        if kind != _KIND_DATA:
            raise ProtocolError(Fault.MALFORMED, f"kind {kind} where a data packet was expected")
        _tag_size(flags, auth)
    end = DATA_HEADER_SIZE + length
    if size != (end + TAG_SIZE if flags else end):
        raise ProtocolError(
            Fault.MALFORMED, f"{size} bytes for a {length}-byte payload and its header"
        )
    view = data if isinstance(data, memoryview) else memoryview(data)
    payload = view[DATA_HEADER_SIZE:end]
    if _crc32c(payload, _crc32c(view[:_DATA_CRC_AT])) != crc:
        raise ProtocolError(Fault.CORRUPT, "crc32c mismatch")
    if auth is not None and not auth.check(view[end:], view[:DATA_HEADER_SIZE], payload):
        raise ProtocolError(Fault.FORGED, "tag mismatch")
    return session, buffer_id, index, length


def _check_prefix(magic: bytes, version: int) -> None:
    if magic != MAGIC:
        raise ProtocolError(Fault.MALFORMED, "bad magic")
    if version != VERSION:
        raise ProtocolError(Fault.VERSION, f"version {version}, this side speaks {VERSION}")


def _tag_size(flags: int, auth: Auth | None) -> int:
    if flags & ~FLAG_AUTH:
        raise ProtocolError(Fault.MALFORMED, f"unknown flags {flags:#x}")
    signed = bool(flags & FLAG_AUTH)
    if auth is not None and not signed:
        raise ProtocolError(Fault.UNAUTHENTICATED, "no tag, but a key is set")
    if auth is None and signed:
        raise ProtocolError(Fault.KEY_NEEDED, "the peer signs its packets; set the same key")
    return TAG_SIZE if signed else 0


# --- control messages -----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Counters:
    """What a receiver counted for one buffer (or in total), for the sender's report."""

    multicast: int = 0
    repaired: int = 0
    duplicate: int = 0
    corrupt: int = 0
    foreign: int = 0
    forged: int = 0
    stale: int = 0

    def plus(self, other: Counters) -> Counters:
        return Counters(
            multicast=self.multicast + other.multicast,
            repaired=self.repaired + other.repaired,
            duplicate=self.duplicate + other.duplicate,
            corrupt=self.corrupt + other.corrupt,
            foreign=self.foreign + other.foreign,
            forged=self.forged + other.forged,
            stale=self.stale + other.stale,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """Client → sender, first message: who it is."""

    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """Sender → client: the session's multicast group and packet geometry."""

    group: IPv4Address
    port: int
    payload_size: int
    buffer_packets: int
    keepalive_interval: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferInfo:
    """Sender → client: the next buffer. No packets: the image ended (digest is then set)."""

    buffer_id: int
    packet_count: int
    byte_length: int
    total_bytes: int = 0
    digest: bytes = bytes(DIGEST_SIZE)

    @property
    def final(self) -> bool:
        return self.packet_count == 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    """Client → sender: a buffer's space is ready; multicast may start."""

    buffer_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    """Sender → client: multicast pass `pass_number` of the buffer is over."""

    buffer_id: int
    pass_number: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """Client → sender: the packets still missing after a pass, as (first, count) ranges."""

    buffer_id: int
    pass_number: int
    received: int
    missing: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Done:
    """Client → sender: it has every packet of the buffer."""

    buffer_id: int
    counters: Counters


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """Client → sender at the end: was the whole image written and its digest right."""

    ok: bool
    total_bytes: int
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Keepalive:
    """Sender → client: still here (sent when nothing else was sent for a while)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Abort:
    """Either way: this side gives up on the transfer, and why."""

    reason: str


Message = Hello | Welcome | BufferInfo | Ready | Sent | Request | Done | Result | Keepalive | Abort
Packet = Message | DataPacket

_U32 = struct.Struct("!I")
_WELCOME = struct.Struct("!4sHHII")
_BUFFER_INFO = struct.Struct("!IIQQ32s")
_SENT = struct.Struct("!IH")
_REQUEST = struct.Struct("!IHII")
_RANGE = struct.Struct("!II")
_COUNTERS = struct.Struct("!7I")
_RESULT = struct.Struct("!BQ")


def _text(value: str) -> bytes:
    return value.encode("utf-8", "replace")[:MAX_TEXT].decode("utf-8", "ignore").encode()


_COUNTER_NAMES = ("multicast", "repaired", "duplicate", "corrupt", "foreign", "forged", "stale")


def _counters_body(c: Counters) -> bytes:
    return _COUNTERS.pack(*(min(getattr(c, name), U32) for name in _COUNTER_NAMES))


def _body(message: Message) -> tuple[Kind, bytes]:
    match message:
        case Hello(name=name):
            return Kind.HELLO, _text(name)
        case Welcome():
            return Kind.WELCOME, _WELCOME.pack(
                message.group.packed,
                message.port,
                message.payload_size,
                message.buffer_packets,
                round(message.keepalive_interval * 1000),
            )
        case BufferInfo():
            return Kind.BUFFER_INFO, _BUFFER_INFO.pack(
                message.buffer_id,
                message.packet_count,
                message.byte_length,
                message.total_bytes,
                message.digest,
            )
        case Ready(buffer_id=buffer_id):
            return Kind.READY, _U32.pack(buffer_id)
        case Sent(buffer_id=buffer_id, pass_number=pass_number):
            return Kind.SENT, _SENT.pack(buffer_id, pass_number)
        case Request():
            head = _REQUEST.pack(
                message.buffer_id, message.pass_number, message.received, len(message.missing)
            )
            return Kind.REQUEST, head + b"".join(_RANGE.pack(*r) for r in message.missing)
        case Done(buffer_id=buffer_id, counters=counters):
            return Kind.DONE, _U32.pack(buffer_id) + _counters_body(counters)
        case Result(ok=ok, total_bytes=total, reason=reason):
            return Kind.RESULT, _RESULT.pack(int(ok), total) + _text(reason)
        case Keepalive():
            return Kind.KEEPALIVE, b""
        case Abort(reason=reason):
            return Kind.ABORT, _text(reason)
    raise TypeError(f"not a message: {message!r}")


def encode_message(message: Message, session: int, auth: Auth | None = None) -> bytes:
    """The bytes of one control message of `session`."""
    kind, body = _body(message)
    flags = FLAG_AUTH if auth is not None else 0
    fields = _CONTROL.pack(MAGIC, VERSION, kind, session, len(body), flags, 0, 0)
    crc = _crc32c(body, _crc32c(fields[:-4]))
    header = fields[:-4] + crc.to_bytes(4, "big")
    tag = auth.tag(header, body) if auth is not None else b""
    return header + body + tag


def encode_packet(packet: Packet, session: int, auth: Auth | None = None) -> bytes:
    """A data packet or control message; `session` is ignored for data (it carries its own)."""
    if isinstance(packet, DataPacket):
        return encode_data(packet, auth)
    return encode_message(packet, session, auth)


def decode_message(
    data: bytes | bytearray | memoryview, auth: Auth | None = None
) -> tuple[int, Message]:
    """(session, message) from exactly the bytes of one control message."""
    view = memoryview(data)
    if len(view) < CONTROL_HEADER_SIZE:
        raise ProtocolError(Fault.MALFORMED, f"{len(view)} bytes is too short for a message")
    magic, version, kind, session, length, flags, reserved, crc = _CONTROL.unpack_from(view)
    _check_prefix(magic, version)
    if reserved:
        raise ProtocolError(Fault.MALFORMED, "reserved bits set")
    tag_size = _tag_size(flags, auth)
    end = CONTROL_HEADER_SIZE + length
    if len(view) != end + tag_size:
        raise ProtocolError(Fault.MALFORMED, f"{len(view)} bytes for a {length}-byte body")
    body = view[CONTROL_HEADER_SIZE:end]
    if _crc32c(body, _crc32c(view[: CONTROL_HEADER_SIZE - 4])) != crc:
        raise ProtocolError(Fault.CORRUPT, "crc32c mismatch")
    if auth is not None and not auth.check(view[end:], view[:CONTROL_HEADER_SIZE], body):
        raise ProtocolError(Fault.FORGED, "tag mismatch")
    try:
        return session, _parse_body(Kind(kind), bytes(body))
    except ValueError as exc:  # struct.error and UnicodeDecodeError are ValueErrors too
        raise ProtocolError(Fault.MALFORMED, str(exc)) from None


def _exact(body: bytes, layout: struct.Struct) -> tuple[int, ...]:
    if len(body) != layout.size:
        raise ValueError(f"body of {len(body)} bytes, expected {layout.size}")
    return layout.unpack(body)


def _parse_text(body: bytes) -> str:
    if len(body) > MAX_TEXT:
        raise ValueError("text too long")
    return body.decode("utf-8")


def _parse_body(kind: Kind, body: bytes) -> Message:
    match kind:
        case Kind.HELLO:
            return Hello(name=_parse_text(body))
        case Kind.WELCOME:
            if len(body) != _WELCOME.size:
                raise ValueError("welcome of the wrong size")
            group, port, payload_size, buffer_packets, keepalive_ms = _WELCOME.unpack(body)
            address = IPv4Address(group)
            if not address.is_multicast or not port or not payload_size or not buffer_packets:
                raise ValueError("welcome with an impossible group, port or size")
            return Welcome(
                group=address,
                port=port,
                payload_size=payload_size,
                buffer_packets=buffer_packets,
                keepalive_interval=keepalive_ms / 1000,
            )
        case Kind.BUFFER_INFO:
            if len(body) != _BUFFER_INFO.size:
                raise ValueError("buffer info of the wrong size")
            buffer_id, count, length, total, digest = _BUFFER_INFO.unpack(body)
            if (count == 0) != (length == 0) or length < count:
                raise ValueError("buffer info whose length does not fit its packets")
            return BufferInfo(
                buffer_id=buffer_id,
                packet_count=count,
                byte_length=length,
                total_bytes=total,
                digest=digest,
            )
        case Kind.READY:
            (buffer_id,) = _exact(body, _U32)
            return Ready(buffer_id=buffer_id)
        case Kind.SENT:
            buffer_id, pass_number = _exact(body, _SENT)
            return Sent(buffer_id=buffer_id, pass_number=pass_number)
        case Kind.REQUEST:
            if len(body) < _REQUEST.size:
                raise ValueError("request too short")
            buffer_id, pass_number, received, n = _REQUEST.unpack_from(body)
            if len(body) != _REQUEST.size + n * _RANGE.size:
                raise ValueError("request whose ranges do not fit its length")
            ranges = tuple(_RANGE.iter_unpack(body[_REQUEST.size :]))
            if any(count == 0 or first + count > U32 + 1 for first, count in ranges):
                raise ValueError("request with an empty or overflowing range")
            return Request(
                buffer_id=buffer_id, pass_number=pass_number, received=received, missing=ranges
            )
        case Kind.DONE:
            if len(body) != _U32.size + _COUNTERS.size:
                raise ValueError("done of the wrong size")
            (buffer_id,) = _U32.unpack_from(body)
            values = _COUNTERS.unpack_from(body, _U32.size)
            counters = Counters(**dict(zip(_COUNTER_NAMES, values, strict=True)))
            return Done(buffer_id=buffer_id, counters=counters)
        case Kind.RESULT:
            if len(body) < _RESULT.size:
                raise ValueError("result too short")
            ok, total = _RESULT.unpack_from(body)
            if ok not in (0, 1):
                raise ValueError("result flag is neither 0 nor 1")
            return Result(ok=bool(ok), total_bytes=total, reason=_parse_text(body[_RESULT.size :]))
        case Kind.KEEPALIVE:
            if body:
                raise ValueError("keepalive with a body")
            return Keepalive()
        case Kind.ABORT:
            return Abort(reason=_parse_text(body))
        case Kind.DATA:
            raise ValueError("data kind in a control header")
    raise ValueError(f"unknown kind {kind}")


# --- streams --------------------------------------------------------------------------


class StreamDecoder:
    """Turns a TCP byte stream into packets, however the stream is split.

    After a `ProtocolError` the stream is out of step and cannot be resumed:
    every later `feed` raises again (the connection is then closed).
    """

    def __init__(self, auth: Auth | None = None, max_body: int = MAX_BODY) -> None:
        self._auth = auth
        self._max_body = max_body
        self._buffer = bytearray()
        self._error: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole packet."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, Packet]]:
        """Add bytes; return every (session, packet) they complete, in order."""
        if self._error is not None:
            raise self._error
        self._buffer += data
        out: list[tuple[int, Packet]] = []
        start = 0
        buffer = self._buffer
        try:
            while True:
                size = self._next_size(buffer, start)
                if size is None or len(buffer) - start < size:
                    break
                # A copy: packets outlive the buffer, which shrinks below.
                chunk = bytes(buffer[start : start + size])
                if chunk[3] == Kind.DATA:
                    packet = decode_data(chunk, self._auth)
                    out.append((packet.session, packet))
                else:
                    out.append(decode_message(chunk, self._auth))
                start += size
        except ProtocolError as exc:
            self._error = exc
            raise
        finally:
            del buffer[:start]
        return out

    def _next_size(self, buffer: bytearray, start: int) -> int | None:
        """Size of the packet at `start`, None if its header is not all there yet."""
        available = len(buffer) - start
        if available < _PREFIX.size:
            return None
        magic, version, kind, _ = _PREFIX.unpack_from(buffer, start)
        _check_prefix(magic, version)
        if kind == Kind.DATA:
            if available < DATA_HEADER_SIZE:
                return None
            length, flags = struct.unpack_from("!HH", buffer, start + 16)
            tag = TAG_SIZE if flags & FLAG_AUTH else 0
            return int(DATA_HEADER_SIZE + length + tag)
        if kind not in _CONTROL_KINDS:
            raise ProtocolError(Fault.MALFORMED, f"unknown kind {kind}")
        if available < CONTROL_HEADER_SIZE:
            return None
        length, flags = struct.unpack_from("!IH", buffer, start + 8)
        if length > self._max_body:
            raise ProtocolError(Fault.MALFORMED, f"a {length}-byte body is too long")
        tag = TAG_SIZE if flags & FLAG_AUTH else 0
        return int(CONTROL_HEADER_SIZE + length + tag)


_CONTROL_KINDS = frozenset(int(k) for k in Kind if k is not Kind.DATA)


# --- ranges ---------------------------------------------------------------------------


def to_ranges(indices: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Sorted distinct indices as (first, count) runs: [1, 2, 3, 7] -> ((1, 3), (7, 1))."""
    runs: list[tuple[int, int]] = []
    first = last = -2
    for index in sorted(set(indices)):
        if index == last + 1:
            last = index
            continue
        if last >= 0:
            runs.append((first, last - first + 1))
        first = last = index
    if last >= 0:
        runs.append((first, last - first + 1))
    return tuple(runs)


def from_ranges(ranges: Iterable[tuple[int, int]]) -> list[int]:
    """The indices that (first, count) runs name, in order."""
    return [i for first, count in ranges for i in range(first, first + count)]
