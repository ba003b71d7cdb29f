"""Guest-host protocol version 2: envelopes and channel framing. Pure: no I/O, no clock.

Theory of operation. Every message between an application, the guest agent,
the host relay and a host-side application is an *envelope*: one JSON object
with `"version": 2`, an object `data` that the agents never look inside, and
up to four address fields (spec section 3). `decode_envelope` is the one
place where untrusted bytes become an `Envelope`; it either returns a
well-formed envelope or raises `ProtocolError`, never anything else.

The channel between a guest and its host is a byte stream of
newline-delimited JSON (spec section 2). `ChannelDecoder` turns arbitrary
chunks of that stream into envelopes:

- it splits on b"\\n" and ignores empty (or blank) pieces, so the guest's
  leading newline and the host's bare trailing one frame the same way;
- a piece that is not a valid envelope becomes a `Dropped` item and the
  decoder carries on with the next piece (the "reset and carry on" rule);
- the result does not depend on how the stream was cut into chunks;
- a line longer than `max_line` is discarded up to its newline while only a
  byte count is kept, so memory stays bounded by `max_line` whatever a peer
  sends; it is reported once, as one `Dropped`, when its newline arrives.

`feed` never raises on anything a peer sends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import StrEnum
from json.encoder import encode_basestring as _encode_basestring
from typing import TypeAlias, TypeVar

from servergroup.common.errors import RemoteError, UsageError

VERSION = 2
MESSAGING_ADDR = "cgcs.messaging"
SERVER_GROUP_ADDR = "cgcs.server_grp"
SCALE_ADDR = "cgcs.scale"
#: Longest application address, in bytes (16 with the C library's NUL).
MAX_ADDR_LENGTH = 15
#: Longest instance name, in bytes.
MAX_INSTANCE_LENGTH = 20
#: Longest datagram delivered to an application: the original libraries
#: receive into 4096-byte buffers, so a datagram must stay under 4096 bytes.
MAX_DATAGRAM = 4095
#: The largest datagram accepted FROM an application. Larger than what is
#: delivered: json-c (the original library) writes '/' as '\/', so a legal
#: 3050-byte broadcast can arrive as a datagram over 4095 bytes; it must reach
#: the group service, to be delivered (re-encoded, smaller) or refused with a
#: nack, never dropped in silence. 64 KiB datagrams are still refused.
MAX_APP_DATAGRAM = 32768
#: Longest channel line accepted, in bytes (without its newline).
MAX_LINE = 65536
#: Deepest JSON nesting accepted (json-c, which the original programs parse
#: with, stops at 32 levels by default; it also keeps Python's recursion safe).
MAX_DEPTH = 32

Json: TypeAlias = "bool | int | float | str | list[Json] | dict[str, Json] | None"
JsonObject: TypeAlias = "dict[str, Json]"

#: Field order on the wire: version first, data last, as the spec shows them.
_FIELD_ORDER = ("dest_addr", "dest_instance", "source_addr", "source_instance")
#: One encoder of each kind for every message (`json.dumps` with an option builds one
#: per call, a good part of the cost of a small message).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ENCODER_ASCII = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def json_string(text: str) -> str:
    """`json.dumps(text, ensure_ascii=False)`: a JSON string, non-ASCII kept (the C encoder)."""
    return _encode_basestring(text)


class ProtocolError(RemoteError):
    """A peer sent something we cannot use; the message is one sentence saying why."""


class DropReason(StrEnum):
    """Why `ChannelDecoder` dropped a piece of the stream."""

    GARBAGE = "garbage"
    BAD_ENVELOPE = "bad envelope"
    LINE_TOO_LONG = "line too long"


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """One protocol-v2 message; `data` is opaque to the agents."""

    data: JsonObject
    dest_addr: str | None = None
    source_addr: str | None = None
    dest_instance: str | None = None
    source_instance: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Dropped:
    """A piece of the channel stream that was not a usable envelope (an event)."""

    reason: str
    size: int
    detail: str = ""


# --- records made once per message ----------------------------------------------------

_T = TypeVar("_T")


def record_builder(cls: type[_T]) -> Callable[..., _T]:
    """A function making an instance of `cls`, a frozen slotted dataclass of 3 or 5 fields.

    It takes every field positionally, in their order, and sets each through
    its slot, unchecked: a third of the time of the class's own `__init__`,
    which sets each field by `object.__setattr__` (what the records made
    once per message pay: envelopes, datagrams, received broadcasts). The
    instance is the same as the class's own (equal, same hash, same repr).
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    if len(names) not in (3, 5) or hasattr(cls, "__post_init__") or "__slots__" not in vars(cls):
        raise UsageError(
            f"record_builder takes a slotted dataclass of 3 or 5 fields, not {cls.__name__}."
        )
    setters = [vars(cls)[name].__set__ for name in names]
    new = object.__new__
    if len(names) == 3:
        set_a, set_b, set_c = setters

        def build3(a: object, b: object, c: object) -> _T:
            obj = new(cls)
            set_a(obj, a)
            set_b(obj, b)
            set_c(obj, c)
            return obj

        return build3
    set_a, set_b, set_c, set_d, set_e = setters

    def build5(a: object, b: object, c: object, d: object, e: object) -> _T:
        obj = new(cls)
        set_a(obj, a)
        set_b(obj, b)
        set_c(obj, c)
        set_d(obj, d)
        set_e(obj, e)
        return obj

    return build5


# --- envelopes ----------------------------------------------------------------------


def encode_envelope(env: Envelope) -> bytes:
    """Compact JSON of `env`: `version` first, then the addresses present, `data` last.

    Non-ASCII text stays UTF-8, as the original's json-c wrote it, so that a
    3050-byte broadcast in any script fits in one 4096-byte datagram; control
    characters are escaped, so the bytes never contain a raw newline (UTF-8
    continuation bytes are all >= 0x80). Raises `UsageError` when `data` holds
    something JSON cannot represent (NaN, infinities, non-string keys, other
    Python objects); text with a lone surrogate, which UTF-8 cannot hold, is
    written with every non-ASCII character escaped.
    """
    obj: dict[str, object] = {"version": VERSION}
    for field in _FIELD_ORDER:
        value = getattr(env, field)
        if value is not None:
            obj[field] = value
    obj["data"] = env.data
    try:
        text = _ENCODER.encode(obj)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (JSON allows "\ud800"; UTF-8 does not): relay it escaped.
            return _ENCODER_ASCII.encode(obj).encode("ascii")
    except (TypeError, ValueError, RecursionError) as exc:
        raise UsageError(f"the envelope's data cannot be encoded as JSON: {exc}.") from None


def decode_envelope(raw: bytes) -> Envelope:
    """The envelope in `raw` (one JSON object, UTF-8), or `ProtocolError` saying why not."""
    return envelope_from_json(parse_json(raw))


def parse_json(raw: bytes) -> Json:
    """Parse one JSON value from UTF-8 `raw`; `ProtocolError` if it is not JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("the message is not UTF-8 text.") from None
    try:
        value: Json = _DECODER.decode(text)
    except RecursionError:
        raise ProtocolError(f"the JSON is nested deeper than {MAX_DEPTH} levels.") from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise ProtocolError(f"the message is not JSON ({_first_line(exc)}).") from None
    # Every container of the value opened with one of these bytes: when there are
    # few, the value cannot be deep, and walking it (most of the cost) is skipped.
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise ProtocolError(f"the JSON is nested deeper than {MAX_DEPTH} levels.")
    return value


def envelope_from_json(value: Json, source_instance: str | None = None) -> Envelope:
    """Check a parsed message against the envelope rules of spec section 3.

    `source_instance`, when given, replaces the message's own (which must
    still be valid): the relay stamps what comes from a guest with its name.
    """
    if not isinstance(value, dict):
        raise ProtocolError(f"the message is a JSON {_kind(value)}, not an object.")
    version = value.get("version")
    if type(version) is not int or version != VERSION:
        raise ProtocolError(f"the message has version {_show(version)}, not {VERSION}.")
    data = value.get("data")
    if not isinstance(data, dict):
        what = "no data" if "data" not in value else f"data that is a JSON {_kind(data)}"
        raise ProtocolError(f"the message has {what}, not an object.")
    dest_addr = _address(value, "dest_addr", MAX_ADDR_LENGTH)
    source_addr = _address(value, "source_addr", MAX_ADDR_LENGTH)
    dest_instance = _address(value, "dest_instance", MAX_INSTANCE_LENGTH)
    own_instance = _address(value, "source_instance", MAX_INSTANCE_LENGTH)
    return _envelope(
        data,
        dest_addr,
        source_addr,
        dest_instance,
        own_instance if source_instance is None else source_instance,
    )


#: `Envelope(data, dest_addr, source_addr, dest_instance, source_instance)`, made per message.
_envelope = record_builder(Envelope)


def _address(value: JsonObject, field: str, limit: int) -> str | None:
    if field not in value:
        return None
    address = value[field]
    if not isinstance(address, str):
        raise ProtocolError(f"{field} is a JSON {_kind(address)}, not a string.")
    try:
        size = len(address.encode("utf-8"))
    except UnicodeEncodeError:
        raise ProtocolError(f"{field} is not valid Unicode text.") from None
    if not 0 < size <= limit:
        raise ProtocolError(f"{field} is {size} bytes long; it must be 1 to {limit}.")
    if "\0" in address:
        raise ProtocolError(f"{field} contains a NUL character.")
    return address


def _refuse_constant(name: str) -> Json:
    raise ValueError(f"{name} is not JSON")


#: One decoder for every message (`json.loads` with an option builds one per call).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _depth(value: Json) -> int:
    """Nesting depth of containers (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Json, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: list[Json] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, depth) for child in children)
    return deepest


def _kind(value: Json) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _show(value: Json) -> str:
    text = json.dumps(value) if value is not None else "missing"
    return text if len(text) <= 20 else text[:17] + "..."


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# --- channel framing ----------------------------------------------------------------


def encode_guest_frame(env: Envelope) -> bytes:
    """What the guest agent writes on the channel: b"\\n" + json + b"\\n" (spec section 2)."""
    return b"\n" + encode_envelope(env) + b"\n"


def encode_host_frame(env: Envelope) -> bytes:
    """What the host writes on the channel: json + b"\\n" (spec section 2)."""
    return encode_envelope(env) + b"\n"


def host_frame_with(dest_addr: str, source_addr: str, data_json: bytes) -> bytes:
    """`encode_host_frame` of an envelope whose `data` is already compact JSON.

    The same bytes as `encode_host_frame(Envelope(data=json.loads(data_json),
    dest_addr=dest_addr, source_addr=source_addr))` when `data_json` is what
    `encode_envelope`'s encoder writes for that object; the group service
    builds each broadcast's frame this way, once per address.
    """
    return b"".join(
        (
            b'{"version":2,"dest_addr":',
            json_string(dest_addr).encode("utf-8"),
            b',"source_addr":',
            json_string(source_addr).encode("utf-8"),
            b',"data":',
            data_json,
            b"}\n",
        )
    )


class ChannelDecoder:
    """Splits a channel byte stream into envelopes and drops; see the module docstring."""

    def __init__(self, max_line: int = MAX_LINE, *, source_instance: str | None = None) -> None:
        """`source_instance`: when given, every envelope decoded carries it (`decode_line`)."""
        if max_line < 1:
            raise UsageError("max_line must be at least 1.")
        self._max_line = max_line
        self._source_instance = source_instance
        self._partial = bytearray()
        # While discarding an over-long line: how many bytes it has had so far.
        self._discarded: int | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished line (never more than `max_line`)."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[Envelope | Dropped]:
        """Every complete line in what has arrived so far, in order."""
        out: list[Envelope | Dropped] = []
        for line in self.feed_lines(data):
            if isinstance(line, Dropped):
                out.append(line)
            else:
                self._line(line, out)
        return out

    def feed_lines(self, data: bytes) -> list[bytes | Dropped]:
        """Every complete line in what has arrived so far, in order, not parsed yet.

        Over-long lines come out as `Dropped`; empty ones are left out. `decode_line`
        parses one (what `feed` does for each).
        """
        out: list[bytes | Dropped] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._keep(data, start)
                return out
            if self._discarded is not None:
                size = self._discarded + end - start
                self._discarded = None
                out.append(_too_long(size, self._max_line))
            elif len(self._partial) + end - start > self._max_line:
                out.append(_too_long(len(self._partial) + end - start, self._max_line))
                self._partial.clear()
            elif self._partial:
                self._partial += data[start:end]
                line = bytes(self._partial)
                self._partial.clear()
                if line.strip():
                    out.append(line)
            else:
                line = data[start:end]
                if line.strip():
                    out.append(line)
            start = end + 1

    def _keep(self, data: bytes, start: int) -> None:
        rest = len(data) - start
        if self._discarded is not None:
            self._discarded += rest
        elif len(self._partial) + rest > self._max_line:
            self._discarded = len(self._partial) + rest
            self._partial.clear()
        else:
            self._partial += data[start:]

    def _line(self, line: bytes, out: list[Envelope | Dropped]) -> None:
        out.append(decode_line(line, self._source_instance))


def decode_line(line: bytes, source_instance: str | None = None) -> Envelope | Dropped:
    """The envelope on one channel line, or why it is dropped (garbage, a bad envelope).

    `source_instance`, when given, replaces the envelope's own (`envelope_from_json`).
    """
    try:
        value = parse_json(line)
    except ProtocolError as exc:
        return Dropped(reason=DropReason.GARBAGE, size=len(line), detail=str(exc))
    try:
        return envelope_from_json(value, source_instance)
    except ProtocolError as exc:
        return Dropped(reason=DropReason.BAD_ENVELOPE, size=len(line), detail=str(exc))


#: How every host frame `encode_host_frame` writes for an application starts.
_FRAME_HEAD = b'{"version":2,"dest_addr":"'
#: What may follow the destination in a frame whose delivery is a plain cut.
_FRAME_NEXT = (b',"source_addr":"', b',"data":{')
_PLAIN_ADDR = re.compile(rb"[A-Za-z0-9._-]{1,%d}" % MAX_ADDR_LENGTH)


def delivery_of_frame(line: bytes) -> tuple[str, bytes] | None:
    """(destination, datagram) for a host frame in the form this project writes; else None.

    A frame `{"version":2,"dest_addr":"D",<rest>` whose rest names no
    destination instance is delivered as `{"version":2,<rest>`: the bytes
    `encode_delivery` would make from it, without parsing and encoding the
    JSON again (the agent does this for every message to every application).
    Anything else (another key order, an escaped or unusual address, a
    `dest_instance`) returns None: parse it with `decode_line`.
    """
    head = len(_FRAME_HEAD)
    if not line.startswith(_FRAME_HEAD) or not line.endswith(b"}}"):
        return None
    close = line.find(b'"', head)
    if close < 0 or not line.startswith(_FRAME_NEXT, close + 1):
        return None
    dest = line[head:close]
    if _PLAIN_ADDR.fullmatch(dest) is None:
        return None
    return dest.decode("ascii"), b'{"version":2' + line[close + 1 :]


#: How a datagram this project's client library writes starts (and what follows its destination).
_APP_HEAD = b'{"version":2,"dest_addr":"'
_APP_NEXT = b'","data":{'


def guest_frame_of_datagram(raw: bytes, source_addr: str) -> bytes | None:
    """The guest frame for an application's datagram in the form this project writes; else None.

    A datagram `{"version":2,"dest_addr":"D","data":{...}}` (D a plain
    address; exactly those three keys, checked by a full parse with every
    rule of `decode_envelope`; no raw newline) becomes the frame of its
    envelope with `source_addr` added, its `data` kept as the application
    wrote it rather than parsed and encoded again. For what the client
    library sends these are the bytes `encode_guest_frame` would make; for
    another writer's spacing or escapes, the same JSON. Anything else returns
    None: take the general path (`decode_envelope`, then `encode_guest_frame`).
    """
    head = len(_APP_HEAD)
    if not raw.startswith(_APP_HEAD):
        return None
    close = raw.find(b'"', head)
    if close < 0 or not raw.startswith(_APP_NEXT, close) or b"\n" in raw:
        return None
    dest = raw[head:close]
    if _PLAIN_ADDR.fullmatch(dest) is None:
        return None
    try:
        value = parse_json(raw)
    except ProtocolError:
        return None
    if (
        type(value) is not dict
        or len(value) != 3
        or type(value.get("version")) is not int
        or value["version"] != VERSION
        or value.get("dest_addr") != dest.decode("ascii")
        or type(value.get("data")) is not dict
    ):
        return None
    try:
        source = json_string(source_addr).encode("utf-8")
    except UnicodeEncodeError:
        return None
    return b"".join(
        (
            b"\n",
            raw[: close + 1],
            b',"source_addr":',
            source,
            raw[close + 1 :],
            b"\n",
        )
    )


def _too_long(size: int, limit: int) -> Dropped:
    return Dropped(
        reason=DropReason.LINE_TOO_LONG,
        size=size,
        detail=f"a line of {size} bytes is longer than the {limit} accepted.",
    )
