"""Asking the host that owns a server to scale it: the library under `servergroup scale cpu`.

Theory of operation. `scale_cpu` reads the server's records and refuses at
once (one sentence, `ScaleRefused`) what the owning host would refuse too:
an unknown server, one that is not running, whose host is down, or a scale
past the flavor's limits. Then it takes a lease of its own, writes a
`ScaleOrder` at `scaling/requests/<server>/<id>` on it, and follows
`scaling/results/<server>/<id>` with a watch from the revision after that
write until the owning host's `ScaleOutcome` arrives or the time is up.
It revokes the lease at the end, which removes the request and the result;
a command killed before that leaves them to the lease's expiry. The host
re-checks everything on its own fresh read: what is checked here only
spares the guest a request and the user a wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from datetime import UTC, datetime

from servergroup.common.errors import LocalError, RemoteError
from servergroup.coordination import CoordinationError, Coordinator, EventKind
from servergroup.scaling.protocol import MAX_TIMEOUT_MS, Direction
from servergroup.scaling.scaler import limit_sentence
from servergroup.scaling.store import HOSTS as POOLS
from servergroup.scaling.store import (
    PoolRecord,
    ScaleOrder,
    ScaleOutcome,
    decode_outcome,
    decode_pool,
    encode_order,
    request_key,
    result_key,
)
from servergroup.servers.model import Desired, RecordError, VmState
from servergroup.servers.registry import HOSTS, Registry, ServerNotFound

#: What the guest gets when no timeout is given (spec section 5: the original's ~10 s in all).
DEFAULT_TIMEOUT = 9.0
#: What the host may need past the guest's time: pinning, and the record.
HOST_GRACE = 4.0


class ScaleRefused(LocalError):
    """The request makes no sense for this server now (exit status 2)."""

    exit_status = 2


class ScaleError(RemoteError):
    """The owning host could not scale the server, or did not answer (exit status 1)."""


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


async def scale_cpu(
    registry: Registry,
    name: str,
    direction: Direction,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> ScaleOutcome:
    """Scale server `name` one vCPU down or up; the host's outcome, or one sentence why not.

    `timeout` is the guest's budget (`timeout_ms`); the whole call takes at
    most `timeout + HOST_GRACE` seconds.
    """
    if not 0 < timeout <= MAX_TIMEOUT_MS / 1000:
        raise ScaleRefused(f"--timeout must be more than 0 and at most {MAX_TIMEOUT_MS // 1000} s")
    c = registry.coordinator
    server = await registry.get_server(name)
    if server is None:
        raise ServerNotFound(f"server {name!r} does not exist")
    spec, status = server.spec, server.status
    if spec.desired is Desired.DELETED:
        raise ScaleRefused(f"server {name} is being deleted")
    if status is None:
        raise ScaleRefused(f"server {name} is not running yet: wait until it is active")
    if await c.get(f"{HOSTS}{status.host}") is None:
        raise ScaleRefused(f"host {status.host} of server {name} is not running")
    if status.state is not VmState.ACTIVE:
        raise ScaleRefused(
            f"server {name} is {status.state.value}: only an active server can be scaled"
        )
    online = len(status.online_cpus or range(spec.vcpus))
    if (direction is Direction.DOWN and online <= spec.min_vcpus) or (
        direction is Direction.UP and online >= spec.vcpus
    ):
        raise ScaleRefused(limit_sentence(name, online, spec.min_vcpus, spec.vcpus, direction))
    budget = timeout + HOST_GRACE
    lease = await c.grant(math.ceil(budget) + 2)
    ident = uuid.uuid4().hex[:16]
    try:
        order = ScaleOrder(
            id=ident,
            server=name,
            direction=direction,
            timeout_ms=max(1, round(timeout * 1000)),
            lease=lease.id,
            asked_at=_now_iso(),
        )
        written = await c.put(request_key(name, ident), encode_order(order), lease=lease.id)
        try:
            return await _outcome(registry, name, ident, written, budget)
        except TimeoutError:
            now = await registry.get_server(name)
            host = now.status.host if now is not None and now.status is not None else status.host
            alive = await c.get(f"{HOSTS}{host}") is not None
            why = "" if alive else f" (host {host} is not running)"
            raise ScaleError(
                f"host {host} did not answer the scale {direction.value} of server {name} "
                f"within {budget:g} s{why}"
            ) from None
    finally:
        with contextlib.suppress(CoordinationError):
            await c.revoke(lease.id)


async def _outcome(
    registry: Registry, name: str, ident: str, written: int, budget: float
) -> ScaleOutcome:
    c = registry.coordinator
    key = result_key(name, ident)
    async with asyncio.timeout(budget):
        # From the revision after the request's: the host writes the result later, so nothing
        # is missed, and etcd counts a watch that starts past its current revision as
        # synced. One that starts at a revision it has (the request's own) waits for its
        # sync loop, up to 100 ms, to get its first events: most of a scale's round trip.
        watch = await c.watch(key, start_revision=written + 1)
        try:
            async for event in watch:
                if event.key != key or event.kind is not EventKind.PUT:
                    continue
                try:
                    outcome = decode_outcome(event.value)
                except RecordError as exc:
                    raise ScaleError(
                        f"the scale result of server {name} is unreadable: {exc}"
                    ) from None
                if not outcome.ok:
                    raise ScaleError(outcome.error or f"server {name} was not scaled")
                return outcome
        finally:
            await watch.close()
    raise TimeoutError  # the watch ended: treated as no answer


async def read_pools(coordinator: Coordinator) -> dict[str, PoolRecord]:
    """Each host's published CPU pool, by host (a record that does not decode is left out)."""
    pools: dict[str, PoolRecord] = {}
    for kv in (await coordinator.get_prefix(POOLS)).items:
        try:
            record = decode_pool(kv.value)
        except RecordError:
            continue
        pools[record.host] = record
    return pools


__all__ = [
    "DEFAULT_TIMEOUT",
    "HOST_GRACE",
    "ScaleError",
    "ScaleRefused",
    "read_pools",
    "scale_cpu",
]
