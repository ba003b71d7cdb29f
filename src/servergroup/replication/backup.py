"""`servergroup backup`: the backup daemon, the asyncio driver of `BackupMachine`.

Theory of operation. The backup constructs the same service class on
regions of its own (same names and sizes: the layout a primary's `Hello`
must match) and listens on `--listen` for a primary. A connection whose
first message is a `Hello` is the checkpoint stream; one whose first
message is a `Heartbeat` is the heartbeat connection (a separate TCP
connection, so a large checkpoint never delays a heartbeat). A new stream
replaces the old one (a partial epoch of the old one is dropped).

The machine decides; this module carries its actions out in order:
`SendWelcome`/`SendRefuse`/`SendAck` on the stream, `DropStream` closes it,
`ApplyCheckpoint` scatters the epoch's pages into the regions
(`checkpoint.apply`) and writes and syncs its disk writes, all before the
`SendAck` that follows it, so an ack means "this epoch is here, disk
durable". `SendHeartbeat` goes on the heartbeat connection.

Takeover. When the primary's heartbeats stop for `--primary-timeout` and a
complete checkpoint was applied, the machine asks for `ClaimActive`: a
compare-and-set of the pair's key to the next generation naming this node
the only active. etcd decides; won (and the session may still act):
`Activate`, and the daemon serves the service, as it stands after the last
applied epoch, on `--serve`, unprotected (replies leave at once: there is
no backup to wait for) until a backup answers: `--next-backup` when given,
else any `servergroup backup` of the pair started later (it advertises its
address in its status); that one gets a full copy, then increments. Lost:
it stands down and waits for a new hello.
While active, the pair's key moving past its generation or its session
turning SUSPENDED stops it (`authority`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from servergroup.common.component import Background
from servergroup.common.errors import RemoteError, ServergroupError, UsageError
from servergroup.config import CoordinationConfig
from servergroup.coordination import Coordinator
from servergroup.replication import backup_machine as bm
from servergroup.replication.authority import STATUS_PREFIX, Authority
from servergroup.replication.channel import ChannelClosed, TcpChannel, serve
from servergroup.replication.checkpoint import apply
from servergroup.replication.pair import PairRecord
from servergroup.replication.primary import Built, PrimaryDaemon, PrimaryOptions
from servergroup.replication.protocol import (
    Ack,
    Heartbeat,
    Hello,
    Message,
    Refuse,
    ReplicationProtocolError,
    Welcome,
)
from servergroup.replication.regions import PAGE_SIZE
from servergroup.replication.status import decode_node_status

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupOptions:
    service: str
    listen: tuple[str, int]
    serve: tuple[str, int]
    pair: str
    node: str
    primary_timeout: float = 1.0
    heartbeat_interval: float = 0.1
    #: After a takeover, protect the service with a backup at this address.
    next_backup: tuple[str, int] | None = None


class BackupDaemon:
    """See the module docstring."""

    def __init__(
        self,
        options: BackupOptions,
        coordinator: Coordinator,
        coordination: CoordinationConfig | None = None,
    ) -> None:
        self.options = options
        self._coordinator = coordinator
        self._coordination = coordination or CoordinationConfig()
        self._authority = Authority(
            coordinator, self._coordination, pair=options.pair, node=options.node
        )
        self._loop = asyncio.get_running_loop()
        self._stopped: asyncio.Future[str] = self._loop.create_future()
        self._wake = asyncio.Event()
        self._stream: TcpChannel | None = None
        self._beats: TcpChannel | None = None
        self._tasks = Background(self._task_failed)
        self._server: asyncio.Server | None = None
        self._primary: PrimaryDaemon | None = None
        self._last_size = 0

    async def run(self) -> None:
        with Built.temporary(self.options.service, prefix="sg-backup-") as built:
            self.built = built
            try:
                await self._run()
            finally:
                await self._shutdown()

    async def _run(self) -> None:
        opts = self.options
        built = self.built
        config = bm.BackupConfig(
            service=built.name,
            page_size=PAGE_SIZE,
            regions=built.regions.layout,
            disk_size=built.space.disk_size,
            heartbeat_interval=opts.heartbeat_interval,
            primary_timeout=opts.primary_timeout,
        )
        await self._authority.start()
        record, since = await self._authority.snapshot()
        if record is not None and record.active == opts.node:
            # The same name as the running active (the same --serve on its host): the two
            # would share one status key, and this one would take the active's changes
            # to the pair's key for its own.
            found = await self._coordinator.get(f"{STATUS_PREFIX}{opts.pair}/{opts.node}")
            running = None if found is None else decode_node_status(found.value)
            if running is not None and running.role.startswith("primary"):
                raise UsageError(
                    f"{opts.node} is the name of pair {opts.pair}'s running active node:"
                    " give this backup another --serve (or --node)."
                )
        generation = 0 if record is None else record.generation
        self.machine = bm.BackupMachine(config, generation=generation, now=self._loop.time())
        self._authority.follow(self._on_generation, self._on_session_lost, since=since)
        self._authority.publish(self.status)
        try:
            self._server = await serve(*opts.listen, self._on_channel)
        except OSError as exc:
            host, port = opts.listen
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise UsageError(f"cannot listen on {host}:{port}: {why.lower()}") from None
        log.warning(
            "backup for %s listening for a primary on %s:%d (pair %s, generation %d)",
            built.name,
            *opts.listen,
            opts.pair,
            generation,
        )
        self._spawn(self._timer())
        reason = await self._stopped
        if reason:
            raise RemoteError(f"the backup stopped: {reason}.")

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for channel in (self._stream, self._beats):
            if channel is not None:
                await channel.close()
        await self._tasks.cancel()
        await self._authority.close()

    def stop(self) -> None:
        if not self._stopped.done():
            self._stopped.set_result("")

    def _stop(self, reason: str) -> None:
        if self._stopped.done():
            return
        log.error("stopping: %s", reason)
        if self._primary is not None:
            self._primary.halt(reason)
        self._stopped.set_result(reason)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro)

    def _task_failed(self, exc: BaseException) -> None:
        log.error("a backup task failed: %r", exc, exc_info=exc)
        self._stop(f"internal failure: {exc}")

    # -- the machine ---------------------------------------------------------------------

    async def _timer(self) -> None:
        while not self._stopped.done():
            await self._do(self.machine.tick(self._loop.time()), None)
            delay = self.machine.next_timer() - self._loop.time()
            self._wake.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(delay, 1.0))

    async def _do(self, actions: list[bm.BackupAction], stream: TcpChannel | None) -> None:
        """Carry out `actions` in order; `stream` is the connection they answer, if any."""
        for action in actions:
            if self._stopped.done():
                return
            match action:
                case bm.SendWelcome(generation=generation):
                    await self._reply(stream, Welcome(generation=generation))
                case bm.SendRefuse(reason=reason):
                    await self._reply(stream, Refuse(reason=reason))
                case bm.DropStream(reason=reason):
                    if stream is not None:
                        await stream.close()
                case bm.ApplyCheckpoint(epoch=epoch, full=full, pages=pages, writes=writes):
                    size = apply(self.built.regions, pages)
                    disk = self.built.space.replicated_disk
                    if disk is not None:
                        size += disk.apply_writes(writes)
                    self._last_size = size
                    if full:
                        log.warning("applied full epoch %d (%d bytes)", epoch, size)
                    else:
                        log.debug("applied epoch %d (%d bytes)", epoch, size)
                case bm.SendAck(generation=generation, epoch=epoch):
                    await self._reply(stream, Ack(generation=generation, epoch=epoch))
                case bm.SendHeartbeat(generation=generation, epoch=epoch):
                    if self._beats is not None:
                        self._spawn(
                            self._beat(self._beats, Heartbeat(generation=generation, epoch=epoch))
                        )
                case bm.ClaimActive(previous=previous):
                    self._spawn(self._claim(previous))
                case bm.Activate(generation=generation, epoch=epoch):
                    await self._activate(generation, epoch)
                case bm.StopService(reason=reason):
                    self._stop(reason)
                case bm.CheckpointRejected(reason=reason):
                    log.warning("refused from the primary: %s", reason)
                case bm.PrimaryLost(reason=reason):
                    log.warning("primary lost: %s", reason)
                case bm.StoodDown(reason=reason):
                    log.warning("standing down: %s", reason)
        self._wake.set()

    async def _reply(self, stream: TcpChannel | None, message: Message) -> None:
        if stream is None:
            return
        with contextlib.suppress(ChannelClosed):
            await stream.send([message])

    async def _beat(self, channel: TcpChannel, message: Heartbeat) -> None:
        with contextlib.suppress(ChannelClosed):
            await channel.send([message])

    def _on_generation(self, record: PairRecord) -> None:
        if record.active == self.options.node:
            return  # our own claim or attach
        self._spawn(self._do(self.machine.fenced(record.generation, self._loop.time()), None))

    def _on_session_lost(self, reason: str) -> None:
        if self.machine.phase in (bm.BackupPhase.ACTIVE, bm.BackupPhase.CLAIMING):
            self._stop(reason)
        else:
            log.warning("%s (not active: going on)", reason)

    async def _claim(self, previous: int) -> None:
        try:
            record = await self._authority.pair.claim(previous, self.options.node)
        except ServergroupError as exc:
            log.warning("claiming the pair's key failed: %s", exc)
            record = None
        now = self._loop.time()
        if record is not None and self._authority.may_act():
            await self._do(self.machine.claim_won(record.generation, now), None)
        else:
            await self._do(self.machine.claim_lost(now), None)

    async def _activate(self, generation: int, epoch: int) -> None:
        """Serve the service as it stands after `epoch`: as a primary, unprotected at first.

        The primary driver runs on these regions under this node's name, so
        the pair's key it changes (attaching `--next-backup` or any backup the
        pair advertises later) is ours; this daemon's watch and session go on
        fencing it.
        """
        if self._server is not None:
            self._server.close()
        for channel in (self._stream, self._beats):
            if channel is not None:
                await channel.close()
        opts = self.options
        primary = PrimaryDaemon(
            PrimaryOptions(
                service=opts.service,
                listen=opts.serve,
                backup=opts.next_backup,
                pair=opts.pair,
                node=opts.node,
                heartbeat_interval=opts.heartbeat_interval,
                stdin_commands=False,
                start_unprotected=True,
            ),
            self._coordinator,
            self._coordination,
            built=self.built,
        )
        self._primary = primary
        running = asyncio.create_task(primary.run())
        serving = asyncio.create_task(primary.serving.wait())
        await asyncio.wait([running, serving], return_when=asyncio.FIRST_COMPLETED)
        if not serving.done():
            serving.cancel()
            exc = running.exception()
            self._stop(str(exc) if exc else "the service stopped at once")
            return
        self._tasks.adopt(running, self._primary_done)
        host, port = opts.serve
        log.warning(
            "took over at generation %d from epoch %d: serving %s on %s:%d%s",
            generation,
            epoch,
            self.built.name,
            host,
            port,
            ", unprotected until a backup answers (at {}:{}, or any the pair advertises)".format(
                *opts.next_backup
            )
            if opts.next_backup
            else ", unprotected until a backup of the pair answers",
        )

    def _primary_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        self._stop(str(exc) if exc else "")

    # -- connections from the primary -------------------------------------------------------

    async def _on_channel(self, channel: TcpChannel) -> None:
        try:
            first = await channel.receive()
        except (ChannelClosed, ReplicationProtocolError) as exc:
            log.info("a connection from %s failed before its first message: %s", channel.peer, exc)
            return
        if isinstance(first, Hello):
            await self._follow_stream(channel, first)
        elif isinstance(first, Heartbeat):
            await self._follow_beats(channel, first)
        else:
            log.warning("%s opened with %s: closing it", channel.peer, type(first).__name__)

    def _unwelcome(self, hello: Hello) -> str | None:
        """Why a hello may not replace the stream we follow (None: it may)."""
        cfg = self.machine.status()
        if hello.generation < cfg.generation:
            return f"generation {hello.generation} is stale (this backup has seen {cfg.generation})"
        if hello.service != self.built.name or hello.regions != self.built.regions.layout:
            return f"this backup is for service {self.built.name!r} with another layout"
        return None

    async def _follow_stream(self, channel: TcpChannel, hello: Hello) -> None:
        if self._stream is not None:
            # A stale or foreign hello must not break the stream we follow.
            reason = self._unwelcome(hello)
            if reason is not None:
                log.warning("refused a hello from %s: %s", channel.peer, reason)
                await self._reply(channel, Refuse(reason=reason))
                return
        old, self._stream = self._stream, channel
        if old is not None:
            await old.close()
            await self._do(self.machine.stream_closed(self._loop.time()), None)
        log.info("checkpoint stream from %s (generation %d)", channel.peer, hello.generation)
        await self._do(self.machine.received(hello, self._loop.time()), channel)
        try:
            while True:
                message = await channel.receive()
                await self._do(self.machine.received(message, self._loop.time()), channel)
        except (ChannelClosed, ReplicationProtocolError) as exc:
            if self._stream is channel:
                self._stream = None
                log.info("the checkpoint stream from %s ended: %s", channel.peer, exc)
                await self._do(self.machine.stream_closed(self._loop.time()), None)
            else:
                log.info("the replaced checkpoint stream from %s ended: %s", channel.peer, exc)

    async def _follow_beats(self, channel: TcpChannel, first: Heartbeat) -> None:
        old, self._beats = self._beats, channel
        if old is not None:
            await old.close()
        message: Message = first
        try:
            while True:
                if isinstance(message, Heartbeat):
                    await self._do(self.machine.heartbeat(message, self._loop.time()), None)
                message = await channel.receive()
        except (ChannelClosed, ReplicationProtocolError):
            if self._beats is channel:
                self._beats = None

    def status(self) -> dict[str, object]:
        if self._primary is not None and self._primary.serving.is_set():
            return {**self._primary.status(), "role": "primary (took over)"}
        st = self.machine.status()
        return {
            "role": "backup",
            "node": self.options.node,
            "phase": st.phase.value,
            "generation": st.generation,
            "applied": st.applied,
            "last_checkpoint_bytes": self._last_size,
            # Where a primary of this pair finds us (re-protection at another address).
            "listen": "{}:{}".format(*self.options.listen),
        }
