"""`servergroup protect`: the primary daemon, the asyncio driver of `PrimaryMachine`.

Theory of operation. The daemon builds the service on tracked regions
(`service.load_service`, `regions`, `tracking.open_tracker`), takes the
pair's key in etcd as its active (`pair.PairKey.establish`, under a
session lease: `authority`), names its backup in the key (a new
generation), opens two connections to the backup (the checkpoint stream,
which starts with `Hello`, and the heartbeat connection, which starts with
a `Heartbeat`), then serves clients on `--listen` (`front.ClientFront`).

The machine decides; this module carries its actions out, in order, as it
emits them (`_do`):

- `SuspendDispatch` closes the front's gate; `handle` runs synchronously on
  this loop, so no handler is in flight and `suspended` is answered at once.
- `Capture` copies the dirty pages (`checkpoint.Capturer`), takes the disk's
  epoch log and seals the output buffer; `ResumeDispatch` opens the gate.
  While the epoch runs, pre-copy rounds (`Capturer.precopy`, in a worker
  thread) copy the pages written so far, so that the capture copies only
  what was written since the last round; a round never overlaps a suspend
  (the timer waits for it) and runs only when the suspend is not due yet;
  when it is due, last rounds run first while the service goes on (as a
  live migration's last iterations: up to 3, until one copies under 256
  pages), so that the pause copies only what was written during the last.
- `SendCheckpoint` gathers the captured pages and builds the epoch's
  messages (`protocol.epoch_messages`) in a worker thread, then streams
  them in a task; the backup's `Ack` comes back on the same stream
  (`acked`).
- `CommitDisk` syncs the disk; `ReleaseOutput` hands the epoch's replies to
  the clients, only while the session may act (else the daemon stops).
- `InjectFailure` kills this process with SIGKILL on the spot (the seed's
  `die()`): nothing after the point happens.
- `ClaimActive` compare-and-sets the pair's key (a task); `StopService`
  ends the daemon, releasing nothing more.

Heartbeats go both ways on their own connection. A broken connection is
not a failure: both connections are reopened (`stream_reset`, and the next
checkpoint is full); a backup that stays away is detected by heartbeat
silence, which makes the machine claim the key and go UNPROTECTED (or stop,
with `--on-backup-loss stop`). While unprotected the daemon keeps trying to
reach a backup at `--backup`, then at every address a running backup of
the pair advertises in its status (`listen`), so a new backup started at
another address re-protects it too; one that answers is named in the key at
a new generation and gets a full checkpoint, then increments
(re-protection).

Failure points come from `--fail-at` (armed at start) and from stdin, one
command per line (`s s2 r r2 c c2`, as in the seed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servergroup.common import metrics
from servergroup.common.component import Background
from servergroup.common.errors import RemoteError, ServergroupError, UsageError
from servergroup.config import CoordinationConfig
from servergroup.coordination import Coordinator
from servergroup.replication import primary_machine as pm
from servergroup.replication.authority import STATUS_PREFIX, Authority
from servergroup.replication.channel import ChannelClosed, TcpChannel, connect
from servergroup.replication.checkpoint import Captured, Capturer
from servergroup.replication.front import ClientFront, parse_address
from servergroup.replication.hooks import FailurePoint, parse_failure_point
from servergroup.replication.output import OutputBuffer, OutputOverflow
from servergroup.replication.pair import PairRecord
from servergroup.replication.protocol import (
    Ack,
    DiskWrite,
    EpochBegin,
    Heartbeat,
    Hello,
    Message,
    Pages,
    Refuse,
    ReplicationProtocolError,
    Welcome,
    epoch_messages,
)
from servergroup.replication.regions import PAGE_SIZE, RegionSet
from servergroup.replication.service import ProtectedService, ServiceSpace, load_service
from servergroup.replication.status import decode_node_status
from servergroup.replication.tracking import open_tracker

log = logging.getLogger(__name__)

#: Seconds to wait for the backup to answer a connection or a hello.
CONNECT_TIMEOUT = 3.0
#: Seconds between attempts to reach a backup that went away.
RECONNECT_INTERVAL = 0.5
#: Pre-copy rounds run while the last checkpoint had at least this many pages
#: (below it the copy inside the pause is well under a millisecond).
PRECOPY_MIN_PAGES = 256
#: Rounds per interval, and the least time between two rounds (seconds).
PRECOPY_ROUNDS = 4
PRECOPY_MIN_SPACING = 0.004
#: Rounds at most when the epoch is due, until one copies under PRECOPY_MIN_PAGES.
PRECOPY_LAST_ROUNDS = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryOptions:
    service: str
    listen: tuple[str, int]
    backup: tuple[str, int] | None
    pair: str
    node: str
    interval: float = 0.2
    net_buffer: bool = True
    fail_at: FailurePoint | None = None
    on_backup_loss: pm.OnBackupLoss = pm.OnBackupLoss.CONTINUE
    backup_timeout: float = 1.5
    heartbeat_interval: float = 0.1
    stdin_commands: bool = True
    #: A backup that took over: start UNPROTECTED in the pair and attach a backup when one
    #: answers (`backup` first when given, then the pair's advertised backups).
    start_unprotected: bool = False

    @property
    def paired(self) -> bool:
        """Whether this primary is one of a pair in etcd (not `--no-backup`)."""
        return self.backup is not None or self.start_unprotected


def default_node(listen: tuple[str, int]) -> str:
    """This node's name in the pair's key: host and the client address."""
    return f"{socket.gethostname()}/{listen[0]}:{listen[1]}"


def _commands_readable() -> bool:
    """Whether stdin can carry commands: a pipe or socket, or the terminal we are in front of.

    A background job reading its terminal would be stopped (SIGTTIN), and
    /dev/null or a file cannot be watched by the event loop.
    """
    try:
        mode = os.fstat(0).st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            return True
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


class Built:
    """A service constructed on fresh regions, with its tracker and (maybe) disk."""

    def __init__(self, spec: str, disk_dir: Path) -> None:
        self.name, factory = load_service(spec)
        self.regions = RegionSet()
        self.space = ServiceSpace(self.regions, disk_dir / "disk")
        try:
            self.service: ProtectedService = factory(self.space)
        except ServergroupError:
            raise
        except Exception as exc:
            raise UsageError(f"service {self.name!r} failed to start: {exc}") from None
        if not len(self.regions):
            raise UsageError(f"service {self.name!r} allocated no region: nothing to protect.")

    @classmethod
    @contextlib.contextmanager
    def temporary(cls, spec: str, *, prefix: str) -> Iterator[Built]:
        """`spec` built with its disk in a temporary file; regions closed after.

        The file is unlinked, and its directory removed, as soon as the service
        is constructed (it keeps the disk open): a daemon killed with SIGKILL
        leaves nothing behind in the temporary directory.
        """
        tmp = tempfile.mkdtemp(prefix=prefix)
        try:
            built = cls(spec, Path(tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            # A service allocates its disk in its constructor; the place is gone now.
        built.space.seal()
        try:
            yield built
        finally:
            del built.service
            with contextlib.suppress(ServergroupError):
                built.regions.close()

    def hello(self, generation: int) -> Hello:
        return Hello(
            service=self.name,
            generation=generation,
            page_size=PAGE_SIZE,
            disk_size=self.space.disk_size,
            regions=self.regions.layout,
        )


class PrimaryDaemon:
    """See the module docstring."""

    def __init__(
        self,
        options: PrimaryOptions,
        coordinator: Coordinator | None,
        coordination: CoordinationConfig | None = None,
        *,
        built: Built | None = None,
    ) -> None:
        """`built`: serve a service already built (a backup that took over) instead of a new one."""
        if options.paired and coordinator is None:
            raise UsageError("a protected primary needs etcd for the pair's key.")
        self.options = options
        self._coordinator = coordinator
        self._coordination = coordination or CoordinationConfig()
        self._authority: Authority | None = None
        self._loop = asyncio.get_running_loop()
        self._stopped: asyncio.Future[str] = self._loop.create_future()
        self._wake = asyncio.Event()
        self._stream: TcpChannel | None = None
        self._beats: TcpChannel | None = None
        self._tasks = Background(self._task_failed)
        self._captured: Captured | None = None
        self._writes: list[DiskWrite] = []
        self._attaching = False
        #: Serialises this primary's changes of the pair's key (claims, attaches).
        self._key_lock = asyncio.Lock()
        self._last_pause = 0.0
        self._last_size = 0
        self._last_pages = 0
        #: Set while no pre-copy round runs (the timer waits for it before a suspend).
        self._precopy_idle = asyncio.Event()
        self._precopy_idle.set()
        self._precopy_cost = 0.0
        self._precopied = 0
        self._final_round_done = False
        self._given = built
        #: Send replies at once while UNPROTECTED (not with --no-backup: a benchmark of buffering).
        self._pass_unprotected = options.paired
        #: Set once clients are served.
        self.serving = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until stopped; raises `RemoteError` with the reason when stopped by a fault."""
        if self._given is not None:
            self.built = self._given
            try:
                await self._run()
            finally:
                await self._shutdown()
            return
        with Built.temporary(self.options.service, prefix="sg-protect-") as built:
            self.built = built
            try:
                await self._run()
            finally:
                await self._shutdown()

    async def _run(self) -> None:
        opts = self.options
        built = self.built
        # The client socket first: an address in use fails before etcd is touched.
        # Requests wait at the closed gate until the pair is set up.
        self.output = OutputBuffer(buffering=opts.net_buffer)
        self.front = ClientFront(
            built.service.handle,
            self._on_reply,
            on_gone=self.output.drop,
            too_long=getattr(built.service, "too_long", None),
        )
        self.front.pause()
        host, port = await self.front.start(*opts.listen)
        self.tracker = open_tracker()
        for region in built.regions:
            self.tracker.track(region)
        self.capturer = Capturer(built.regions, self.tracker)
        now = self._loop.time()
        generation = 0
        created: PairRecord | None = None  # the pair, when this run made it
        if opts.paired:
            assert self._coordinator is not None
            self._authority = Authority(
                self._coordinator, self._coordination, pair=opts.pair, node=opts.node
            )
            await self._authority.start()
            existed, _ = await self._authority.pair.read()
            record = await self._authority.pair.establish(opts.node)
            generation = record.generation
            created = record if existed is None else None
        config = pm.PrimaryConfig(
            interval=opts.interval,
            heartbeat_interval=opts.heartbeat_interval,
            backup_timeout=opts.backup_timeout,
            on_backup_loss=opts.on_backup_loss,
            no_backup=opts.backup is None or opts.start_unprotected,
        )
        self.machine = pm.PrimaryMachine(config, generation=generation, now=now)
        self.machine.arm_failure(opts.fail_at)
        if opts.start_unprotected:
            self._spawn(self._reattach())
        elif opts.backup is not None:
            try:
                await self._attach_first(opts.backup)
            except RemoteError:
                if created is not None and self._authority is not None:
                    # It never served: leave no pair behind naming it active, which
                    # would refuse the next `protect` (say, with --backup corrected).
                    with contextlib.suppress(ServergroupError):
                        await self._authority.pair.abandon(created)
                raise
        if self._authority is not None:
            _, since = await self._authority.snapshot()
            self._authority.follow(self._on_generation, self._stop, since=since)
            if self._given is None:  # else the backup daemon that took over publishes ours
                self._authority.publish(self.status)
        self.front.resume()
        self.serving.set()
        mode = (
            "UNPROTECTED until a backup answers"
            if opts.start_unprotected
            else "UNPROTECTED (no backup)"
            if opts.backup is None
            else "protected"
        )
        log.warning(
            "serving %s on %s:%d, %s, generation %d, interval %.0f ms%s",
            built.name,
            host,
            port,
            mode,
            self.machine.generation,
            opts.interval * 1000,
            "" if opts.net_buffer else ", output NOT buffered (--no-net-buffer)",
        )
        if opts.stdin_commands:
            self._spawn(self._read_commands())
        self._spawn(self._timer())
        if self.capturer.can_precopy:
            self._spawn(self._precopy())
        reason = await self._stopped
        if reason:
            raise RemoteError(f"the primary stopped: {reason}.")

    async def _attach_first(self, backup: tuple[str, int]) -> None:
        """Attach the first backup; what went wrong as one `RemoteError` that says what to do."""
        where = f"{backup[0]}:{backup[1]}"
        try:
            await self._attach(backup)
        except ChannelClosed as exc:
            raise RemoteError(
                f"the backup is unreachable ({exc}): start"
                f" `servergroup backup --listen {where}` first, or correct --backup"
            ) from None
        except TimeoutError:
            raise RemoteError(
                f"{where} did not answer as a backup within {CONNECT_TIMEOUT:g} s: is"
                " --backup the backup's --listen address?"
            ) from None
        except ReplicationProtocolError as exc:
            raise RemoteError(
                f"{where} did not answer as a backup ({exc}): is --backup"
                " the backup's --listen address?"
            ) from None
        except ServergroupError as exc:
            raise RemoteError(str(exc)) from None  # says which backup, and why

    async def _shutdown(self) -> None:
        with contextlib.suppress(AttributeError):
            self.output.discard()
        await self._tasks.cancel()
        with contextlib.suppress(AttributeError):
            await self.front.close()
        await self._close_backup()
        if self._authority is not None:
            await self._authority.close()
        # A pre-copy round still in its thread reads the regions and the tracker's
        # descriptors: let it end before they are closed.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._precopy_idle.wait(), 5.0)
        with contextlib.suppress(AttributeError):
            self.tracker.close()

    def stop(self) -> None:
        """Stop cleanly (a signal)."""
        if not self._stopped.done():
            self._stopped.set_result("")

    def halt(self, reason: str) -> None:
        """Stop at once, releasing nothing more (the backup daemon driving us was fenced)."""
        self._stop(reason)

    def _stop(self, reason: str) -> None:
        if self._stopped.done():
            return
        log.error("stopping: %s", reason)
        with contextlib.suppress(AttributeError):  # not built yet: nothing to hold back
            self.front.pause()
            self.output.discard()
        self._stopped.set_result(reason)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro)

    def _task_failed(self, exc: BaseException) -> None:
        log.error("a primary task failed: %r", exc, exc_info=exc)
        self._stop(f"internal failure: {exc}")

    # -- the machine's clock and actions ---------------------------------------------------

    async def _timer(self) -> None:
        while not self._stopped.done():
            if self._epoch_due():
                if not self._precopy_idle.is_set():
                    await self._precopy_idle.wait()  # a suspend never overlaps a pre-copy round
                if not self._final_round_done and self._precopy_wanted():
                    # Migration's last iterations: rounds while the service runs until
                    # one copies little, so that the pause copies only what is written
                    # during that one.
                    self._final_round_done = True
                    for _ in range(PRECOPY_LAST_ROUNDS):
                        if await self._precopy_round() < PRECOPY_MIN_PAGES:
                            break
            self._do(self.machine.tick(self._loop.time()))
            delay = self.machine.next_timer() - self._loop.time()
            self._wake.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(delay, 1.0))

    def _epoch_due(self, within: float = 0.0) -> bool:
        """Whether the epoch's interval is over (or will be within `within` seconds)."""
        due = self.machine.status().last_suspend_at + self.options.interval
        return due - self._loop.time() <= within

    def _precopy_wanted(self) -> bool:
        return (
            self.capturer.can_precopy
            and self._last_pages >= PRECOPY_MIN_PAGES
            and self.capturer.precopy_ready
            and self.machine.mode is not pm.Mode.STOPPED
        )

    async def _precopy(self) -> None:
        """Pre-copy rounds while the epoch runs (see `checkpoint`): the pause copies less."""
        spacing = max(PRECOPY_MIN_SPACING, self.options.interval / PRECOPY_ROUNDS)
        while not self._stopped.done():
            await asyncio.sleep(spacing)
            soon = 2 * self._precopy_cost + PRECOPY_MIN_SPACING
            if self._precopy_wanted() and not self._epoch_due(within=soon):
                await self._precopy_round()

    async def _precopy_round(self) -> int:
        """One pre-copy round in a worker thread; `_precopy_idle` is clear while it runs."""
        started = time.perf_counter()
        self._precopy_idle.clear()
        done = self._loop.run_in_executor(None, self.capturer.precopy)
        try:
            await asyncio.shield(done)
        finally:
            if not done.done():  # cancelled: the thread goes on; idle only when it ends
                await asyncio.wait({done})
            self._precopy_idle.set()
        self._precopy_cost = time.perf_counter() - started
        copied = done.result()
        self._precopied += copied
        return copied

    def _do(self, actions: list[pm.PrimaryAction]) -> None:
        for action in actions:
            if self._stopped.done():
                return
            match action:
                case pm.SuspendDispatch():
                    self.front.pause()
                    self._pause_started = time.perf_counter()
                    # handle() is synchronous on this loop: nothing is in flight.
                    self._do(self.machine.suspended(self._loop.time()))
                case pm.Capture(epoch=epoch, full=full):
                    if full and self._stream is None and self.options.paired:
                        # No backup connected: nothing could be sent, and the checkpoint
                        # after an attach is full anyway. Copying every region in this
                        # pause (each epoch while unprotected) would protect nothing.
                        self._captured = None
                        self._last_pages = 0
                    else:
                        self._captured = self.capturer.capture(full=full)
                        self._last_pages = self._captured.pages
                    self._final_round_done = False
                    disk = self.built.space.replicated_disk
                    self._writes = disk.capture() if disk is not None else []
                    self.output.seal(epoch)
                case pm.PrepareResume():
                    pass
                case pm.ResumeDispatch():
                    self._last_pause = time.perf_counter() - self._pause_started
                    metrics.CHECKPOINT_PAUSE.observe(self._last_pause)
                    if not self.output.full:
                        self.front.resume()
                case pm.SendCheckpoint(generation=generation, epoch=epoch, full=full):
                    if self._captured is None:  # not captured: lost to the backup, as
                        self.machine.stream_reset(self._loop.time())  # without a stream
                        continue
                    begin = EpochBegin(generation=generation, epoch=epoch, full=full)
                    self._last_size = self._captured.size + sum(len(w.data) for w in self._writes)
                    metrics.CHECKPOINT_SIZE.observe(self._last_size)
                    self._spawn(self._send_checkpoint(begin, self._captured, self._writes))
                case pm.CommitDisk():
                    disk = self.built.space.replicated_disk
                    if disk is not None:
                        disk.commit()
                case pm.ReleaseOutput(epoch=epoch):
                    if not self._release_allowed():
                        return
                    for send in self.output.release(epoch):
                        self.front.send(send.conn, send.data)
                    if not self.output.full:
                        self.front.resume()
                    metrics.CHECKPOINT_EPOCHS.inc()
                    progress = self.machine.status()
                    metrics.CHECKPOINT_LAG.set(progress.captured - progress.committed)
                    log.debug("epoch %d committed and released", epoch)
                case pm.InjectFailure(point=point):
                    log.warning("failure point %s: killing this process", point.value)
                    for handler in logging.getLogger().handlers:
                        handler.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                case pm.SendHeartbeat(generation=generation, epoch=epoch):
                    beats = self._beats
                    if beats is not None:
                        self._spawn(
                            self._send_quietly(beats, Heartbeat(generation=generation, epoch=epoch))
                        )
                case pm.ClaimActive(previous=previous):
                    self._spawn(self._claim(previous))
                case pm.StopService(reason=reason):
                    self._stop(reason)
                case pm.BackupLost(reason=reason):
                    log.warning("backup lost: %s", reason)
                case pm.WentUnprotected(generation=generation):
                    log.warning(
                        "running UNPROTECTED at generation %d: no backup; output is released"
                        " at each epoch",
                        generation,
                    )
                case pm.Protected(generation=generation):
                    log.warning("protected again at generation %d", generation)
                case pm.AckIgnored(epoch=epoch, reason=reason):
                    log.info("ignored the ack of epoch %d: %s", epoch, reason)
        self._wake.set()

    def _release_allowed(self) -> bool:
        """Whether output may leave now; if not, the primary stops (self-fencing)."""
        if self._authority is None or self._authority.may_act():
            return True  # no pair (--no-backup), or a session that may act
        session = self._authority.session
        late = session.clock.monotonic() - session.fence_at
        why = f"{session.state.value}, {late:.3f} s past its fencing deadline"
        self._stop(f"the coordination session may not act ({why}): output held")
        return False

    def _on_reply(self, conn: int, data: bytes) -> None:
        if (
            self._pass_unprotected
            and self.machine.mode is pm.Mode.UNPROTECTED
            and not self.output.pending_bytes
        ):
            # No backup, and the pair's key is ours past any old backup's generation:
            # holding this reply would protect nothing. (Held replies go first.)
            if self._release_allowed():
                self.front.send(conn, data)
            return
        try:
            sends = self.output.write(conn, data)
        except OutputOverflow as exc:
            log.warning("%s: closing the client", exc)
            self.front.close_client(conn)
            return
        for send in sends:
            self.front.send(send.conn, send.data)
        if self.output.full:
            self.front.pause()
            self.machine.request_checkpoint(self._loop.time())
            self._wake.set()

    def _on_generation(self, record: PairRecord) -> None:
        if record.active == self.options.node:
            return  # our own claim or attach
        self._do(self.machine.fenced(record.generation, self._loop.time()))

    async def _claim(self, previous: int) -> None:
        assert self._authority is not None
        async with self._key_lock:
            if self.machine.mode is not pm.Mode.CLAIMING:
                return  # an attach settled it meanwhile
            try:
                record = await self._authority.pair.claim(previous, self.options.node)
            except ServergroupError as exc:
                self._stop(f"claiming the pair's key failed: {exc}")
                return
            if record is not None:
                self._do(self.machine.claim_won(record.generation, self._loop.time()))
        if record is None:
            with contextlib.suppress(ServergroupError):
                current, _ = await self._authority.pair.read()
                log.warning("claim from generation %d lost; the pair is now %s", previous, current)
            self._do(self.machine.claim_lost(self._loop.time()))
        else:
            await self._close_backup()
            self._spawn(self._reattach())

    # -- the backup's connections ----------------------------------------------------------

    async def _attach(self, address: tuple[str, int]) -> None:
        """Have the backup at `address` welcome us at the next generation, then write it.

        The backup joins at a new generation, so any older backup is stale
        from then; the key is changed (compare-and-set from ours) only once
        the backup welcomed us: a backup dying during the attach leaves the
        key as it was. The machine's next checkpoint is full.
        """
        assert self._authority is not None
        host, port = address
        stream = await connect(host, port, timeout=CONNECT_TIMEOUT)
        beats: TcpChannel | None = None
        try:
            generation = self.machine.generation + 1
            await stream.send([self.built.hello(generation)])
            async with asyncio.timeout(CONNECT_TIMEOUT):
                answer = await stream.receive()
            if isinstance(answer, Refuse):
                raise RemoteError(f"the backup at {host}:{port} refused us: {answer.reason}")
            if not isinstance(answer, Welcome) or answer.generation != generation:
                raise RemoteError(f"the backup at {host}:{port} answered {answer!r}")
            beats = await connect(host, port, timeout=CONNECT_TIMEOUT)
            await beats.send([Heartbeat(generation=generation, epoch=self.machine.committed)])
            async with self._key_lock:
                if self.machine.generation + 1 != generation or self.machine.mode not in (
                    pm.Mode.PROTECTED,
                    pm.Mode.UNPROTECTED,
                ):
                    raise RemoteError(f"the primary became {self.machine.mode.value} meanwhile")
                record = await self._authority.pair.attach_backup(
                    generation - 1, self.options.node, f"{host}:{port}"
                )
                if record is None or record.generation != generation:
                    raise RemoteError("the pair's key moved past this primary's generation")
                now = self._loop.time()
                if self._mode() is pm.Mode.CLAIMING:  # changed during the await
                    # The old backup fell silent meanwhile: the key now names us active
                    # at a generation it cannot claim from, which is what its claim wanted.
                    self._do(self.machine.claim_won(generation, now))
                self._stream, self._beats = stream, beats
                self._do(self.machine.backup_attached(generation, now))
        except BaseException:
            await stream.close()
            if beats is not None:
                await beats.close()
            raise
        self._spawn(self._read_stream(stream))
        self._spawn(self._read_beats(beats))
        log.warning("backup %s:%d attached at generation %d", host, port, generation)

    async def _backup_addresses(self) -> list[tuple[str, int]]:
        """Where to look for a backup: `--backup` first, then the pair's advertised backups.

        A running `servergroup backup` of this pair publishes its stream
        address in its status (on its session lease), so a backup started at
        another address than `--backup` re-protects the primary too, and a
        backup that took over without `--next-backup` is re-protected by any
        backup of the pair started later. A failed read only leaves `--backup`.
        """
        addresses = [] if self.options.backup is None else [self.options.backup]
        if self._coordinator is None:
            return addresses
        try:
            found = await self._coordinator.get_prefix(f"{STATUS_PREFIX}{self.options.pair}/")
        except (ServergroupError, TimeoutError) as exc:
            log.debug("cannot read the pair's advertised backups: %s", exc)
            return addresses
        for item in found.items:
            node = decode_node_status(item.value)
            if node is None or node.role != "backup" or node.listen is None:
                continue
            try:
                address = parse_address(node.listen)
            except UsageError:
                continue
            if address not in addresses:
                addresses.append(address)
        return addresses

    def _mode(self) -> pm.Mode:
        return self.machine.mode

    async def _close_backup(self) -> None:
        stream, beats = self._stream, self._beats
        self._stream = self._beats = None
        for channel in (stream, beats):
            if channel is not None:
                await channel.close()

    async def _broken(self, channel: TcpChannel, reason: str) -> None:
        """One of the backup's connections failed: reopen both (a stream break is no failover)."""
        if channel is not self._stream and channel is not self._beats:
            return
        log.info("the connection to the backup broke: %s", reason)
        await self._close_backup()
        self.machine.stream_reset(self._loop.time())
        self._spawn(self._reattach())

    async def _reattach(self) -> None:
        if self._attaching:
            return
        self._attaching = True
        try:
            while not self._stopped.done() and self._stream is None:
                for address in await self._backup_addresses():
                    if self.machine.mode not in (pm.Mode.PROTECTED, pm.Mode.UNPROTECTED):
                        break
                    try:
                        await self._attach(address)
                        return
                    except ServergroupError as exc:
                        log.debug("backup %s:%d not reachable yet: %s", *address, exc)
                    except (TimeoutError, ReplicationProtocolError) as exc:
                        log.debug("backup %s:%d did not answer: %s", *address, exc)
                await asyncio.sleep(RECONNECT_INTERVAL)
        finally:
            self._attaching = False

    async def _send_checkpoint(
        self, begin: EpochBegin, captured: Captured, writes: list[DiskWrite]
    ) -> None:
        def build() -> list[Message]:
            payload: list[Pages | DiskWrite] = [*captured.messages(), *writes]
            return epoch_messages(begin, payload)

        try:
            # The gather and the digest take milliseconds for a big epoch: off the loop.
            messages = await asyncio.to_thread(build)
        except UsageError:
            log.info("epoch %d was superseded by a later capture before it was sent", begin.epoch)
            return
        stream = self._stream
        if stream is None:
            # No stream now: the epoch is lost to the backup; the next one is full.
            self.machine.stream_reset(self._loop.time())
            self._wake.set()
            return
        try:
            await stream.send(messages)
        except ChannelClosed as exc:
            await self._broken(stream, str(exc))
            self._wake.set()

    async def _send_quietly(self, channel: TcpChannel, message: Heartbeat) -> None:
        try:
            await channel.send([message])
        except ChannelClosed as exc:
            await self._broken(channel, str(exc))

    async def _read_stream(self, stream: TcpChannel) -> None:
        while True:
            try:
                message = await stream.receive()
            except (ChannelClosed, ReplicationProtocolError) as exc:
                await self._broken(stream, str(exc))
                return
            now = self._loop.time()
            if isinstance(message, Ack):
                self.machine.heard_from_backup(message.generation, now)
                self._do(self.machine.acked(message.generation, message.epoch, now))
            else:
                log.info("the backup sent %s on the stream: ignored", type(message).__name__)

    async def _read_beats(self, beats: TcpChannel) -> None:
        while True:
            try:
                message = await beats.receive()
            except (ChannelClosed, ReplicationProtocolError) as exc:
                await self._broken(beats, str(exc))
                return
            if isinstance(message, Heartbeat):
                self.machine.heard_from_backup(message.generation, self._loop.time())

    # -- the seed's control commands ---------------------------------------------------------

    async def _read_commands(self) -> None:
        if not _commands_readable():
            return
        reader = asyncio.StreamReader()
        try:
            await self._loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
            )
        except (OSError, ValueError):
            return  # no usable stdin (a terminal closed, /dev/null as a file...)
        while True:
            line = await reader.readline()
            if not line:
                return
            text = line.decode(errors="replace").strip()
            if not text:
                continue
            try:
                point = parse_failure_point(text)
            except UsageError as exc:
                log.warning("%s", exc)
                continue
            log.warning("failure armed at %s", point.value)
            self.machine.arm_failure(point)

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        st = self.machine.status()
        return {
            "role": "primary",
            "node": self.options.node,
            "mode": st.mode.value,
            "generation": st.generation,
            "epoch": st.epoch,
            "committed": st.committed,
            "lag": st.captured - st.committed,
            "last_checkpoint_bytes": self._last_size,
            "last_pause_ms": round(self._last_pause * 1000, 3),
            "precopied_pages": self._precopied,
            "pause_realtime": self.capturer.last_realtime,
            "held_output_bytes": self.output.pending_bytes,
            "clients": self.front.clients,
        }
