"""The checkpoint stream: messages between a primary and its backup. Pure: no I/O, no clock.

Theory of operation. A primary and its backup talk over two TCP
connections: the **checkpoint stream** (primary -> backup: hello, then
epochs; backup -> primary: welcome or refuse, then acks) and the
**heartbeat channel** (heartbeats both ways), kept apart so that a large
checkpoint in flight never delays liveness and a broken stream alone never
causes a failover (a gap Remus left). Both carry the frames of
`servergroup.common.framing` with magic ``SGRP``; the frame kind is the
message kind below.

An epoch on the stream::

    EpochBegin(generation, epoch, full)
    Pages(region, runs, data) ...         the pages of some runs of a region, in run order
    DiskWrite(offset, data) ...           this epoch's writes to the replicated disk, in order
    EpochEnd(epoch, runs, writes, digest)

`digest` is the xxh3-64 of the bodies of the epoch's Pages and DiskWrite
frames, in order (`EpochDigest`): with the counts it proves that the backup
holds the whole epoch, nothing missing, repeated or reordered, before it
applies anything. A *full* epoch carries every page of every region (the
first one to a new backup, and after a broken stream); the others carry the
pages written since the previous epoch.

Messages (all integers big-endian; text is UTF-8 with a u16 length):

- Hello: service, generation u64, page_size u32, disk_size u64, then the
  region layout (u16 count, then name and size u64 for each).
- Welcome(generation) / Refuse(reason): the backup's answer to a hello.
- Ack(generation, epoch): the backup holds epoch `epoch` complete (its disk
  writes durable in its buffer) and has applied it.
- Heartbeat(generation, epoch): "I am alive", with the last epoch the
  sender committed (primary) or applied (backup).

Guarantees: `decode_message` of a frame either returns a message that
`encode_message` turns back into the same body or raises
`ReplicationProtocolError`; `MessageDecoder.feed` raises nothing else on
any input and gives the same messages however the stream is split.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import xxhash

from servergroup.common.errors import RemoteError, UsageError
from servergroup.common.framing import (
    Frame,
    FrameDecoder,
    FrameFormat,
    FramingError,
    encode_frame,
    frame_header,
)
from servergroup.replication.pages import PageRuns

MAGIC = b"SGRP"
VERSION = 1
#: The largest frame body: a page run of this many bytes plus its header.
#: The most data bytes one Pages or DiskWrite message carries.
MAX_DATA_BYTES = 1024 * 1024
#: The most runs one Pages message lists.
MAX_RUNS = 4096
MAX_BODY = MAX_DATA_BYTES + 8 * MAX_RUNS + 64
#: Names and reasons longer than this are refused (names) or cut (reasons).
MAX_TEXT = 1024
MAX_REGIONS = 1024
_U64 = 2**64 - 1


class Kind(IntEnum):
    """The frame kind of each message."""

    HELLO = 1
    WELCOME = 2
    REFUSE = 3
    EPOCH_BEGIN = 4
    PAGES = 5
    DISK_WRITE = 6
    EPOCH_END = 7
    ACK = 8
    HEARTBEAT = 9


FORMAT = FrameFormat(magic=MAGIC, version=VERSION, kinds=frozenset(Kind), max_body=MAX_BODY)


class ReplicationProtocolError(RemoteError):
    """The peer sent bytes that are not a valid message of the checkpoint protocol."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    service: str
    generation: int
    page_size: int
    disk_size: int
    regions: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    generation: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Refuse:
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochBegin:
    generation: int
    epoch: int
    full: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Pages:
    """Pages of region number `region` (its index in the hello's layout).

    `data` holds the pages of `runs` one after the other, in run order.
    """

    region: int
    runs: PageRuns
    data: bytes | memoryview


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskWrite:
    offset: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochEnd:
    epoch: int
    runs: int
    writes: int
    digest: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    generation: int
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    generation: int
    epoch: int


Message = Hello | Welcome | Refuse | EpochBegin | Pages | DiskWrite | EpochEnd | Ack | Heartbeat

_Q = struct.Struct("!Q")
_QQ = struct.Struct("!QQ")
_QQB = struct.Struct("!QQB")
_PAGES = struct.Struct("!HI")
_RUN = struct.Struct("!II")
_END = struct.Struct("!QIIQ")
_HELLO = struct.Struct("!QIQH")
_H = struct.Struct("!H")


def _text(value: str, what: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_TEXT:
        raise UsageError(f"{what} is over {MAX_TEXT} bytes of UTF-8.")
    return _H.pack(len(raw)) + raw


def _check_u64(*values: int) -> None:
    for value in values:
        if not 0 <= value <= _U64:
            raise UsageError(f"{value} does not fit the 64-bit field it goes in.")


def _body(message: Message) -> tuple[Kind, list[bytes | memoryview]]:
    """The kind and the parts of the body of `message` (large data is not copied)."""
    try:
        return _fields(message)
    except struct.error as exc:
        raise UsageError(
            f"a field of {type(message).__name__} does not fit the wire: {exc}"
        ) from None


def _fields(message: Message) -> tuple[Kind, list[bytes | memoryview]]:
    match message:
        case Hello():
            _check_u64(message.generation, message.disk_size)
            if len(message.regions) > MAX_REGIONS:
                raise UsageError(f"a service has at most {MAX_REGIONS} regions.")
            parts: list[bytes | memoryview] = [
                _text(message.service, "the service name"),
                _HELLO.pack(
                    message.generation, message.page_size, message.disk_size, len(message.regions)
                ),
            ]
            for name, size in message.regions:
                _check_u64(size)
                parts += [_text(name, "a region name"), _Q.pack(size)]
            return Kind.HELLO, parts
        case Welcome():
            _check_u64(message.generation)
            return Kind.WELCOME, [_Q.pack(message.generation)]
        case Refuse():
            raw = message.reason.encode("utf-8", "replace")[:MAX_TEXT]
            return Kind.REFUSE, [_H.pack(len(raw)), raw]
        case EpochBegin():
            _check_u64(message.generation, message.epoch)
            return Kind.EPOCH_BEGIN, [_QQB.pack(message.generation, message.epoch, message.full)]
        case Pages():
            if len(message.data) > MAX_DATA_BYTES:
                raise UsageError(f"a Pages message carries at most {MAX_DATA_BYTES} bytes.")
            if len(message.runs) > MAX_RUNS:
                raise UsageError(f"a Pages message lists at most {MAX_RUNS} runs.")
            head = _PAGES.pack(message.region, len(message.runs)) + b"".join(
                _RUN.pack(first, count) for first, count in message.runs
            )
            return Kind.PAGES, [head, message.data]
        case DiskWrite():
            _check_u64(message.offset)
            if len(message.data) > MAX_DATA_BYTES:
                raise UsageError(f"a disk write carries at most {MAX_DATA_BYTES} bytes.")
            return Kind.DISK_WRITE, [_Q.pack(message.offset), message.data]
        case EpochEnd():
            _check_u64(message.epoch, message.digest)
            return Kind.EPOCH_END, [
                _END.pack(message.epoch, message.runs, message.writes, message.digest)
            ]
        case Ack():
            _check_u64(message.generation, message.epoch)
            return Kind.ACK, [_QQ.pack(message.generation, message.epoch)]
        case Heartbeat():
            _check_u64(message.generation, message.epoch)
            return Kind.HEARTBEAT, [_QQ.pack(message.generation, message.epoch)]
    raise UsageError(f"{message!r} is not a replication message.")


def encode_parts(message: Message) -> list[bytes | memoryview]:
    """The frame of `message` as parts to write in order (page data is not copied)."""
    kind, parts = _body(message)
    return [frame_header(FORMAT, kind, *parts), *parts]


def encode_message(message: Message) -> bytes:
    """The frame of `message` as one byte string."""
    kind, parts = _body(message)
    return encode_frame(FORMAT, kind, b"".join(parts))


class _Reader:
    """Reads fields from a body; every shortfall is a protocol error."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._at = 0

    def take(self, fmt: struct.Struct) -> tuple[int, ...]:
        if len(self._body) - self._at < fmt.size:
            raise ReplicationProtocolError("a message is shorter than its fields.")
        values = fmt.unpack_from(self._body, self._at)
        self._at += fmt.size
        return tuple(values)

    def text(self) -> str:
        (length,) = self.take(_H)
        if length > MAX_TEXT or len(self._body) - self._at < length:
            raise ReplicationProtocolError("a text field is too long or cut short.")
        raw = self._body[self._at : self._at + length]
        self._at += length
        try:
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise ReplicationProtocolError("a text field is not UTF-8.") from None

    def rest(self) -> bytes:
        rest = self._body[self._at :]
        self._at = len(self._body)
        return rest

    def end(self) -> None:
        if self._at != len(self._body):
            raise ReplicationProtocolError("a message has bytes after its last field.")


def decode_message(frame: Frame) -> Message:
    """The message a checked frame carries; raises `ReplicationProtocolError` if it is bad."""
    read = _Reader(frame.body)
    message: Message
    if frame.flags != 0:
        raise ReplicationProtocolError(f"a frame has flags {frame.flags:#x}; none are defined.")
    match frame.kind:
        case Kind.HELLO:
            service = read.text()
            generation, page_size, disk_size, count = read.take(_HELLO)
            if count > MAX_REGIONS:
                raise ReplicationProtocolError(f"a hello lists {count} regions.")
            regions = []
            for _ in range(count):
                name = read.text()
                (size,) = read.take(_Q)
                regions.append((name, size))
            message = Hello(
                service=service,
                generation=generation,
                page_size=page_size,
                disk_size=disk_size,
                regions=tuple(regions),
            )
        case Kind.WELCOME:
            message = Welcome(generation=read.take(_Q)[0])
        case Kind.REFUSE:
            reason = read.text()
            message = Refuse(reason=reason)
        case Kind.EPOCH_BEGIN:
            generation, epoch, full = read.take(_QQB)
            if full not in (0, 1):
                raise ReplicationProtocolError("an epoch's full flag is neither 0 nor 1.")
            message = EpochBegin(generation=generation, epoch=epoch, full=bool(full))
        case Kind.PAGES:
            region, count = read.take(_PAGES)
            if count > MAX_RUNS:
                raise ReplicationProtocolError(f"a Pages message lists {count} runs.")
            runs = tuple(
                (first, length) for first, length in (read.take(_RUN) for _ in range(count))
            )
            message = Pages(region=region, runs=runs, data=read.rest())
        case Kind.DISK_WRITE:
            (offset,) = read.take(_Q)
            message = DiskWrite(offset=offset, data=read.rest())
        case Kind.EPOCH_END:
            epoch, run_count, writes, digest = read.take(_END)
            message = EpochEnd(epoch=epoch, runs=run_count, writes=writes, digest=digest)
        case Kind.ACK:
            generation, epoch = read.take(_QQ)
            message = Ack(generation=generation, epoch=epoch)
        case Kind.HEARTBEAT:
            generation, epoch = read.take(_QQ)
            message = Heartbeat(generation=generation, epoch=epoch)
        case _:
            raise ReplicationProtocolError(f"frame kind {frame.kind} is not a message.")
    read.end()
    return message


class MessageDecoder:
    """A stream of bytes in, messages out; after an error the stream is done for."""

    def __init__(self) -> None:
        self._frames = FrameDecoder(FORMAT)
        self._error: ReplicationProtocolError | None = None

    @property
    def pending(self) -> int:
        return self._frames.pending

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Add bytes; return every message they complete, in order."""
        if self._error is not None:
            raise self._error
        try:
            return [decode_message(frame) for frame in self._frames.feed(data)]
        except FramingError as exc:
            self._error = ReplicationProtocolError(str(exc))
        except ReplicationProtocolError as exc:
            self._error = exc
        raise self._error


class EpochDigest:
    """The running digest of one epoch's page runs and disk writes (see the module docstring)."""

    def __init__(self) -> None:
        self._hash = xxhash.xxh3_64()
        self.runs = 0
        self.writes = 0

    def add(self, message: Pages | DiskWrite) -> None:
        for part in _body(message)[1]:
            self._hash.update(part)
        if isinstance(message, Pages):
            self.runs += 1
        else:
            self.writes += 1

    def end(self, epoch: int) -> EpochEnd:
        """The EpochEnd that closes the epoch as digested so far."""
        return EpochEnd(epoch=epoch, runs=self.runs, writes=self.writes, digest=self.digest)

    @property
    def digest(self) -> int:
        return int(self._hash.intdigest())


def epoch_messages(begin: EpochBegin, payload: Sequence[Pages | DiskWrite]) -> list[Message]:
    """An epoch as it goes on the stream: begin, runs and writes, and the end that seals them."""
    digest = EpochDigest()
    for message in payload:
        digest.add(message)
    return [begin, *payload, digest.end(begin.epoch)]
