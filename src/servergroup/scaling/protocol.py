"""The scaling messages inside an envelope's `data` (spec section 5), pure.

Theory of operation: the host asks a guest's scale agent (bound at
`cgcs.scale`) to take one vCPU offline or online with a `scale_request`;
the agent answers with a reply that has no `msg_type` (as the original's
did): `result` "success" with the CPU and the new online list, or "fail"
with `err_msg`. A request the agent cannot use is answered with a `nack`
(`log_msg`). `decode_request` / `decode_reply` turn JSON objects into
frozen dataclasses or raise `ProtocolError` with one sentence, and
`encode_message` is their inverse: `decode(encode(m)) == m`. Keys are
written in a fixed order (`version`, `msg_type`, then the spec's order).

Ours (an extension of protocol v2; the original's tools never send them and
ignore them):

- **Boot sync.** At boot, before applications start, the guest's scale
  agent sends `scale_sync_request` (`resource` "cpu") to the host's
  `cgcs.scale`; the host answers `scale_sync` with `offline_cpus`, the
  vCPUs its record says are offline, and the agent takes them offline, so
  a server that reboots, is evacuated or rebuilt comes up as recorded. The
  original read the same from the metadata server (`offline_cpuset`, see
  `cpus.parse_cpuset_repr`).
- A request may carry `id` (a non-negative integer), copied into the reply,
  so that a host with several requests in flight to one guest can match
  them; the original's agent ignored unknown keys and so do we.

`timeout_ms` is the time the guest may take (the original parsed it and
never enforced it; the agent here does). CPU numbers are 0..`MAX_CPU`; CPU
0 is never taken offline.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from servergroup.guestcomm.protocol import (
    SCALE_ADDR,
    VERSION,
    Json,
    JsonObject,
    ProtocolError,
)
from servergroup.scaling.cpus import MAX_CPU

#: What the host gives a guest for one request unless told otherwise (the original: ~10 s in all).
DEFAULT_TIMEOUT_MS: Final = 9000
#: The longest `timeout_ms` accepted (a minute: beyond it a request is not interactive).
MAX_TIMEOUT_MS: Final = 60_000
#: The one resource the protocol knows.
CPU: Final = "cpu"


class Direction(enum.Enum):
    DOWN = "down"
    UP = "up"


class Result(enum.Enum):
    SUCCESS = "success"
    FAIL = "fail"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleRequest:
    """Host -> guest: take one vCPU offline (down) or `online_cpu` online (up)."""

    direction: Direction
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    #: up: the CPU to bring online, and the online list it will make (the original sent both).
    online_cpu: int | None = None
    online_cpus: tuple[int, ...] | None = None
    id: int | None = None  # ours, copied into the reply


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleReply:
    """Guest -> host: what a `ScaleRequest` did."""

    direction: Direction
    result: Result
    #: down: the CPU taken offline; up: the CPU brought online (success only).
    cpu: int | None = None
    #: The guest's online CPUs afterwards (success only).
    online_cpus: tuple[int, ...] = ()
    err_msg: str | None = None  # fail only
    id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleNack:
    """Guest -> host: the request was not usable (the original's format)."""

    log_msg: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncRequest:
    """Guest -> host (ours): which of my vCPUs must be offline?"""


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncReply:
    """Host -> guest (ours): these vCPUs must be offline."""

    offline_cpus: tuple[int, ...]


ScaleMessage = ScaleRequest | ScaleReply | ScaleNack | SyncRequest | SyncReply


def encode_message(msg: ScaleMessage) -> JsonObject:
    """The JSON object (an envelope's `data`) of `msg`."""
    out: JsonObject = {"version": VERSION}
    match msg:
        case ScaleRequest():
            out["msg_type"] = "scale_request"
            out["timeout_ms"] = msg.timeout_ms
            out["resource"] = CPU
            out["direction"] = msg.direction.value
            if msg.online_cpu is not None:
                out["online_cpu"] = msg.online_cpu
            if msg.online_cpus is not None:
                out["online_cpus"] = list(msg.online_cpus)
        case ScaleReply():
            out["resource"] = CPU
            out["direction"] = msg.direction.value
            out["result"] = msg.result.value
            if msg.result is Result.SUCCESS:
                key = "offline_cpu" if msg.direction is Direction.DOWN else "online_cpu"
                out[key] = msg.cpu
                out["online_cpus"] = list(msg.online_cpus)
            else:
                out["err_msg"] = msg.err_msg or ""
        case ScaleNack():
            out["msg_type"] = "nack"
            out["log_msg"] = msg.log_msg
        case SyncRequest():
            out["msg_type"] = "scale_sync_request"
            out["resource"] = CPU
        case SyncReply():
            out["msg_type"] = "scale_sync"
            out["resource"] = CPU
            out["offline_cpus"] = list(msg.offline_cpus)
    if isinstance(msg, ScaleRequest | ScaleReply) and msg.id is not None:
        out["id"] = msg.id
    return out


def _int(obj: JsonObject, key: str, what: str, *, low: int = 0, high: int = MAX_CPU) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{what} has no integer {key!r}.")
    if not low <= value <= high:
        raise ProtocolError(f"{what} has {key!r} {value}, outside {low}..{high}.")
    return value


def _cpus(obj: JsonObject, key: str, what: str) -> tuple[int, ...]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise ProtocolError(f"{what} has no list {key!r}.")
    cpus: set[int] = set()
    for item in value:
        if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item <= MAX_CPU:
            raise ProtocolError(f"{what} has {key!r} with {item!r}, not a CPU number.")
        cpus.add(item)
    return tuple(sorted(cpus))


def _id(obj: JsonObject, what: str) -> int | None:
    if "id" not in obj:
        return None
    return _int(obj, "id", what, high=2**63 - 1)


def _common(obj: Json, what: str) -> JsonObject:
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} is not a JSON object.")
    version = obj.get("version")
    if version != VERSION or isinstance(version, bool):
        raise ProtocolError(f"{what} has version {version!r}, not {VERSION}.")
    return obj


def _resource(obj: JsonObject, what: str) -> None:
    resource = obj.get("resource")
    if resource != CPU:
        raise ProtocolError(f"{what} is about resource {resource!r}; only {CPU!r} is known.")


def _direction(obj: JsonObject, what: str) -> Direction:
    value = obj.get("direction")
    try:
        return Direction(value)
    except ValueError:
        raise ProtocolError(f"{what} has direction {value!r}, not 'down' or 'up'.") from None


def decode_request(obj: Json) -> ScaleRequest | SyncRequest | SyncReply:
    """A message sent to a `cgcs.scale` address (a guest's or the host's); ProtocolError if not."""
    what = "the scale message"
    obj = _common(obj, what)
    msg_type = obj.get("msg_type")
    if msg_type == "scale_request":
        what = "the scale request"
        _resource(obj, what)
        direction = _direction(obj, what)
        timeout_ms = (
            _int(obj, "timeout_ms", what, low=1, high=MAX_TIMEOUT_MS)
            if "timeout_ms" in obj
            else DEFAULT_TIMEOUT_MS
        )
        online_cpu: int | None = None
        online_cpus: tuple[int, ...] | None = None
        if direction is Direction.UP:
            online_cpu = _int(obj, "online_cpu", what)
            if "online_cpus" in obj:
                online_cpus = _cpus(obj, "online_cpus", what)
        return ScaleRequest(
            direction=direction,
            timeout_ms=timeout_ms,
            online_cpu=online_cpu,
            online_cpus=online_cpus,
            id=_id(obj, what),
        )
    if msg_type == "scale_sync_request":
        _resource(obj, "the scale sync request")
        return SyncRequest()
    if msg_type == "scale_sync":
        what = "the scale sync"
        _resource(obj, what)
        return SyncReply(offline_cpus=_cpus(obj, "offline_cpus", what))
    raise ProtocolError(f"{what} has msg_type {msg_type!r}, which {SCALE_ADDR} does not take.")


def decode_reply(obj: Json) -> ScaleReply | ScaleNack:
    """What a guest's scale agent answered; ProtocolError if it is neither a reply nor a nack."""
    what = "the scale reply"
    obj = _common(obj, what)
    if obj.get("msg_type") == "nack":
        log_msg = obj.get("log_msg")
        return ScaleNack(log_msg=log_msg if isinstance(log_msg, str) else "")
    _resource(obj, what)
    direction = _direction(obj, what)
    value = obj.get("result")
    try:
        result = Result(value)
    except ValueError:
        raise ProtocolError(f"{what} has result {value!r}, not 'success' or 'fail'.") from None
    ident = _id(obj, what)
    if result is Result.FAIL:
        err_msg = obj.get("err_msg")
        return ScaleReply(
            direction=direction,
            result=result,
            err_msg=err_msg if isinstance(err_msg, str) else "",
            id=ident,
        )
    key = "offline_cpu" if direction is Direction.DOWN else "online_cpu"
    return ScaleReply(
        direction=direction,
        result=result,
        cpu=_int(obj, key, what),
        online_cpus=_cpus(obj, "online_cpus", what),
        id=ident,
    )


__all__ = [
    "CPU",
    "DEFAULT_TIMEOUT_MS",
    "MAX_TIMEOUT_MS",
    "SCALE_ADDR",
    "Direction",
    "Result",
    "ScaleMessage",
    "ScaleNack",
    "ScaleReply",
    "ScaleRequest",
    "SyncReply",
    "SyncRequest",
    "decode_reply",
    "decode_request",
    "encode_message",
]
