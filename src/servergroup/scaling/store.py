"""The scaling key space and its records (pure: keys and codecs, no I/O).

Under the coordinator's prefix (docs/design/scaling-host.md):

    scaling/requests/<server>/<id>   ScaleOrder    written by `servergroup scale`, on its lease
    scaling/results/<server>/<id>    ScaleOutcome  written by the owning host, on the same lease
    scaling/hosts/<host>             PoolRecord    written by the host, on its session lease

A request and its result live on the lease of the command that asked: when
the command ends it revokes the lease, and when it dies the lease expires;
either way both keys go, so requests of an abandoned command never pile up.
`ScaleOrder.lease` names that lease so that the host writes the result on it.

Every record encodes to compact JSON with sorted keys and decodes with a
`decode_*` that raises `RecordError` with one sentence.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from servergroup.scaling.protocol import DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS, Direction
from servergroup.servers.model import RecordError

SCALING: Final = "scaling/"
REQUESTS: Final = f"{SCALING}requests/"
RESULTS: Final = f"{SCALING}results/"
HOSTS: Final = f"{SCALING}hosts/"


def request_key(server: str, ident: str) -> str:
    return f"{REQUESTS}{server}/{ident}"


def result_key(server: str, ident: str) -> str:
    return f"{RESULTS}{server}/{ident}"


def pool_key(host: str) -> str:
    return f"{HOSTS}{host}"


def parse_request_key(key: str) -> tuple[str, str] | None:
    """(server, id) of a request key, or None when `key` is not one."""
    if not key.startswith(REQUESTS):
        return None
    server, sep, ident = key[len(REQUESTS) :].partition("/")
    if not sep or not server or not ident or "/" in ident:
        return None
    return server, ident


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleOrder:
    """`servergroup scale cpu DIRECTION SERVER`, as the owning host reads it."""

    id: str
    server: str
    direction: Direction
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    lease: int = 0  # the asking command's lease; the result goes on it
    asked_at: str = ""  # wall time, for people


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleTimings:
    """Where the owning host's time went on one order, in seconds (the benchmark, `--json`).

    The phases follow one another: `queued` (the order's arrival at the host
    to its server's worker taking it), `check` (the fresh read of the
    server's records, the checks, a first placement in the pool), `guest`
    (the channel round trip to the guest's scale agent, its helper
    included), `hypervisor` (pinning the vCPU's thread), `record` (the etcd
    writes before the result: the server's status, then the pool). A phase
    an order did not reach is 0.
    """

    queued: float = 0.0
    check: float = 0.0
    guest: float = 0.0
    hypervisor: float = 0.0
    record: float = 0.0

    @property
    def total(self) -> float:
        return self.queued + self.check + self.guest + self.hypervisor + self.record


#: The phases of `ScaleTimings`, in order (also its JSON keys).
TIMING_PHASES: Final = ("queued", "check", "guest", "hypervisor", "record")


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleOutcome:
    """What the owning host did with a `ScaleOrder`."""

    id: str
    server: str
    host: str
    direction: Direction
    ok: bool
    cpu: int | None = None  # the vCPU taken offline (down) or brought online (up)
    online_cpus: tuple[int, ...] = ()
    #: The host CPU the vCPU now runs on (up) or gave back to the pool (down), when any.
    host_cpu: int | None = None
    error: str | None = None  # one sentence, when not ok
    #: Where the host's time went (None from a host that does not measure it).
    timings: ScaleTimings | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolRecord:
    """A host's physical-CPU pool, as `host list` / `host show` show it."""

    host: str
    cpus: tuple[int, ...]
    free: tuple[int, ...]
    #: server -> {vCPU: host CPU} (placed vCPUs only)
    placed: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    #: server -> its online vCPUs with no CPU of their own
    shared: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    updated_at: str = ""


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _loads(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"{what} record is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"{what} record is not a JSON object")
    return obj


def _str(obj: Mapping[str, Any], key: str, what: str, *, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise RecordError(f"{what} record has no string {key!r}")
    return value


def _int(obj: Mapping[str, Any], key: str, what: str, *, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RecordError(f"{what} record has no non-negative integer {key!r}")
    return value


def _ints(value: Any, key: str, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise RecordError(f"{what} record has {key!r} that is not a list of CPU numbers")
    return tuple(value)


def _direction(obj: Mapping[str, Any], what: str) -> Direction:
    try:
        return Direction(obj.get("direction"))
    except ValueError:
        raise RecordError(f"{what} record has no direction 'down' or 'up'") from None


def encode_order(order: ScaleOrder) -> bytes:
    return _dumps(
        {
            "id": order.id,
            "server": order.server,
            "direction": order.direction.value,
            "timeout_ms": order.timeout_ms,
            "lease": order.lease,
            "asked_at": order.asked_at,
        }
    )


def decode_order(raw: bytes) -> ScaleOrder:
    what = "scale request"
    obj = _loads(raw, what)
    timeout_ms = _int(obj, "timeout_ms", what)
    if not 1 <= timeout_ms <= MAX_TIMEOUT_MS:
        raise RecordError(f"{what} record has timeout_ms {timeout_ms}, outside 1..{MAX_TIMEOUT_MS}")
    return ScaleOrder(
        id=_str(obj, "id", what),
        server=_str(obj, "server", what),
        direction=_direction(obj, what),
        timeout_ms=timeout_ms,
        lease=_int(obj, "lease", what, optional=True) or 0,
        asked_at=_str(obj, "asked_at", what, optional=True) or "",
    )


def encode_outcome(outcome: ScaleOutcome) -> bytes:
    return _dumps(
        {
            "id": outcome.id,
            "server": outcome.server,
            "host": outcome.host,
            "direction": outcome.direction.value,
            "ok": outcome.ok,
            "cpu": outcome.cpu,
            "online_cpus": list(outcome.online_cpus),
            "host_cpu": outcome.host_cpu,
            "error": outcome.error,
            **({"timings": timings_json(outcome.timings)} if outcome.timings else {}),
        }
    )


def timings_json(timings: ScaleTimings) -> dict[str, float]:
    """The phases in seconds, rounded to the microsecond (as the result and `--json` hold them)."""
    return {phase: round(getattr(timings, phase), 6) for phase in TIMING_PHASES}


def _timings(value: Any, what: str) -> ScaleTimings | None:
    """`timings` of a result, optional (a host from before it was measured has none)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RecordError(f"{what} record has 'timings' that is not an object")
    found: dict[str, float] = {}
    for phase in TIMING_PHASES:
        seconds = value.get(phase, 0.0)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise RecordError(f"{what} record has timing {phase!r} that is not a duration")
        found[phase] = float(seconds)
    return ScaleTimings(**found)


def decode_outcome(raw: bytes) -> ScaleOutcome:
    what = "scale result"
    obj = _loads(raw, what)
    ok = obj.get("ok")
    if not isinstance(ok, bool):
        raise RecordError(f"{what} record has no boolean 'ok'")
    return ScaleOutcome(
        id=_str(obj, "id", what),
        server=_str(obj, "server", what),
        host=_str(obj, "host", what),
        direction=_direction(obj, what),
        ok=ok,
        cpu=_int(obj, "cpu", what, optional=True),
        online_cpus=_ints(obj.get("online_cpus", []), "online_cpus", what),
        host_cpu=_int(obj, "host_cpu", what, optional=True),
        error=_str(obj, "error", what, optional=True),
        timings=_timings(obj.get("timings"), what),
    )


def encode_pool(record: PoolRecord) -> bytes:
    return _dumps(
        {
            "host": record.host,
            "cpus": list(record.cpus),
            "free": list(record.free),
            "placed": {s: {str(v): c for v, c in m.items()} for s, m in record.placed.items()},
            "shared": {s: list(v) for s, v in record.shared.items()},
            "updated_at": record.updated_at,
        }
    )


def decode_pool(raw: bytes) -> PoolRecord:
    what = "CPU pool"
    obj = _loads(raw, what)
    placed_raw = obj.get("placed", {})
    shared_raw = obj.get("shared", {})
    if not isinstance(placed_raw, dict) or not isinstance(shared_raw, dict):
        raise RecordError(f"{what} record has no 'placed' or 'shared' object")
    placed: dict[str, dict[int, int]] = {}
    for server, vcpus in placed_raw.items():
        if not isinstance(vcpus, dict):
            raise RecordError(f"{what} record has 'placed' of {server!r} that is not an object")
        try:
            placed[server] = {int(v): int(c) for v, c in vcpus.items()}
        except (TypeError, ValueError):
            raise RecordError(
                f"{what} record has a vCPU of {server!r} that is not a number"
            ) from None
    return PoolRecord(
        host=_str(obj, "host", what),
        cpus=_ints(obj.get("cpus"), "cpus", what),
        free=_ints(obj.get("free"), "free", what),
        placed=placed,
        shared={s: _ints(v, "shared", what) for s, v in shared_raw.items()},
        updated_at=_str(obj, "updated_at", what, optional=True) or "",
    )


def pool_json(record: PoolRecord) -> dict[str, Any]:
    """The pool as `host show --json` prints it."""
    return {
        "cpus": list(record.cpus),
        "free": list(record.free),
        "used": sorted(c for m in record.placed.values() for c in m.values()),
        "placed": {s: {str(v): c for v, c in m.items()} for s, m in record.placed.items()},
        "shared": {s: list(v) for s, v in record.shared.items()},
        "updated_at": record.updated_at,
    }


__all__ = [
    "HOSTS",
    "REQUESTS",
    "RESULTS",
    "SCALING",
    "TIMING_PHASES",
    "PoolRecord",
    "ScaleOrder",
    "ScaleOutcome",
    "ScaleTimings",
    "decode_order",
    "decode_outcome",
    "decode_pool",
    "encode_order",
    "encode_outcome",
    "encode_pool",
    "parse_request_key",
    "pool_json",
    "pool_key",
    "request_key",
    "result_key",
    "timings_json",
]
