"""The host side of vCPU scaling: a component of the host daemon.

Theory of operation (docs/design/scaling-host.md has the whole path).

- **Requests.** `servergroup scale cpu down|up SERVER` writes a
  `ScaleOrder` under `scaling/requests/<server>/<id>` on a lease of its
  own and waits for `scaling/results/<server>/<id>`. Every host's scaler
  follows `scaling/requests/` (listing what is there at start, then a
  watch); the host that owns the server (its status's host) carries the
  order out and writes the `ScaleOutcome` on the order's lease. An order
  whose command gave up is gone with its lease: nothing piles up.
- **One at a time per server.** Each server has one worker and a queue: the
  orders of two commands, and the placement of its vCPUs, run one after the
  other, each on a fresh read of the server's records; two scale downs take
  two different vCPUs offline, never one twice.
- **A scale** is: checks on the records (running here, within the flavor's
  limits, a free host CPU for a scale up: each refusal one sentence, before
  the guest is asked), then the guest (a `ScaleRequest` sent through the
  relay from `scale-<hex>`, an address of the server's own routed back to
  us for its `ScaleReply`), then the `Hypervisor` (the vCPU's thread pinned
  to its new host CPU: vCPU 0's for an offlined one, a free CPU of the pool
  for an onlined one), then the record: `ServerStatus.online_cpus` written
  compared on the status's and spec's revisions and under this host's
  registration (a conflict with the server manager's write reads again and
  writes again; a server that moved or was deleted meanwhile fails the
  order with one sentence).
- **The pool** (`scaling.pool`): the host CPUs the servers here may have,
  each online vCPU placed on a CPU of its own while there is one. A server
  *takes part* in the pool from its first scale here, and whenever it runs
  here scaled down (its record has a vCPU offline: it is placed again as it
  boots or arrives); until then its vCPUs float over the host's CPUs, as
  they did before scaling existed, and hold none of the pool. A server that
  stops or leaves is *released*. The pool is published at
  `scaling/hosts/<host>` on the host's session lease (`host list|show`).
- **Boot sync.** The relay routes `cgcs.scale` to us: a guest's
  `scale_sync_request` gets a `scale_sync` with the vCPUs its server's
  record says are offline (none when it has no record, or after a resize).
- **Settling a server that changed hands.** A scale carried out by the
  previous owner while the server moved can change the guest and fail to
  change the record (the record is the new owner's now). So the owner
  *settles* a server, in its worker (after any scale of its own, on a fresh
  read): it pins its vCPUs as placed here again and pushes an unsolicited
  `scale_sync` with the record, which the guest obeys. It settles a server
  as it starts running here (arrived, booted), when its guest's channel
  connects here, and when a scale order of the server that another host
  took ends (its request key is deleted: the other host's guest exchange,
  its pinning and its result are over by then). The record always wins;
  a scale is reported done only once the record says so.
- **Timings.** Each order's phases (queued, check, guest, hypervisor,
  record) are measured and go into its `ScaleOutcome.timings`.

Nothing a guest sends stops the scaler: garbage fails the one order it
answers, with a sentence naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from servergroup.common import metrics
from servergroup.common.component import ComponentHealth, HealthState, cancel_and_wait
from servergroup.common.errors import RemoteError
from servergroup.common.logsetup import log_bug
from servergroup.coordination import (
    CoordinationError,
    Coordinator,
    EventKind,
    FencingError,
    Guard,
    RevisionConflict,
    WatchCompacted,
)
from servergroup.guestcomm.protocol import SCALE_ADDR, Envelope, ProtocolError
from servergroup.guestcomm.relay import ChannelRelay
from servergroup.scaling.cpus import format_cpu_list
from servergroup.scaling.pool import NoFreeCpu, Pool
from servergroup.scaling.protocol import (
    Direction,
    Result,
    ScaleNack,
    ScaleReply,
    ScaleRequest,
    SyncReply,
    SyncRequest,
    decode_reply,
    decode_request,
    encode_message,
)
from servergroup.scaling.store import (
    REQUESTS,
    TIMING_PHASES,
    PoolRecord,
    ScaleOrder,
    ScaleOutcome,
    ScaleTimings,
    decode_order,
    encode_outcome,
    encode_pool,
    parse_request_key,
    pool_key,
    result_key,
)
from servergroup.servers.drivers.base import DriverError
from servergroup.servers.drivers.hypervisor import Hypervisor
from servergroup.servers.model import (
    INSTANCE_PATTERN,
    DriverKind,
    RecordError,
    Server,
    VmState,
)
from servergroup.servers.registry import ChangeKind, Registry, RegistryCache, RegistryChange

log = logging.getLogger(__name__)

#: How long past the guest's `timeout_ms` the host waits for its reply.
REPLY_GRACE = 1.0
#: How often servers whose vCPUs could not be placed are tried again.
RETRY_INTERVAL = 2.0
#: How long a server whose vCPUs could not be placed waits before the tick tries again.
RETRY_BACKOFF = 10.0
#: The states in which a server's processes exist here (its vCPUs hold CPUs).
RUNNING = (VmState.ACTIVE, VmState.PAUSED)


class ScaleFailed(RemoteError):
    """An order could not be carried out (one sentence, which the command prints)."""


def scale_address(instance: str) -> str:
    """The host-side address of a server's scaling (spec section 1: `scale-<hex>`)."""
    if INSTANCE_PATTERN.match(instance):
        return "scale-" + instance.removeprefix("instance-")
    return "scale-" + format(abs(hash(instance)) & 0xFFFFFFFF, "08x")


def offline_vcpus(server: Server | None) -> tuple[int, ...]:
    """The vCPUs the server's record says are offline (boot sync); none without a record."""
    if server is None or server.status is None:
        return ()
    spec, status = server.spec, server.status
    if status.vcpus and status.vcpus != spec.vcpus:
        return ()  # resized: it comes back with every vCPU of its new flavor
    online = set(status.online_cpus)
    if not online or 0 not in online:
        return ()
    return tuple(c for c in range(spec.vcpus) if c not in online)


def _now_iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, tz=UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class _Incarnation:
    """One run of a server here: a new boot or arrival is a new incarnation (placed again)."""

    launched_at: str | None
    vcpus: int
    reboots: int


def _incarnation(server: Server, me: str) -> _Incarnation | None:
    status = server.status
    if status is None or status.host != me or status.state not in RUNNING:
        return None
    return _Incarnation(status.launched_at, server.spec.vcpus, status.reboot_count)


@dataclass(frozen=True, slots=True)
class _Run:
    """What the scaler did for one run of a server here: placed it in the pool, or not."""

    run: _Incarnation
    placed: bool


def _scaled(server: Server) -> bool:
    """Whether the server's record has some vCPU of its flavor offline."""
    status = server.status
    online = set(status.online_cpus) if status is not None else set()
    return bool(online) and online != set(range(server.spec.vcpus))


@dataclass(frozen=True, slots=True)
class _Adopt:
    """Place the server's vCPUs (or release them) as its records say now."""


@dataclass(frozen=True, slots=True)
class _Sync:
    """Answer a guest's boot sync, after whatever scale of its server came first."""

    instance: str
    reply_to: str


@dataclass(frozen=True, slots=True)
class _Settle:
    """Bring the server's guest and pins to its record (it may have changed hands)."""

    why: str


_Job = ScaleOrder | _Adopt | _Sync | _Settle


class _Phases:
    """The phases of one order, measured as it goes (`ScaleTimings` at the end)."""

    def __init__(self, queued: float) -> None:
        self.spent = dict.fromkeys(TIMING_PHASES, 0.0)
        self.spent["queued"] = max(queued, 0.0)
        self._at = time.monotonic()

    def end(self, phase: str) -> None:
        """The time since the previous phase ended is `phase`'s."""
        now = time.monotonic()
        self.spent[phase] += now - self._at
        self._at = now

    def timings(self) -> ScaleTimings:
        return ScaleTimings(**self.spent)


class Scaler:
    """The scaler of one host (see the module docstring).

    A component of the host daemon (`common.component`): `start`, `stop`, `health`.
    """

    name = "scaler"

    def __init__(
        self,
        *,
        coordinator: Coordinator,
        registry: Registry,
        cache: RegistryCache,
        relay: ChannelRelay,
        hypervisors: Mapping[DriverKind, Hypervisor],
        host: str,
        cpus: Sequence[int],
        floating: Sequence[int] | None = None,
        lease: Callable[[], int],
        fence: Callable[[], Guard | None] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._c = coordinator
        self._registry = registry
        self._cache = cache
        self._relay = relay
        self._hypervisors = dict(hypervisors)
        self.host = host
        self._pool = Pool.of(cpus)
        #: Where the vCPUs of a server that takes no part in the pool run (default: the pool).
        self._floating = tuple(sorted(set(floating))) if floating else self._pool.cpus
        self._lease = lease
        self._fence = fence
        self._wall = wall
        self._queues: dict[str, asyncio.Queue[_Job]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        #: server -> the run whose vCPUs are pinned (placed in the pool, or floating)
        self._adopted: dict[str, _Run] = {}
        self._online: dict[str, tuple[int, ...]] = {}  # server -> its online vCPUs, as we know them
        self._seen_orders: set[str] = set()
        self._arrived: dict[str, float] = {}  # order id -> when queued here (monotonic)
        self._pending: set[str] = set()  # servers with an _Adopt queued
        self._settling: set[str] = set()  # servers with a _Settle queued
        self._failed_at: dict[str, float] = {}  # servers whose vCPUs could not be placed: when
        self._checks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._unroute: Callable[[], None] | None = None
        self._unwatch_channels: Callable[[], None] | None = None
        self._changes: asyncio.Queue[RegistryChange] | None = None
        self._dirty = asyncio.Event()
        self._publishing = asyncio.Lock()
        self._published: tuple[int, bytes] | None = None  # (lease, record without its time)
        self.done = 0
        self.failed = 0

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._unroute = self._relay.route(SCALE_ADDR, self._on_sync)
        self._unwatch_channels = self._relay.on_change(self._on_channel)
        self._changes = self._cache.subscribe()
        rng = await self._c.get_prefix(REQUESTS)
        for kv in rng.items:
            self._order(kv.key, kv.value)
        for name in sorted(self._cache.snapshot.servers):
            self._kick(name)
        self._dirty.set()
        self._tasks = [
            asyncio.create_task(self._follow_requests(rng.revision + 1), name="scaler-requests"),
            asyncio.create_task(self._follow_registry(), name="scaler-registry"),
            asyncio.create_task(self._publish(), name="scaler-pool"),
            asyncio.create_task(self._tick(), name="scaler-tick"),
        ]
        log.info("host %s scales servers; CPU pool %s", self.host, format_cpu_list(self._pool.cpus))

    async def stop(self) -> None:
        self._stopping = True
        if self._unroute is not None:
            self._unroute()
            self._unroute = None
        if self._unwatch_channels is not None:
            self._unwatch_channels()
            self._unwatch_channels = None
        tasks = self._tasks + list(self._workers.values()) + list(self._checks)
        await cancel_and_wait(tasks)
        self._tasks = []
        self._workers.clear()
        if self._changes is not None:
            self._cache.unsubscribe(self._changes)
            self._changes = None

    def health(self) -> ComponentHealth:
        if not self._tasks:
            return ComponentHealth(state=HealthState.STOPPED, sentence="not scaling")
        pool = self._pool
        return ComponentHealth(
            state=HealthState.HEALTHY,
            sentence=(
                f"CPU pool {format_cpu_list(pool.cpus) or '(none)'}, "
                f"free {format_cpu_list(pool.free) or '(none)'}; "
                f"{self.done} scale(s) done, {self.failed} refused or failed"
            ),
        )

    @property
    def pool(self) -> Pool:
        return self._pool

    # -- what comes in -------------------------------------------------------------------

    def _ours(self, name: str) -> bool:
        server = self._cache.snapshot.servers.get(name)
        return server is not None and server.status is not None and server.status.host == self.host

    def _order(self, key: str, value: bytes) -> None:
        found = parse_request_key(key)
        if found is None:
            return
        name, _ = found
        try:
            order = decode_order(value)
        except RecordError as exc:
            log.warning("ignoring scale request %s: %s", key, exc)
            return
        if order.id in self._seen_orders or order.server != name:
            return
        self._seen_orders.add(order.id)
        if self._ours(name):
            self._take(order)
            return
        # Our cache may lag behind the records the command read: read them.
        task = asyncio.create_task(self._check_order(order), name=f"scaler-check-{name}")
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _check_order(self, order: ScaleOrder) -> None:
        try:
            server = await self._registry.get_server(order.server)
        except CoordinationError as exc:
            log.info("cannot read server %s for scale request %s: %s", order.server, order.id, exc)
            return
        if server is not None and server.status is not None and server.status.host == self.host:
            self._take(order)

    def _take(self, order: ScaleOrder) -> None:
        self._arrived[order.id] = time.monotonic()
        self._queue(order.server).put_nowait(order)

    def _order_ended(self, key: str) -> None:
        """A request key was deleted: its command ended (or gave up). An order of one of
        our servers that another host took may have changed the guest: settle it."""
        found = parse_request_key(key)
        if found is None:
            return
        name, ident = found
        self._seen_orders.discard(ident)
        if self._arrived.pop(ident, None) is None and self._ours(name):
            self._settle(name, f"scale request {ident} taken by another host ended")

    def _on_channel(self, instance: str, connected: bool) -> None:
        """A guest's channel connected here: settle its server if it is ours."""
        if not connected or self._stopping:
            return
        server = self._cache.snapshot.by_instance(instance)
        if server is not None and self._ours(server.name):
            self._settle(server.name, "its channel connected here")

    def _settle(self, name: str, why: str) -> None:
        if name not in self._settling:
            self._settling.add(name)
            self._queue(name).put_nowait(_Settle(why))

    def _kick(self, name: str) -> None:
        want = self._wanted(name, self._cache.snapshot.servers.get(name))
        if name in self._pending:
            return
        if want != self._adopted.get(name) or (want is None and name in self._pool.placements):
            self._pending.add(name)
            self._queue(name).put_nowait(_Adopt())

    def _queue(self, name: str) -> asyncio.Queue[_Job]:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = asyncio.Queue()
        if name not in self._workers:
            self._workers[name] = asyncio.create_task(self._work(name), name=f"scaler-{name}")
        return queue

    async def _follow_requests(self, start: int) -> None:
        while True:
            try:
                watch = await self._c.watch(REQUESTS, start_revision=start)
                try:
                    async for event in watch:
                        start = event.revision + 1
                        if event.kind is EventKind.PUT:
                            self._order(event.key, event.value)
                        else:
                            self._order_ended(event.key)
                finally:
                    await watch.close()
            except asyncio.CancelledError:
                raise
            except (WatchCompacted, CoordinationError) as exc:
                log.warning("scale request watch ended (%s); listing the requests again", exc)
                await asyncio.sleep(0.5)
                with contextlib.suppress(CoordinationError):
                    rng = await self._c.get_prefix(REQUESTS)
                    for kv in rng.items:
                        self._order(kv.key, kv.value)
                    start = rng.revision + 1
            except Exception:
                log_bug(log, "the scale request watch")
                await asyncio.sleep(0.5)

    async def _follow_registry(self) -> None:
        assert self._changes is not None
        while True:
            change = await self._changes.get()
            if change.kind is ChangeKind.SERVER:
                self._kick(change.name)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(RETRY_INTERVAL)
            now = time.monotonic()
            for name in sorted(set(self._cache.snapshot.servers) | set(self._pool.placements)):
                # A driver that keeps failing (no cpuset here) is asked less often.
                if now - self._failed_at.get(name, -RETRY_BACKOFF) >= RETRY_BACKOFF:
                    self._kick(name)

    # -- one server at a time ------------------------------------------------------------

    async def _work(self, name: str) -> None:
        queue = self._queues[name]
        try:
            while True:
                try:
                    job = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    if isinstance(job, ScaleOrder):
                        await self._carry_out(job)
                    elif isinstance(job, _Sync):
                        await self._answer_sync(name, job)
                    elif isinstance(job, _Settle):
                        self._settling.discard(name)
                        await self._settle_now(name, job.why)
                    else:
                        self._pending.discard(name)
                        was = self._adopted.get(name)
                        await self._adopt(name)
                        if was is None and name in self._adopted:
                            await self._settle_now(name, "it runs here now", repin=False)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log_bug(log, f"scaling server {name}")
        finally:
            self._workers.pop(name, None)
            if not queue.empty() and not self._stopping:  # put while we were ending
                self._workers[name] = asyncio.create_task(self._work(name), name=f"scaler-{name}")
            else:
                self._queues.pop(name, None)

    def _wanted(self, name: str, server: Server | None, *, force: bool = False) -> _Run | None:
        """How `name` should be now: None when it does not run here, else its run, placed
        (it takes part in the pool: it was scaled, now or earlier in this run) or floating."""
        run = _incarnation(server, self.host) if server is not None else None
        if run is None or server is None:
            return None
        placed = force or _scaled(server) or self._adopted.get(name) == _Run(run, True)
        return _Run(run, placed)

    async def _adopt(
        self, name: str, server: Server | None = None, *, force: bool = False, repin: bool = False
    ) -> None:
        """Place and pin the vCPUs of `name` if it takes part in the pool here; let them float
        if it runs here without taking part; free its CPUs if it does not run here.
        `repin`: check every vCPU's pin even when nothing changed here (another host may
        have pinned it meanwhile)."""
        if server is None:
            server = self._cache.snapshot.servers.get(name)
        want = self._wanted(name, server, force=force)
        if want is None or server is None:
            if name in self._pool.placements or name in self._adopted:
                self._pool = self._pool.release(name)
                self._adopted.pop(name, None)
                self._online.pop(name, None)
                self._dirty.set()
                log.info("server %s no longer runs here: its CPUs are free again", name)
            return
        if self._adopted.get(name) == want and not repin:
            return
        hypervisor = self._hypervisors.get(server.spec.driver)
        if hypervisor is None:
            return
        assert server.status is not None
        online = server.status.online_cpus or tuple(range(server.spec.vcpus))
        try:
            threads = await hypervisor.vcpu_threads(server.spec)
            current = {t.index: t.affinity for t in threads}
            if want.placed:
                self._pool = self._pool.adopt(name, online, current)
            else:
                self._pool = self._pool.release(name)
            self._dirty.set()
            for vcpu in range(server.spec.vcpus):
                wanted = self._pool.affinity(name, vcpu, online) if want.placed else self._floating
                if tuple(current.get(vcpu, ())) != wanted:
                    await hypervisor.pin_vcpu(server.spec, vcpu, wanted)
        except DriverError as exc:
            log.info("server %s: its vCPUs are not placed yet (%s); trying again", name, exc)
            self._failed_at[name] = time.monotonic()
            return
        self._failed_at.pop(name, None)
        self._adopted[name] = want
        self._online[name] = tuple(online)
        self._dirty.set()  # its shared vCPUs are part of the record from now on
        if not want.placed:
            log.info("server %s runs here, not scaled: its vCPUs float", name)
            return
        shared = self._pool.shared(name, online)
        log.info(
            "server %s runs here: vCPU(s) %s on CPU(s) %s%s",
            name,
            format_cpu_list(online),
            ", ".join(f"{v}->{c}" for v, c in self._pool.placed(name).items()) or "-",
            f"; vCPU(s) {format_cpu_list(shared)} share the pool (no free CPU)" if shared else "",
        )

    async def _settle_now(self, name: str, why: str, *, repin: bool = True) -> None:
        """Pin the server's vCPUs as placed here (`repin`) and push its record to its guest."""
        try:
            server = await self._registry.get_server(name)
        except CoordinationError as exc:
            log.info("cannot read server %s to settle it: %s", name, exc)
            return
        if server is None or _incarnation(server, self.host) is None:
            return
        if repin:
            await self._adopt(name, server, repin=True)
        if server.spec.instance in self._relay.connected():
            self._send_sync(server.spec.instance, SCALE_ADDR, server, why=why)

    async def _carry_out(self, order: ScaleOrder) -> None:
        started = time.monotonic()
        phases = _Phases(started - self._arrived.get(order.id, started))
        try:
            outcome = await self._scale(order, phases)
            self.done += 1
            metrics.SCALE_OPERATIONS.labels(direction=order.direction.value, result="ok").inc()
            log.info(
                "server %s scaled %s: vCPU %s %s, online now %s (%.3f s)",
                order.server,
                order.direction.value,
                outcome.cpu,
                "offline" if order.direction is Direction.DOWN else "online",
                format_cpu_list(outcome.online_cpus),
                time.monotonic() - started,
            )
        except ScaleFailed as exc:
            self.failed += 1
            metrics.SCALE_OPERATIONS.labels(direction=order.direction.value, result="failed").inc()
            log.info("server %s not scaled %s: %s", order.server, order.direction.value, exc)
            outcome = ScaleOutcome(
                id=order.id,
                server=order.server,
                host=self.host,
                direction=order.direction,
                ok=False,
                error=str(exc),
            )
        try:
            # The pool first: whoever reads the result then sees the pool it made.
            with contextlib.suppress(CoordinationError):
                await self._publish_now()
            if outcome.ok:  # a failed order's time after its last phase is nobody's
                phases.end("record")
            outcome = replace(outcome, timings=phases.timings())
            if outcome.timings is not None:
                metrics.SCALE_LATENCY.labels(direction=order.direction.value).observe(
                    outcome.timings.total
                )
            await self._c.put(
                result_key(order.server, order.id), encode_outcome(outcome), lease=order.lease
            )
        except CoordinationError as exc:
            # The command gave up (its lease is gone) or the store is away: nobody to tell.
            log.info("the result of scale request %s is not written: %s", order.id, exc)

    # -- a scale -------------------------------------------------------------------------

    async def _scale(self, order: ScaleOrder, phases: _Phases) -> ScaleOutcome:
        name, direction = order.server, order.direction
        server = await self._registry.get_server(name)
        status = server.status if server is not None else None
        if server is None or status is None:
            raise ScaleFailed(f"server {name} does not exist any more")
        if status.host != self.host:
            raise ScaleFailed(f"server {name} moved to {status.host} meanwhile: ask again")
        spec = server.spec
        if status.state is not VmState.ACTIVE:
            raise ScaleFailed(
                f"server {name} is {status.state.value}: only an active server can be scaled"
            )
        hypervisor = self._hypervisors.get(spec.driver)
        if hypervisor is None:
            raise ScaleFailed(f"host {self.host} cannot pin vCPUs of {spec.driver.value} servers")
        await self._adopt(name, server, force=True)  # it takes part in the pool from now on
        online = set(status.online_cpus or range(spec.vcpus))
        ident = next(self._ids)
        if direction is Direction.DOWN:
            if len(online) <= spec.min_vcpus:
                raise ScaleFailed(
                    limit_sentence(name, len(online), spec.min_vcpus, spec.vcpus, direction)
                )
            request = ScaleRequest(direction=direction, timeout_ms=order.timeout_ms, id=ident)
            phases.end("check")
            reply = await self._ask(server, request)
            phases.end("guest")
            cpu = reply.cpu
            assert cpu is not None
            if cpu == 0 or cpu >= spec.vcpus:
                raise ScaleFailed(
                    f"the guest of server {name} took vCPU {cpu} offline, which it may not "
                    f"(vCPUs 1..{spec.vcpus - 1}); the record is unchanged"
                )
            new_online = _guest_online(name, reply, spec.vcpus) - {cpu}
            before = self._pool
            self._pool = self._pool.give_back(name, cpu)
            freed = sorted(set(self._pool.free) - set(before.free))
            pinned = await self._pin(
                hypervisor, server, cpu, self._pool.affinity(name, cpu, new_online)
            )
            host_cpu = freed[0] if freed else None
        else:
            if len(online) >= spec.vcpus:
                raise ScaleFailed(
                    limit_sentence(name, len(online), spec.min_vcpus, spec.vcpus, direction)
                )
            cpu = min(set(range(spec.vcpus)) - online)
            try:
                reserved, host_cpu = self._pool.take(name, cpu)
            except NoFreeCpu:
                raise ScaleFailed(
                    f"no free physical CPU on {self.host} for vCPU {cpu} of server {name} "
                    f"(its pool {format_cpu_list(self._pool.cpus)} is all in use); nothing changed"
                ) from None
            self._pool = reserved
            self._dirty.set()
            wanted = sorted(online | {cpu})
            request = ScaleRequest(
                direction=direction,
                timeout_ms=order.timeout_ms,
                online_cpu=cpu,
                online_cpus=tuple(wanted),
                id=ident,
            )
            phases.end("check")
            try:
                reply = await self._ask(server, request)
                phases.end("guest")
                if reply.cpu != cpu:
                    raise ScaleFailed(
                        f"the guest of server {name} brought vCPU {reply.cpu} online, not vCPU "
                        f"{cpu} as asked; the record is unchanged"
                    )
            except BaseException:
                self._pool = self._pool.give_back(name, cpu)
                self._dirty.set()
                raise
            new_online = _guest_online(name, reply, spec.vcpus) | {cpu}
            pinned = await self._pin(hypervisor, server, cpu, (host_cpu,))
        phases.end("hypervisor")
        self._dirty.set()
        written = await self._record(name, tuple(sorted(new_online)))
        phases.end("record")
        self._online[name] = written
        if pinned is not None:
            raise pinned  # the guest and the record agree; the pin is what failed
        return ScaleOutcome(
            id=order.id,
            server=name,
            host=self.host,
            direction=direction,
            ok=True,
            cpu=cpu,
            online_cpus=written,
            host_cpu=host_cpu,
        )

    async def _pin(
        self, hypervisor: Hypervisor, server: Server, vcpu: int, cpus: Sequence[int]
    ) -> ScaleFailed | None:
        """Pin `vcpu`; None when done, else the sentence to fail with once the record is written."""
        try:
            await hypervisor.pin_vcpu(server.spec, vcpu, cpus)
        except DriverError as exc:
            return ScaleFailed(
                f"server {server.name} scaled (its record says so), but pinning its vCPU {vcpu} "
                f"to host CPU(s) {format_cpu_list(cpus)} failed: {exc}"
            )
        return None

    async def _ask(self, server: Server, request: ScaleRequest) -> ScaleReply:
        """Send `request` to the server's scale agent; its successful reply, or ScaleFailed."""
        name, instance = server.name, server.spec.instance
        address = scale_address(instance)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[ScaleReply | ScaleNack] = loop.create_future()

        def on_reply(source: str, envelope: Envelope) -> None:
            if source != instance or answer.done():
                return
            try:
                reply = decode_reply(envelope.data)
            except ProtocolError as exc:
                answer.set_exception(
                    ScaleFailed(f"the guest of server {name} answered garbage: {exc}")
                )
                return
            if isinstance(reply, ScaleReply):
                if reply.id is not None and reply.id != request.id:
                    return  # the late answer to an earlier request that timed out
                if reply.direction is not request.direction:
                    answer.set_exception(
                        ScaleFailed(
                            f"the guest of server {name} answered a scale "
                            f"{reply.direction.value} to a scale {request.direction.value}"
                        )
                    )
                    return
            answer.set_result(reply)

        try:
            unroute = self._relay.route(address, on_reply)
        except Exception:
            raise ScaleFailed(f"server {name} is being scaled by another request") from None
        wait = request.timeout_ms / 1000 + REPLY_GRACE
        try:
            sent = await self._relay.send_to_guest(
                instance,
                Envelope(data=encode_message(request), dest_addr=SCALE_ADDR, source_addr=address),
            )
            if not sent:
                raise ScaleFailed(
                    f"the channel of server {name} is not connected on {self.host}: "
                    "its guest agent is not running"
                )
            async with asyncio.timeout(wait):
                reply = await answer
        except TimeoutError:
            moved = await self._moved_to(name)
            if moved is not None:
                raise ScaleFailed(
                    f"server {name} moved to {moved} while being scaled, and its guest's answer "
                    f"did not come back here; {moved} brings the guest back to its record: "
                    "scale it again"
                ) from None
            raise ScaleFailed(
                f"the guest of server {name} did not answer within {wait:g} s: "
                "is its scale agent running?"
            ) from None
        finally:
            unroute()
        if isinstance(reply, ScaleNack):
            raise ScaleFailed(
                f"the guest of server {name} refused the request: {reply.log_msg or 'no reason'}"
            )
        if reply.result is not Result.SUCCESS:
            raise ScaleFailed(
                f"the guest of server {name} could not scale {request.direction.value}: "
                f"{reply.err_msg or 'no reason given'}"
            )
        return reply

    async def _moved_to(self, name: str) -> str | None:
        """The host `name` runs on now when that is not this host (None: here, or unknown)."""
        try:
            server = await self._registry.get_server(name)
        except CoordinationError:
            return None
        status = server.status if server is not None else None
        return status.host if status is not None and status.host != self.host else None

    async def _record(self, name: str, online: tuple[int, ...]) -> tuple[int, ...]:
        """Write the server's online vCPUs into its status (read, compare, write again)."""
        for _ in range(50):
            server = await self._registry.get_server(name)
            status = server.status if server is not None else None
            if server is None or status is None:
                raise ScaleFailed(
                    f"server {name} was deleted while being scaled; nothing is recorded"
                )
            if status.host != self.host:
                raise ScaleFailed(
                    f"server {name} moved to {status.host} while being scaled: its guest had "
                    f"vCPU(s) {format_cpu_list(online)} online, which its record does not say; "
                    f"{status.host} brings the guest back to its record: scale it again"
                )
            guard = self._fence() if self._fence is not None else None
            if self._fence is not None and guard is None:
                raise ScaleFailed(
                    f"host {self.host} lost its session while scaling server {name}: "
                    "the record is unchanged"
                )
            new = replace(
                status,
                online_cpus=online,
                vcpus=server.spec.vcpus,
                updated_at=_now_iso(self._wall()),
            )
            try:
                await self._registry.put_status(
                    new,
                    if_mod_revision=server.status_revision,
                    spec_revision=server.spec_revision,
                    guard=guard,
                )
            except RevisionConflict:
                await asyncio.sleep(0.01)
                continue
            except FencingError:
                raise ScaleFailed(
                    f"host {self.host} lost its registration while scaling server {name}: "
                    "the record is unchanged"
                ) from None
            except CoordinationError as exc:
                raise ScaleFailed(
                    f"the record of server {name} could not be written: {exc}"
                ) from None
            return online
        raise ScaleFailed(f"the record of server {name} kept changing; scale it again")

    # -- boot sync -----------------------------------------------------------------------

    def _on_sync(self, instance: str, envelope: Envelope) -> None:
        try:
            message = decode_request(envelope.data)
        except ProtocolError as exc:
            log.info("ignoring a message from %s to %s: %s", instance, SCALE_ADDR, exc)
            return
        if not isinstance(message, SyncRequest):
            log.info("ignoring a %s from %s to the host", type(message).__name__, instance)
            return
        reply_to = envelope.source_addr or SCALE_ADDR
        server = self._cache.snapshot.by_instance(instance)
        if server is None:
            self._send_sync(instance, reply_to, None)
            return
        # In the server's queue: a scale in flight ends first, and the answer is read
        # after it (answered at once, it could undo in the guest what the scale did).
        self._queue(server.name).put_nowait(_Sync(instance=instance, reply_to=reply_to))

    async def _answer_sync(self, name: str, job: _Sync) -> None:
        try:
            server = await self._registry.get_server(name)
        except CoordinationError:
            server = self._cache.snapshot.servers.get(name)
        self._send_sync(job.instance, job.reply_to, server)

    def _send_sync(
        self, instance: str, reply_to: str, server: Server | None, *, why: str = ""
    ) -> None:
        offline = offline_vcpus(server)
        reply = Envelope(
            data=encode_message(SyncReply(offline_cpus=offline)),
            dest_addr=reply_to,
            source_addr=SCALE_ADDR,
        )
        log.info(
            "%s of %s (%s): vCPU(s) %s offline",
            f"scale sync pushed ({why})" if why else "boot sync",
            instance,
            server.name if server is not None else "no record",
            format_cpu_list(offline) or "none",
        )
        task = asyncio.ensure_future(self._relay.send_to_guest(instance, reply))
        task.add_done_callback(_ignore_result)

    # -- the pool's record -----------------------------------------------------------------

    def pool_record(self) -> PoolRecord:
        pool = self._pool
        shared: dict[str, tuple[int, ...]] = {}
        for name, run in self._adopted.items():
            left = pool.shared(name, self._online.get(name, ())) if run.placed else ()
            if left:
                shared[name] = left
        return PoolRecord(
            host=self.host,
            cpus=pool.cpus,
            free=pool.free,
            placed={s: dict(m) for s, m in pool.placements.items()},
            shared=shared,
            updated_at=_now_iso(self._wall()),
        )

    async def _publish_now(self) -> None:
        """Write `scaling/hosts/<host>` on the session's lease if it changed; raises
        CoordinationError."""
        async with self._publishing:
            lease = self._lease()
            record = self.pool_record()
            value = encode_pool(replace(record, updated_at=""))
            if not lease or self._published == (lease, value):
                return
            await self._c.put(pool_key(self.host), encode_pool(record), lease=lease)
            self._published = (lease, value)

    async def _publish(self) -> None:
        """Keep `scaling/hosts/<host>` up to date (and on the session's current lease)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._publish_now()
            except CoordinationError as exc:
                log.info("cannot publish the CPU pool of %s yet: %s", self.host, exc)
                self._dirty.set()
                await asyncio.sleep(0.5)
            except Exception:
                log_bug(log, "publishing the CPU pool")
                await asyncio.sleep(0.5)


def _ignore_result(task: asyncio.Future[bool]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a failed send was logged by the relay


def limit_sentence(name: str, online: int, least: int, most: int, direction: Direction) -> str:
    """Why a scale past the flavor's limits is refused (one sentence)."""
    if direction is Direction.DOWN:
        return (
            f"server {name} has {online} vCPU(s) online, its flavor's minimum (min_vcpus "
            f"{least}): it cannot be scaled down"
        )
    return (
        f"server {name} has all {most} vCPU(s) of its flavor online (its maximum): "
        "it cannot be scaled up"
    )


def _guest_online(name: str, reply: ScaleReply, vcpus: int) -> set[int]:
    online = {c for c in reply.online_cpus if c < vcpus}
    if 0 not in online:
        raise ScaleFailed(
            f"the guest of server {name} reports vCPU 0 offline "
            f"(online {format_cpu_list(reply.online_cpus) or 'none'}); the record is unchanged"
        )
    return online


__all__ = [
    "ScaleFailed",
    "Scaler",
    "limit_sentence",
    "offline_vcpus",
    "scale_address",
]
