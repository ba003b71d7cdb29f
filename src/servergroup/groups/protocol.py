"""The server-group messages inside an envelope's `data` (spec section 4), pure.

Theory of operation: every inner message is a JSON object with `"version": 2`
and a `msg_type`; `decode_group_message` turns one into a frozen dataclass
or raises `ProtocolError` with one sentence (missing key, wrong version,
unknown `msg_type`, wrong type), and `encode_group_message` is its inverse:
`decode(encode(m)) == m` for every message. Keys are written in a fixed
order (`version`, `msg_type`, then the table's order) so the bytes are
stable; readers must not depend on it.

Departures from the original, all listed in spec section 6 or the issue:
- A relayed broadcast carries `"version": 2` as an integer, not the string
  `"version"`.
- `status_response_done` carries no `data`.
- A relayed broadcast may carry `seq`, the group's sequence number (its
  place in the group's one order; `groups.sequencing`); old clients ignore
  the extra key.
- `subscribe` / `unsubscribe` (no other keys) are ours: an app bound at an
  address other than `cgcs.server_grp` asks the host to send it the group's
  traffic (broadcasts and notifications) too.
- A broadcast from a guest may carry `id` (ours: a non-negative integer, one
  per broadcast, increasing per sending address). The host then answers with
  `broadcast_ack` (ours: `id`, `seq`) once the broadcast is in the store:
  every broadcast of that address with an id up to `id` is acknowledged, the
  one with `id` got the group's sequence number `seq`. A refused broadcast
  gets a `nack` carrying its `id`, always sent before an ack that passes it.
  Old applications send no `id` and never see either extension.

`check_broadcast_text` is the rule the original declared and never enforced:
at most 3050 bytes of UTF-8, no NUL, no newline. It also checks that the
delivered datagram, with the widest addresses, fits under 4096 bytes: the
envelope encoder escapes non-ASCII and control characters as `\\uXXXX`, so a
text of 3050 bytes can grow to several times that.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from servergroup.guestcomm.protocol import (
    MAX_ADDR_LENGTH,
    MAX_DATAGRAM,
    MAX_INSTANCE_LENGTH,
    SERVER_GROUP_ADDR,
    VERSION,
    Envelope,
    Json,
    JsonObject,
    ProtocolError,
    encode_envelope,
    json_string,
)

#: The longest broadcast text, in bytes of UTF-8 (seed 000: "up to 3050 bytes").
MAX_BROADCAST_BYTES: Final = 3050
#: The widest values a delivered broadcast can carry, for its worst-case size.
_WORST_ADDR: Final = "x" * MAX_ADDR_LENGTH
_WORST_INSTANCE: Final = "x" * MAX_INSTANCE_LENGTH
_WORST_SEQ: Final = -(2**63)


class MsgType(enum.Enum):
    """The `msg_type` values of server-group messages."""

    BROADCAST = "broadcast"
    STATUS_QUERY = "status_query"
    STATUS_RESPONSE = "status_response"
    STATUS_RESPONSE_DONE = "status_response_done"
    NOTIFICATION = "notification"
    NACK = "nack"
    BROADCAST_ACK = "broadcast_ack"  # ours
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"


class UnknownMessageType(ProtocolError):
    """A well-formed message whose `msg_type` we do not know (answered with a nack)."""

    def __init__(self, msg_type: str) -> None:
        super().__init__(f"unknown msg_type {msg_type!r}")
        self.msg_type = msg_type


@dataclass(frozen=True, slots=True, kw_only=True)
class Broadcast:
    """A broadcast: guest -> host (text, optional `id`), host -> guest (with sender and seq)."""

    text: str
    source_instance: str | None = None
    seq: int | None = None
    #: Guest -> host (ours): the sender wants a `broadcast_ack` (or a nack) naming this id.
    id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusQuery:
    """Guest -> host: the status of every member of my group, please."""

    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusResponse:
    """Host -> guest: one member's server info, for query `seq`."""

    seq: int
    server: JsonObject


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusResponseDone:
    """Host -> guest: every member of query `seq` was sent."""

    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """Host -> guest: a member changed (`event_type`, `priority`, `timestamp`, `payload`)."""

    event: JsonObject


@dataclass(frozen=True, slots=True, kw_only=True)
class Nack:
    """Host -> guest: a request of type `orig_msg_type` was refused, and why."""

    orig_msg_type: str
    log_msg: str
    #: Ours: the `id` of the refused broadcast, when it carried one.
    id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BroadcastAck:
    """Host -> guest (ours): the sender's broadcasts with an id up to `id` are in the store.

    `seq` is the group sequence number the broadcast with `id` got.
    """

    id: int
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribe:
    """Guest -> host (ours): send the group's traffic to my address too."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Unsubscribe:
    """Guest -> host (ours): stop sending the group's traffic to my address."""


GroupMessage = (
    Broadcast
    | StatusQuery
    | StatusResponse
    | StatusResponseDone
    | Notification
    | Nack
    | BroadcastAck
    | Subscribe
    | Unsubscribe
)


def msg_type_of(msg: GroupMessage) -> MsgType:
    """The wire `msg_type` of a message."""
    return _TYPE_OF[type(msg)]


def encode_group_message(msg: GroupMessage) -> JsonObject:
    """The JSON object for `msg`, keys in a fixed order."""
    obj: JsonObject = {"version": VERSION, "msg_type": msg_type_of(msg).value}
    match msg:
        case Broadcast(text=text, source_instance=source, seq=seq, id=ident):
            obj["data"] = text
            if source is not None:
                obj["source_instance"] = source
            if seq is not None:
                obj["seq"] = seq
            if ident is not None:
                obj["id"] = ident
        case StatusQuery(seq=seq) | StatusResponseDone(seq=seq):
            obj["seq"] = seq
        case StatusResponse(seq=seq, server=server):
            obj["seq"] = seq
            obj["data"] = server
        case Notification(event=event):
            obj["data"] = event
        case Nack(orig_msg_type=orig, log_msg=log_msg, id=ident):
            obj["orig_msg_type"] = orig
            obj["log_msg"] = log_msg
            if ident is not None:
                obj["id"] = ident
        case BroadcastAck(id=ident, seq=seq):
            obj["id"] = ident
            obj["seq"] = seq
        case Subscribe() | Unsubscribe():
            pass
    return obj


def _field(obj: JsonObject, key: str, what: str) -> Json:
    if key not in obj:
        raise ProtocolError(f"{what} message has no {key!r}")
    return obj[key]


def _str(obj: JsonObject, key: str, what: str) -> str:
    value = _field(obj, key, what)
    if not isinstance(value, str):
        raise ProtocolError(f"{what} message has a {key!r} that is not a string")
    return value


def _int(obj: JsonObject, key: str, what: str) -> int:
    value = _field(obj, key, what)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{what} message has a {key!r} that is not an integer")
    return value


def _object(obj: JsonObject, key: str, what: str) -> JsonObject:
    value = _field(obj, key, what)
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} message has a {key!r} that is not a JSON object")
    return value


def _optional_str(obj: JsonObject, key: str, what: str) -> str | None:
    return None if obj.get(key) is None else _str(obj, key, what)


def _optional_int(obj: JsonObject, key: str, what: str) -> int | None:
    return None if obj.get(key) is None else _int(obj, key, what)


def _optional_id(obj: JsonObject, what: str) -> int | None:
    ident = _optional_int(obj, "id", what)
    if ident is not None and ident < 0:
        raise ProtocolError(f"the {what}'s 'id' is negative")
    return ident


def decode_group_message(obj: Json) -> GroupMessage:
    """The message in `obj` (an envelope's `data`); raises `ProtocolError`.

    Unknown extra keys are ignored (a newer peer may add some); an unknown
    `msg_type` raises `UnknownMessageType`, a `ProtocolError` that names it.
    """
    if not isinstance(obj, dict):
        raise ProtocolError("the server-group message is not a JSON object")
    version = obj.get("version")
    if "version" not in obj:
        raise ProtocolError("the server-group message has no 'version'")
    if version != VERSION or isinstance(version, bool) or not isinstance(version, int):
        raise ProtocolError(f"the server-group message has version {version!r}, not {VERSION}")
    raw_type = obj.get("msg_type")
    if not isinstance(raw_type, str):
        raise ProtocolError("the server-group message has no 'msg_type' string")
    try:
        msg_type = MsgType(raw_type)
    except ValueError:
        raise UnknownMessageType(raw_type) from None
    what = msg_type.value
    match msg_type:
        case MsgType.BROADCAST:
            return Broadcast(
                text=_str(obj, "data", what),
                source_instance=_optional_str(obj, "source_instance", what),
                seq=_optional_int(obj, "seq", what),
                id=_optional_id(obj, what),
            )
        case MsgType.STATUS_QUERY:
            return StatusQuery(seq=_int(obj, "seq", what))
        case MsgType.STATUS_RESPONSE:
            return StatusResponse(seq=_int(obj, "seq", what), server=_object(obj, "data", what))
        case MsgType.STATUS_RESPONSE_DONE:
            return StatusResponseDone(seq=_int(obj, "seq", what))
        case MsgType.NOTIFICATION:
            return Notification(event=_object(obj, "data", what))
        case MsgType.NACK:
            return Nack(
                orig_msg_type=_str(obj, "orig_msg_type", what),
                log_msg=_str(obj, "log_msg", what),
                id=_optional_id(obj, what),
            )
        case MsgType.BROADCAST_ACK:
            ident = _optional_id(obj, what)
            if ident is None:
                raise ProtocolError("the broadcast_ack has no 'id'")
            return BroadcastAck(id=ident, seq=_int(obj, "seq", what))
        case MsgType.SUBSCRIBE:
            return Subscribe()
        case MsgType.UNSUBSCRIBE:
            return Unsubscribe()


def encode_broadcast_json(text: str, source_instance: str, seq: int) -> bytes | None:
    """The compact JSON of a relayed broadcast, as `encode_envelope` writes its `data`.

    Equal to the JSON of `encode_group_message(Broadcast(text=text,
    source_instance=source_instance, seq=seq))` with the envelope encoder's
    settings; built from its pieces because the group service makes one for
    every broadcast it delivers. None for a text UTF-8 cannot hold (a lone
    surrogate), which the envelope encoder escapes as a whole instead.
    """
    try:
        return b"".join(
            (
                b'{"version":2,"msg_type":"broadcast","data":',
                json_string(text).encode("utf-8"),
                b',"source_instance":',
                json_string(source_instance).encode("utf-8"),
                b',"seq":',
                str(seq).encode("ascii"),
                b"}",
            )
        )
    except UnicodeEncodeError:
        return None


def broadcast_request_datagram(text: str, ident: int) -> bytes | None:
    """The datagram an application sends for broadcast `ident` of `text`, built from pieces.

    The same bytes as `encode_envelope(Envelope(dest_addr=SERVER_GROUP_ADDR,
    data=encode_group_message(Broadcast(text=text, id=ident))))`, made for
    every broadcast a client sends; None for a text UTF-8 cannot hold (a lone
    surrogate), which the envelope encoder escapes as a whole instead.
    """
    try:
        return b"".join(
            (
                b'{"version":2,"dest_addr":"cgcs.server_grp","data":'
                b'{"version":2,"msg_type":"broadcast","data":',
                json_string(text).encode("utf-8"),
                b',"id":',
                str(ident).encode("ascii"),
                b"}}",
            )
        )
    except UnicodeEncodeError:
        return None


_DELIVERY_KEYS: Final = frozenset({"version", "source_addr", "data"})
_BROADCAST_KEYS: Final = frozenset({"version", "msg_type", "data", "source_instance", "seq"})


#: How every broadcast datagram the guest agent delivers from this project's host starts
#: (`host_frame_with` of `encode_broadcast_json`, its destination cut by the agent).
#: The C string scanner of the json module (a `JSONDecoder`'s `parse_string`, which typeshed
#: does not list as a module attribute): (the string at index i, the index after it).
_scanstring: Final[Callable[[str, int], tuple[str, int]]] = json.JSONDecoder().parse_string  # type: ignore[attr-defined]
_DELIVERED_HEAD: Final = (
    '{"version":2,"source_addr":"cgcs.server_grp","data":'
    '{"version":2,"msg_type":"broadcast","data":"'
)
_DELIVERED_SOURCE: Final = ',"source_instance":"'
_DELIVERED_SEQ: Final = re.compile(r',"seq":(-?(?:0|[1-9][0-9]*))\}\}')


def delivered_broadcast_fields(raw: bytes) -> tuple[str, str | None, int | None] | None:
    """(text, source_instance, seq) of a delivered broadcast, as `decode_delivered_broadcast`.

    The same answer without the `Broadcast` object, for the client's receive
    (one call per receipt). The exact bytes this project's host writes are
    read with two string scans and no general JSON parse; any other form goes
    through `decode_delivered_broadcast`'s parse.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.startswith(_DELIVERED_HEAD):
        try:
            body, end = _scanstring(text, len(_DELIVERED_HEAD))
            if text.startswith(_DELIVERED_SOURCE, end):
                source, end = _scanstring(text, end + len(_DELIVERED_SOURCE))
                match = _DELIVERED_SEQ.fullmatch(text, end)
                if match is not None:
                    return body, source, int(match[1])
        except ValueError:  # a bad string, or an integer too long to convert
            pass
    msg = _parse_delivered(text)
    return None if msg is None else (msg.text, msg.source_instance, msg.seq)


def decode_delivered_broadcast(raw: bytes) -> Broadcast | None:
    """The broadcast in a datagram from `cgcs.server_grp`, when it is a plain one; else None.

    What an application receives most is a relayed broadcast; this takes the
    common form (exactly `version`, `source_addr` `cgcs.server_grp` and
    `data`; inside, `version`, `msg_type` `broadcast`, `data`, and optionally
    `source_instance` and `seq`) with one parse and a few checks. It never
    returns what the general path (`decode_envelope`, then
    `decode_group_message`) would not: None for anything else, which the
    caller then decodes that way (property-tested).
    """
    fields = delivered_broadcast_fields(raw)
    if fields is None:
        return None
    text, source, seq = fields
    return Broadcast(text=text, source_instance=source, seq=seq)


def _parse_delivered(raw: str) -> Broadcast | None:
    """`decode_delivered_broadcast` by a general JSON parse (any form of the JSON)."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if type(obj) is not dict or obj.keys() != _DELIVERY_KEYS:
        return None
    inner = obj["data"]
    if (
        type(obj["version"]) is not int
        or obj["version"] != VERSION
        or obj["source_addr"] != SERVER_GROUP_ADDR
        or type(inner) is not dict
        or not inner.keys() <= _BROADCAST_KEYS
        or type(inner.get("version")) is not int
        or inner["version"] != VERSION
        or inner.get("msg_type") != MsgType.BROADCAST.value
    ):
        return None
    text = inner.get("data")
    source = inner.get("source_instance")
    seq = inner.get("seq")
    if (
        type(text) is not str
        or (source is not None and type(source) is not str)
        or (seq is not None and type(seq) is not int)
    ):
        return None
    return Broadcast(text=text, source_instance=source, seq=seq)


def delivered_broadcast_size(text: str) -> int:
    """The largest datagram an app can receive for a broadcast of `text` (spec section 3).

    Computed with the real envelope encoder and the widest addresses, instance
    names and sequence number, so a text that passes fits every delivery.
    """
    inner = Broadcast(text=text, source_instance=_WORST_INSTANCE, seq=_WORST_SEQ)
    outer = Envelope(
        data=encode_group_message(inner),
        source_addr=_WORST_ADDR,
        source_instance=_WORST_INSTANCE,
    )
    return len(encode_envelope(outer))


def check_broadcast_text(text: str) -> str | None:
    """Why `text` cannot be broadcast, in one sentence; None when it can."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return "the broadcast text is not valid Unicode (it has a lone surrogate)"
    if size > MAX_BROADCAST_BYTES:
        return f"the broadcast text is {size} bytes of UTF-8; the limit is {MAX_BROADCAST_BYTES}"
    if "\x00" in text:
        return "the broadcast text contains a NUL character"
    if "\n" in text:
        return "the broadcast text contains a newline"
    if _EMPTY_BROADCAST_SIZE + _MAX_ESCAPED_CHAR * len(text) <= MAX_DATAGRAM:
        return None  # fits however it is escaped: no need to encode it to know
    size = delivered_broadcast_size(text)
    if size > MAX_DATAGRAM:
        return (
            f"the broadcast text makes a {size}-byte datagram once escaped as JSON; "
            f"the limit is {MAX_DATAGRAM} (non-ASCII and control characters take up to "
            "6 bytes each)"
        )
    return None


_TYPE_OF: Final[dict[type, MsgType]] = {
    Broadcast: MsgType.BROADCAST,
    StatusQuery: MsgType.STATUS_QUERY,
    StatusResponse: MsgType.STATUS_RESPONSE,
    StatusResponseDone: MsgType.STATUS_RESPONSE_DONE,
    Notification: MsgType.NOTIFICATION,
    Nack: MsgType.NACK,
    BroadcastAck: MsgType.BROADCAST_ACK,
    Subscribe: MsgType.SUBSCRIBE,
    Unsubscribe: MsgType.UNSUBSCRIBE,
}

#: The most bytes one character of a broadcast text takes in the delivered JSON
#: (a control character escaped as \u00XX; non-ASCII text stays UTF-8, at most 4).
_MAX_ESCAPED_CHAR: Final = 6
_EMPTY_BROADCAST_SIZE: Final = delivered_broadcast_size("")

__all__ = [
    "MAX_BROADCAST_BYTES",
    "Broadcast",
    "BroadcastAck",
    "GroupMessage",
    "MsgType",
    "Nack",
    "Notification",
    "StatusQuery",
    "StatusResponse",
    "StatusResponseDone",
    "Subscribe",
    "UnknownMessageType",
    "Unsubscribe",
    "broadcast_request_datagram",
    "check_broadcast_text",
    "decode_delivered_broadcast",
    "decode_group_message",
    "delivered_broadcast_fields",
    "delivered_broadcast_size",
    "encode_broadcast_json",
    "encode_group_message",
    "msg_type_of",
]
