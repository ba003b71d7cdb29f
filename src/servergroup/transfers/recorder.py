"""Writing transfer records while `image send|receive` runs, never at the transfer's expense.

Theory of operation. `run_recorded_sender` and `run_recorded_receiver` wrap
the multicast package's `run_sender` / `run_receiver` (its public API,
unchanged): they pass a progress callback of their own, which also feeds the
caller's, and build the record from what the transfer already exposes (its
config, the progress callback, the final report, and the process's transfer
counters in `common.metrics`, which the sender increments). A `RecordWriter`
puts the record to etcd in a background task of the same event loop:

- paced by `record.WritePacer`: at most one write per `WRITE_INTERVAL`, a
  heartbeat every `HEARTBEAT_INTERVAL`, and the final record at the end;
- on a lease of `RETENTION_INTERVAL`, renewed with the heartbeat and once at
  the end, so the record outlives the transfer by that long and then goes;
- every write is bounded by `WRITE_TIMEOUT`; a failure (etcd down,
  unreachable, refusing) is logged once, the transfer goes on, and writing
  resumes at the next beat when etcd answers again (logged once too);
- the final write waits at most `FINAL_TIMEOUT` (`FAILING_FINAL_TIMEOUT` when
  the last write failed), so a dead etcd costs the process's exit well under
  a second or two and the transfer nothing.

The sender's first write also deletes the finished receiver records an
earlier transfer from the same endpoint left, those that ended before it
started; its final write those that are not among its report's clients
(`record.stale_receivers`).

Which etcd: `where.recording_endpoints(config)`: the configured endpoints,
else the managed local etcd only if it is already running (a transfer never
starts one), else none, and then nothing is recorded (and the commands call
the multicast package directly, without loading this module).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, BinaryIO, Final, TypeVar

from servergroup.common.clock import Clock, SystemClock
from servergroup.common.component import cancel_and_wait
from servergroup.common.errors import UsageError
from servergroup.common.logsetup import log_bug
from servergroup.coordination import CoordinationError, Coordinator, LeaseNotFound
from servergroup.transfers import record as rec

if TYPE_CHECKING:
    # The sender's modules (and prometheus_client) are loaded by the functions
    # that need them: `image receive` does without them (less start-up CPU at
    # every receiver; docs/design/multicast.md).
    from servergroup.multicast import (
        ReceiveConfig,
        ReceiverReport,
        SendConfig,
        SenderReport,
        Sink,
    )

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]

#: One write (with its lease grant or renewal) may take this long.
WRITE_TIMEOUT: Final = 2.0
#: The final write may hold the process's exit this long...
FINAL_TIMEOUT: Final = 2.0
#: ... or this long when the write before it failed.
FAILING_FINAL_TIMEOUT: Final = 0.5
#: The sender's first write waits this long: by then it holds its port (or has
#: failed to), so a second sender started by mistake on a busy port never
#: overwrites the running transfer's record.
START_DELAY: Final = 0.3

_REPAIRS = "servergroup_transfer_repairs_total"
_RATE = "servergroup_transfer_rate_bytes_per_second"


class RecordWriter:
    """Puts one record (`render()`'s bytes at `key`) to etcd, paced, in the background."""

    def __init__(
        self,
        coordinator: Coordinator,
        key: str,
        render: Callable[[], bytes],
        *,
        clock: Clock,
        retention: int = rec.RETENTION_INTERVAL,
        after_first: Callable[[Coordinator], Awaitable[None]] | None = None,
        after_last: Callable[[Coordinator], Awaitable[None]] | None = None,
        write_timeout: float = WRITE_TIMEOUT,
        start_delay: float = 0.0,
        pacer: rec.WritePacer | None = None,
    ) -> None:
        self._c = coordinator
        self.key = key
        self._render = render
        self._clock = clock
        self._retention = retention
        self._after_first = after_first
        self._after_last = after_last
        self._write_timeout = write_timeout
        self._start_delay = start_delay
        self._pacer = pacer or rec.WritePacer()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lease: int | None = None
        self._renewed_at = 0.0
        self.failing = False
        #: Writes tried, and written.
        self.attempts = 0
        self.writes = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"record {self.key}")

    def changed(self) -> None:
        """There is news: write it within `WRITE_INTERVAL`."""
        self._pacer.changed()
        self._wake.set()

    async def finish(self, timeout: float = FINAL_TIMEOUT, *, write: bool = True) -> bool:
        """Write the final record (bounded), stop, close the client; whether it was written.

        With `write` false nothing more is written (a transfer that never began).
        """
        if self._task is not None:
            await cancel_and_wait([self._task])
        if self.failing:
            timeout = min(timeout, FAILING_FINAL_TIMEOUT)
        written = write and await self._attempt(timeout, renew=True, last=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._c.close(), 1.0)
        return written

    async def _run(self) -> None:
        if self._start_delay > 0:
            await asyncio.sleep(self._start_delay)
        while True:
            now = self._clock.monotonic()
            if self._pacer.due(now):
                self._wake.clear()
                await self._attempt(self._write_timeout, renew=False)
                self._pacer.wrote(self._clock.monotonic())
                continue
            when = self._pacer.next_timer()
            delay = None if when is None else max(0.0, when - now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _attempt(self, timeout: float, *, renew: bool, last: bool = False) -> bool:
        self.attempts += 1
        try:
            await asyncio.wait_for(self._write(renew=renew, last=last), timeout)
        except (CoordinationError, TimeoutError, OSError) as exc:
            if not self.failing:
                log.warning(
                    "transfer record %s not written (%s); the transfer goes on without it",
                    self.key,
                    str(exc) or "etcd did not answer in time",
                )
            self.failing = True
            return False
        except Exception:
            log_bug(log, f"writing the transfer record {self.key}")
            self.failing = True
            return False
        if self.failing:
            log.warning("transfer record %s written again: etcd answers", self.key)
            self.failing = False
        self.writes += 1
        return True

    async def _write(self, *, renew: bool, last: bool) -> None:
        c = self._c
        now = self._clock.monotonic()
        if self._lease is None:
            self._lease = (await c.grant(self._retention)).id
            self._renewed_at = now
        elif renew or now - self._renewed_at >= rec.HEARTBEAT_INTERVAL:
            try:
                await c.keep_alive(self._lease, timeout=self._write_timeout)
            except LeaseNotFound:
                self._lease = (await c.grant(self._retention)).id
            self._renewed_at = now
        await c.put(self.key, self._render(), lease=self._lease)
        if self._after_first is not None:
            after, self._after_first = self._after_first, None
            try:
                await after(c)
            except BaseException:
                self._after_first = after
                raise
        if last and self._after_last is not None:
            await self._after_last(c)


def _host_name() -> str:
    """This host's name as its host daemon has it (`SERVERGROUP_HOST_NAME`), else the hostname."""
    return os.environ.get("SERVERGROUP_HOST_NAME") or socket.gethostname()


def _sample(name: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name) or 0.0


def _tee(first: Progress, second: Progress | None) -> Progress:
    def both(done: int, total: int | None) -> None:
        first(done, total)
        if second is not None:
            second(done, total)

    return both


async def run_recorded_sender(
    config: SendConfig,
    source: BinaryIO,
    *,
    coordinator: Callable[[], Coordinator],
    progress: Progress | None = None,
    clock: Clock | None = None,
) -> SenderReport:
    """`multicast.run_sender`, its progress and outcome recorded under `transfers/`.

    Recording never changes the transfer's outcome: the report (or the
    exception) is the sender's. (With nothing to record in, the commands call
    `run_sender` themselves: see `where`.)
    """
    from servergroup.multicast import run_sender
    from servergroup.multicast.sender import source_size

    clock = clock or SystemClock()
    ep = rec.endpoint(config.local_ip, config.port)
    repairs_at_start = _sample(_REPAIRS)
    wall = clock.wall()
    state = rec.SenderRecord(
        transfer_id=os.urandom(8).hex(),
        host=_host_name(),
        address=str(config.local_ip),
        port=config.port,
        group=str(config.group),
        mtu=config.mtu,
        expected_clients=config.clients,
        state=rec.TransferState.RUNNING,
        started_at=wall,
        updated_at=wall,
        size=source_size(source),
    )
    current = [state]

    def render() -> bytes:
        now = clock.wall()
        s = current[0]
        if not s.state.final:
            s = replace(
                s,
                updated_at=now,
                rate=_sample(_RATE),
                repairs=int(_sample(_REPAIRS) - repairs_at_start),
            )
        else:
            s = replace(s, updated_at=now)
        current[0] = s
        return rec.encode_sender(s)

    async def clean_up(c: Coordinator, *, at_end: bool = False) -> None:
        rng = await c.get_prefix(rec.receivers_prefix(ep))
        items = [(kv.key, kv.value) for kv in rng.items]
        s = current[0]
        if at_end and s.state.final:
            stale = rec.stale_receivers(items, ep, clients={row.name for row in s.clients})
        else:
            stale = rec.stale_receivers(items, ep, started_at=s.started_at)
        for key in stale:
            await c.delete(key)

    async def clean_up_at_end(c: Coordinator) -> None:
        if current[0].clients:  # the report names this transfer's clients
            await clean_up(c, at_end=True)

    writer = RecordWriter(
        coordinator(),
        rec.sender_key(ep),
        render,
        clock=clock,
        after_first=clean_up,
        after_last=clean_up_at_end,
        start_delay=START_DELAY,
    )
    writer.start()

    def on_progress(done: int, total: int | None) -> None:
        current[0] = replace(current[0], done_bytes=done, size=total or current[0].size)
        writer.changed()

    try:
        report = await run_sender(config, source, progress=_tee(on_progress, progress))
    except BaseException as exc:
        current[0] = _failed(current[0], exc, clock.wall())
        # Bad input (a busy port, an address not ours) is refused before anything
        # began: if nothing was written yet, there is no transfer to record.
        began = writer.writes > 0 or not isinstance(exc, UsageError)
        await asyncio.shield(writer.finish(write=began))
        raise
    current[0] = sender_final(
        current[0], report, ended_at=clock.wall(), repairs_at_start=repairs_at_start
    )
    await writer.finish()
    return report


def sender_final(
    s: rec.SenderRecord, report: SenderReport, *, ended_at: float, repairs_at_start: float = 0.0
) -> rec.SenderRecord:
    """The sender's record once `report` is in."""
    from servergroup.multicast import ClientStatus

    finished = sum(1 for row in report.clients if row.status is ClientStatus.FINISHED)
    state = (
        rec.TransferState.FINISHED
        if report.ok
        else rec.TransferState.PARTIAL
        if finished
        else rec.TransferState.FAILED
    )
    return replace(
        s,
        state=state,
        ended_at=ended_at,
        size=report.total_bytes,
        done_bytes=report.total_bytes if finished else s.done_bytes,
        rate=report.final_rate / 8,  # the report's rate is in bit/s
        repairs=int(_sample(_REPAIRS) - repairs_at_start),
        result=report.reason,
        clients=tuple(
            rec.ClientRow(
                name=row.name,
                address=row.address,
                status=row.status.value,
                reason=row.reason,
                tcp_only=row.tcp_only,
                loss=round(row.loss, 4),
                repaired=row.counters.repaired,
            )
            for row in report.clients
        ),
    )


async def run_recorded_receiver(
    config: ReceiveConfig,
    sink: Sink,
    *,
    coordinator: Callable[[], Coordinator],
    progress: Progress | None = None,
    clock: Clock | None = None,
) -> ReceiverReport:
    """`multicast.run_receiver`, this receiver's progress and outcome recorded."""
    from servergroup.multicast import run_receiver

    clock = clock or SystemClock()
    ep = rec.endpoint(config.server_ip, config.port)
    started = clock.monotonic()
    wall = clock.wall()
    name = config.name.replace("/", "_")
    current = [
        rec.ReceiverRecord(
            name=name,
            host=_host_name(),
            address=str(config.local_ip),
            state=rec.TransferState.RUNNING,
            started_at=wall,
            updated_at=wall,
        )
    ]

    def render() -> bytes:
        r = current[0]
        current[0] = r = replace(r, updated_at=clock.wall())
        return rec.encode_receiver(r)

    writer = RecordWriter(coordinator(), rec.receiver_key(ep, name), render, clock=clock)
    writer.start()

    def on_progress(done: int, total: int | None) -> None:
        elapsed = max(clock.monotonic() - started, 1e-6)
        current[0] = replace(current[0], received_bytes=done, throughput=done / elapsed)
        writer.changed()

    try:
        report = await run_receiver(config, sink, progress=_tee(on_progress, progress))
    except BaseException as exc:
        current[0] = _failed(current[0], exc, clock.wall())
        await asyncio.shield(writer.finish())
        raise
    elapsed = max(clock.monotonic() - started, 1e-6)
    current[0] = replace(
        current[0],
        state=rec.TransferState.FINISHED if report.ok else rec.TransferState.FAILED,
        ended_at=clock.wall(),
        received_bytes=report.total_bytes if report.ok else current[0].received_bytes,
        size=report.total_bytes if report.ok else None,
        throughput=(report.total_bytes if report.ok else current[0].received_bytes) / elapsed,
        repaired=report.counters.repaired,
        tcp_only=report.tcp_only,
        result=report.reason,
    )
    await writer.finish()
    return report


_Record = TypeVar("_Record", rec.SenderRecord, rec.ReceiverRecord)


def _failed(record: _Record, exc: BaseException, now: float) -> _Record:
    """`record` ended by `exc` at `now`."""
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
        result = "interrupted"
    else:
        result = str(exc) or type(exc).__name__
    return replace(record, state=rec.TransferState.FAILED, ended_at=now, result=result)


async def read_transfers(coordinator: Coordinator) -> list[rec.Transfer]:
    """Every transfer recorded in the namespace, newest first (what the API serves)."""
    rng = await coordinator.get_prefix(rec.TRANSFERS)
    return rec.join((kv.key, kv.value) for kv in rng.items)


__all__ = [
    "FAILING_FINAL_TIMEOUT",
    "FINAL_TIMEOUT",
    "START_DELAY",
    "WRITE_TIMEOUT",
    "RecordWriter",
    "read_transfers",
    "run_recorded_receiver",
    "run_recorded_sender",
    "sender_final",
]
