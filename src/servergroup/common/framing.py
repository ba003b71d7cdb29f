"""Checked frames on a byte stream: one framing any TCP protocol of ours can use. Pure.

Theory of operation. A protocol that runs over a stream (the checkpoint
stream of replication first) cuts it into frames. Each frame is a fixed
24-byte header and a body, all integers in network byte order::

    magic     4 bytes  chosen by the protocol (tells streams apart)
    version   u8       the protocol's version
    kind      u8       what the body is, one of the protocol's kinds
    flags     u16      the protocol's own bits
    length    u32      body bytes, at most the protocol's `max_body`
    body hash u64      xxh3-64 of the body
    head crc  u32      CRC-32 of the 20 bytes above

then `length` bytes of body. The header CRC is checked before `length` is
believed, so garbage cannot make a reader wait for (or allocate) a body that
will never come; the body hash catches a corrupted body at 8+ GB/s, so large
bodies (pages of memory) cost little to check.

The decoder is strict, unlike a resynchronising one: a stream between two
processes of ours is either intact or broken (a bug, a bit flip, a foreign
client), so the first bad frame raises `FramingError` and every later
`feed` raises it again. The caller closes the connection.

Invariants: `FrameDecoder.feed` returns the same frames however the stream
is split, and raises nothing but `FramingError`; `encode_frame` output
decodes to the same frame; a frame header is produced only by
`frame_header`, so that a sender can write a large body without copying it
(`header, body` to `writelines`/`sendmsg`).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection
from dataclasses import dataclass

import xxhash

from servergroup.common.errors import RemoteError, UsageError

_HEADER = struct.Struct("!4sBBHIQI")
HEADER_SIZE = _HEADER.size
_CRC_AT = HEADER_SIZE - 4


class FramingError(RemoteError):
    """The stream does not carry valid frames of the expected protocol."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameFormat:
    """What one protocol's frames look like."""

    magic: bytes
    version: int
    kinds: Collection[int]
    max_body: int

    def __post_init__(self) -> None:
        if len(self.magic) != 4:
            raise UsageError("a frame magic is exactly 4 bytes.")
        if not 0 <= self.version <= 255:
            raise UsageError("a frame version is one byte.")
        if not 0 < self.max_body <= 0xFFFFFFFF:
            raise UsageError("a frame's max_body must fit 32 bits.")


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One checked frame."""

    kind: int
    flags: int
    body: bytes


def frame_header(
    fmt: FrameFormat, kind: int, *body: bytes | bytearray | memoryview, flags: int = 0
) -> bytes:
    """The header that frames the body made of the `body` parts (write it, then them)."""
    if kind not in fmt.kinds:
        raise UsageError(f"frame kind {kind} is not one of this protocol's.")
    length = sum(len(part) for part in body)
    if length > fmt.max_body:
        raise UsageError(f"a {length}-byte frame body is over the {fmt.max_body} allowed.")
    if not 0 <= flags <= 0xFFFF:
        raise UsageError("frame flags are 16 bits.")
    hasher = xxhash.xxh3_64()
    for part in body:
        hasher.update(part)
    head = _HEADER.pack(fmt.magic, fmt.version, kind, flags, length, hasher.intdigest(), 0)
    return head[:_CRC_AT] + zlib.crc32(head[:_CRC_AT]).to_bytes(4, "big")


def encode_frame(
    fmt: FrameFormat, kind: int, body: bytes | bytearray | memoryview, flags: int = 0
) -> bytes:
    """A whole frame as one byte string."""
    return frame_header(fmt, kind, body, flags=flags) + bytes(body)


class FrameDecoder:
    """Turns a stream, split anyhow, into frames; strict (see the module docstring)."""

    def __init__(self, fmt: FrameFormat) -> None:
        self._fmt = fmt
        self._kinds = frozenset(fmt.kinds)
        self._buffer = bytearray()
        self._error: FramingError | None = None
        #: The header of the frame whose body is awaited: (kind, flags, length, hash).
        self._header: tuple[int, int, int, int] | None = None

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer)

    @property
    def broken(self) -> bool:
        return self._error is not None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add bytes; return every frame they complete, in order."""
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        buffer += data
        out: list[Frame] = []
        start = 0
        try:
            while True:
                if self._header is None:
                    if len(buffer) - start < HEADER_SIZE:
                        break
                    self._header = self._parse_header(buffer, start)
                    start += HEADER_SIZE
                kind, flags, length, digest = self._header
                if len(buffer) - start < length:
                    break
                body = bytes(buffer[start : start + length])
                if xxhash.xxh3_64_intdigest(body) != digest:
                    raise FramingError(f"the body of a kind-{kind} frame does not match its hash.")
                out.append(Frame(kind=kind, flags=flags, body=body))
                self._header = None
                start += length
        except FramingError as exc:
            self._error = exc
            raise
        finally:
            del buffer[:start]
        return out

    def _parse_header(self, buffer: bytearray, start: int) -> tuple[int, int, int, int]:
        magic, version, kind, flags, length, digest, crc = _HEADER.unpack_from(buffer, start)
        if magic != self._fmt.magic:
            raise FramingError(f"the stream does not start frames with {self._fmt.magic!r}.")
        with memoryview(buffer) as view:
            if zlib.crc32(view[start : start + _CRC_AT]) != crc:
                raise FramingError("a frame header does not match its CRC.")
        if version != self._fmt.version:
            raise FramingError(f"frames of version {version}, not {self._fmt.version}.")
        if kind not in self._kinds:
            raise FramingError(f"frame kind {kind} is unknown.")
        if length > self._fmt.max_body:
            raise FramingError(
                f"a frame declares a {length}-byte body, over the {self._fmt.max_body} allowed."
            )
        return kind, flags, length, digest
