"""The exec port protocol: binary frames between the host's exec broker and the guest's exec agent.

Pure: no I/O, no asyncio, no clock.

Theory of operation. `servergroup server exec` on a qemu server runs a
command in the VM over a virtio-serial port of its own
(`org.servergroup.exec`). That port is one byte stream shared by every exec
session of the VM, so the stream carries *frames*, each tagged with the
session it belongs to. The same frames also travel between an exec client
and the broker on the host (one session per client connection).

A frame, all integers in network byte order::

    magic  b"SGEX"        4 bytes
    version u8            1
    type    u8            a `FrameType`
    session u32           0 only for RESET
    length  u32           payload bytes, at most MAX_PAYLOAD
    body crc u32          CRC-32 of the payload
    head crc u32          CRC-32 of the 18 bytes above
    payload length bytes

Who sends what:

- host -> guest: RESET (session field = the broker's connection epoch),
  OPEN (JSON `{"argv": [...], "env": {...}?, "cwd": "..."?}`), STDIN,
  STDIN_EOF, SIGNAL (u32 signal number, delivered to the process group).
- guest -> host: RESET (echoing the epoch it answers, or 0 when the agent
  has just started or seen the host come back: "I know no sessions"),
  STDOUT, STDERR, ERROR (one UTF-8 sentence), EXIT (u8 kind, u32 value:
  exited with a code or killed by a signal). Every session the agent
  accepts or refuses ends with exactly one EXIT; an ERROR before it says why.

Resynchronisation. The port outlives host connections: a frame cut in half
when one host went away can sit in the guest's decoder when the next one
connects. `ExecDecoder` therefore trusts nothing unchecked: a header counts
only when its magic, version, type, length bound and head CRC agree (so
garbage cannot make it wait for a payload that will never come), and a frame
only when its payload matches the body CRC.
Anything else costs one byte: the decoder skips to the next magic and counts
what it skipped. A half frame waiting for the rest of its payload is
completed by the next bytes and fails its CRC; to make that happen promptly,
whoever (re)connects sends `encode_sync()` first: SYNC_PADDING zero bytes
(enough to complete any half frame) and then a RESET frame.

Invariants: `ExecDecoder.feed` never raises on any input, holds at most one
maximal frame plus the bytes of one call, and returns the same frames
however the stream is cut. `decode_frame` and the `decode_*` payload codecs
raise only `ExecProtocolError` on bad input; the encoders raise `UsageError`
when called with values the wire cannot carry.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum

from servergroup.common.errors import RemoteError, UsageError

MAGIC = b"SGEX"
VERSION = 1
#: The largest payload of one frame; a longer one is a protocol error.
MAX_PAYLOAD = 64 * 1024
#: The longest ERROR sentence, in bytes of UTF-8.
MAX_ERROR = 1024
_HEADER = struct.Struct("!4sBBIIII")
HEADER_SIZE = _HEADER.size
#: The largest frame on the wire.
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD
#: Zero bytes sent before a RESET on (re)connection: enough to complete any half frame.
SYNC_PADDING = MAX_FRAME
_U32 = struct.Struct("!I")
_EXIT = struct.Struct("!BI")
_MAX_U32 = 0xFFFFFFFF

#: Shell exit status for a command that was not found.
STATUS_NOT_FOUND = 127
#: Shell exit status for a command that was found but could not be run.
STATUS_CANNOT_RUN = 126


class ExecProtocolError(RemoteError):
    """A peer sent bytes that are not a valid exec frame or payload; the message says why."""


class FrameType(IntEnum):
    """The `type` byte of a frame."""

    OPEN = 1
    STDIN = 2
    STDIN_EOF = 3
    SIGNAL = 4
    STDOUT = 5
    STDERR = 6
    EXIT = 7
    ERROR = 8
    RESET = 9


class ExitKind(IntEnum):
    """How a session's process ended."""

    EXITED = 0
    SIGNALLED = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One frame: its type, the session it belongs to and its raw payload."""

    type: FrameType
    session: int
    payload: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenRequest:
    """What to run: `argv` (argv[0] looked up in PATH), extra `env` over the agent's, `cwd`."""

    argv: tuple[str, ...]
    env: Mapping[str, str] | None = None
    cwd: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitStatus:
    """How a process ended: exited with `value` as its code, or killed by signal `value`."""

    kind: ExitKind
    value: int

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitStatus:
        """From a `subprocess` return code (negative: killed by that signal)."""
        if returncode < 0:
            return cls(kind=ExitKind.SIGNALLED, value=-returncode)
        return cls(kind=ExitKind.EXITED, value=returncode)

    @property
    def shell_status(self) -> int:
        """The status a shell reports: the code, or 128 + the signal number."""
        if self.kind is ExitKind.SIGNALLED:
            return 128 + self.value
        return self.value


# -- frames ------------------------------------------------------------------------------


def encode_frame(frame: Frame) -> bytes:
    """The bytes of `frame` on the wire; `UsageError` if it cannot be carried."""
    if not 0 <= frame.session <= _MAX_U32:
        raise UsageError(f"session id {frame.session} does not fit in 32 bits.")
    if len(frame.payload) > MAX_PAYLOAD:
        raise UsageError(
            f"a frame payload of {len(frame.payload)} bytes is over the {MAX_PAYLOAD} allowed."
        )
    head = _HEADER.pack(
        MAGIC, VERSION, frame.type, frame.session, len(frame.payload), zlib.crc32(frame.payload), 0
    )[: HEADER_SIZE - 4]
    return head + _U32.pack(zlib.crc32(head)) + frame.payload


def decode_frame(data: bytes) -> Frame:
    """Exactly one frame from `data`; `ExecProtocolError` saying why not otherwise."""
    if len(data) < HEADER_SIZE:
        raise ExecProtocolError(f"{len(data)} bytes are too short for a frame header.")
    header = _parse_header(data, 0)
    if isinstance(header, str):
        raise ExecProtocolError(header)
    kind, session, length = header
    if len(data) != HEADER_SIZE + length:
        raise ExecProtocolError(
            f"the frame declares {length} payload bytes but {len(data) - HEADER_SIZE} follow."
        )
    if not _crc_ok(data, 0, length):
        raise ExecProtocolError("the frame's payload does not match its CRC.")
    return Frame(type=kind, session=session, payload=bytes(data[HEADER_SIZE:]))


def encode_sync(epoch: int) -> bytes:
    """What a side sends on (re)connection: zero padding, then RESET for `epoch`."""
    return bytes(SYNC_PADDING) + encode_frame(Frame(type=FrameType.RESET, session=epoch))


def data_frames(kind: FrameType, session: int, data: bytes) -> Iterator[bytes]:
    """`data` as encoded frames of `kind`, each payload at most MAX_PAYLOAD bytes."""
    view = memoryview(data)
    for start in range(0, len(view), MAX_PAYLOAD):
        yield encode_frame(
            Frame(type=kind, session=session, payload=bytes(view[start : start + MAX_PAYLOAD]))
        )


def _parse_header(data: bytes | bytearray, at: int) -> tuple[FrameType, int, int] | str:
    """(type, session, payload length) of the header at `at`, or one sentence on why it is bad."""
    magic, version, kind, session, length, _body_crc, head_crc = _HEADER.unpack_from(data, at)
    if magic != MAGIC:
        return "the frame does not start with the magic bytes."
    with memoryview(data) as view:
        if zlib.crc32(view[at : at + HEADER_SIZE - 4]) != head_crc:
            return "the frame header's CRC does not match it."
    if version != VERSION:
        return f"the frame has protocol version {version}, not {VERSION}."
    if kind not in _TYPES:
        return f"the frame type {kind} is unknown."
    if length > MAX_PAYLOAD:
        return f"the frame declares {length} payload bytes, over the {MAX_PAYLOAD} allowed."
    return FrameType(kind), session, length


def _crc_ok(data: bytes | bytearray, at: int, length: int) -> bool:
    """Whether the payload of the frame at `at` matches its body CRC."""
    declared: int = _U32.unpack_from(data, at + HEADER_SIZE - 8)[0]
    # Release the view before returning: the decoder resizes its bytearray next.
    with memoryview(data) as view:
        crc = zlib.crc32(view[at + HEADER_SIZE : at + HEADER_SIZE + length])
    return crc == declared


_TYPES = frozenset(int(t) for t in FrameType)


class ExecDecoder:
    """Turns arbitrary chunks of a frame stream into frames, skipping what is not one."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        #: Bytes dropped while looking for a valid frame, since this decoder was made.
        self.skipped = 0
        #: Of those, the bytes that were not zero: zeros are mostly sync padding.
        self.garbage = 0

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished frame (at most MAX_FRAME - 1 between calls)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Every valid frame completed by `data`, in order. Never raises on any input."""
        buf = self._buffer
        buf += data
        out: list[Frame] = []
        pos = 0
        while True:
            start = buf.find(MAGIC, pos)
            if start < 0:
                # Keep a tail that may be the start of a magic cut by the chunk boundary.
                keep = max(pos, len(buf) - (len(MAGIC) - 1))
                self._skip(pos, keep)
                del buf[:keep]
                return out
            self._skip(pos, start)
            pos = start
            if len(buf) - pos < HEADER_SIZE:
                break
            header = _parse_header(buf, pos)
            if isinstance(header, str):
                self._skip(pos, pos + 1)
                pos += 1
                continue
            kind, session, length = header
            if len(buf) - pos < HEADER_SIZE + length:
                break
            if not _crc_ok(buf, pos, length):
                self._skip(pos, pos + 1)
                pos += 1
                continue
            body = bytes(buf[pos + HEADER_SIZE : pos + HEADER_SIZE + length])
            out.append(Frame(type=kind, session=session, payload=body))
            pos += HEADER_SIZE + length
        del buf[:pos]
        return out

    def _skip(self, start: int, end: int) -> None:
        self.skipped += end - start
        self.garbage += end - start - self._buffer.count(0, start, end)


# -- payloads ----------------------------------------------------------------------------


def encode_open(request: OpenRequest) -> bytes:
    """The JSON payload of an OPEN frame."""
    if not request.argv:
        raise UsageError("a command needs at least one word.")
    body: dict[str, object] = {"argv": list(request.argv)}
    if request.env is not None:
        body["env"] = dict(request.env)
    if request.cwd is not None:
        body["cwd"] = request.cwd
    # ASCII JSON: arguments that came from undecodable bytes (lone surrogates,
    # Python's surrogateescape) travel as \udcXX escapes and come back unchanged.
    raw = json.dumps(body, separators=(",", ":")).encode("ascii")
    if len(raw) > MAX_PAYLOAD:
        raise UsageError(f"the command and its environment are over {MAX_PAYLOAD} bytes.")
    return raw


def decode_open(payload: bytes) -> OpenRequest:
    """The request in an OPEN payload; `ExecProtocolError` if it is not a valid one."""
    try:
        body = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ExecProtocolError("the OPEN request is not JSON.") from None
    if not isinstance(body, dict):
        raise ExecProtocolError("the OPEN request is not a JSON object.")
    argv = body.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ExecProtocolError("the OPEN request's argv is not a non-empty list of strings.")
    if any("\0" in a for a in argv) or not argv[0]:
        raise ExecProtocolError("the OPEN request's argv has an empty command or a NUL.")
    env = body.get("env")
    if env is not None and not (
        isinstance(env, dict)
        and all(
            isinstance(v, str) and k and "=" not in k and "\0" not in k + v for k, v in env.items()
        )
    ):
        raise ExecProtocolError("the OPEN request's env is not an object of names to strings.")
    cwd = body.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or not cwd or "\0" in cwd):
        raise ExecProtocolError("the OPEN request's cwd is not a path.")
    return OpenRequest(argv=tuple(argv), env=env, cwd=cwd)


def encode_signal(signum: int) -> bytes:
    """The payload of a SIGNAL frame."""
    if not 0 < signum <= _MAX_U32:
        raise UsageError(f"{signum} is not a signal number.")
    return _U32.pack(signum)


def decode_signal(payload: bytes) -> int:
    """The signal number in a SIGNAL payload."""
    if len(payload) != _U32.size:
        raise ExecProtocolError(f"a SIGNAL payload has {len(payload)} bytes, not 4.")
    (signum,) = _U32.unpack(payload)
    if signum == 0:
        raise ExecProtocolError("a SIGNAL payload names signal 0.")
    return int(signum)


def encode_exit(status: ExitStatus) -> bytes:
    """The payload of an EXIT frame."""
    if not 0 <= status.value <= _MAX_U32:
        raise UsageError(f"exit value {status.value} does not fit in 32 bits.")
    return _EXIT.pack(status.kind, status.value)


def decode_exit(payload: bytes) -> ExitStatus:
    """The status in an EXIT payload."""
    if len(payload) != _EXIT.size:
        raise ExecProtocolError(f"an EXIT payload has {len(payload)} bytes, not {_EXIT.size}.")
    kind, value = _EXIT.unpack(payload)
    if kind not in (ExitKind.EXITED, ExitKind.SIGNALLED):
        raise ExecProtocolError(f"an EXIT payload has the unknown kind {kind}.")
    return ExitStatus(kind=ExitKind(kind), value=value)


def encode_error(sentence: str) -> bytes:
    """The payload of an ERROR frame: the sentence in UTF-8, cut to MAX_ERROR bytes."""
    raw = sentence.encode("utf-8", "replace")
    if len(raw) > MAX_ERROR:
        raw = raw[: MAX_ERROR - 3].decode("utf-8", "ignore").encode("utf-8") + b"..."
    return raw


def decode_error(payload: bytes) -> str:
    """The sentence in an ERROR payload."""
    if len(payload) > MAX_ERROR:
        raise ExecProtocolError(f"an ERROR payload of {len(payload)} bytes is too long.")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ExecProtocolError("an ERROR payload is not UTF-8 text.") from None
