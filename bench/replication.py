"""Benchmark: checkpoint replication (issue 15): the Remus paper's table redone on the kv service.

Three parts (`--parts`, all by default):

- **service**: the kv service under a load of concurrent clients (C
  connections, each keeping W requests in flight, half puts and half gets
  over a few thousand keys), for `--seconds` per setup: unprotected (the
  same client front with no epochs at all, served by this script in a child
  process), protected at intervals 25, 50, 100 and 200 ms (`servergroup
  protect` and `servergroup backup` as processes, a one-member etcd), and
  protected with `--no-net-buffer`. Throughput (replies per second) and
  reply latency p50/p99, from the clients' side.
- **pause**: the checkpoint pause for one region of `--mib` MiB (256) at 1 %
  and 10 % dirty pages, kernel tracking and hashing. "spread": the pages are
  written in slices over one interval (100 ms) while pre-copy rounds run
  beside the writer as in the primary daemon (kernel only); "burst": all
  pages are written just before the capture, so nothing could be pre-copied
  (the worst case, and the only case for hashing). Pause = `Capturer.capture`
  (the collect plus the copy of what is left), what `servergroup protect`
  reports as last_pause_ms.
- **failover**: rounds of the demo's replication part (kv, four clients
  putting unique keys, SIGKILL of the primary): failover time from the kill
  to the backup answering on its serving address, and acknowledged puts
  lost (must be 0).

Goals (issue 15): pause p99 <= 5 ms at 10 % of 256 MiB with kernel
tracking; throughput at 25 ms at least half of unprotected; failover
median <= 1.5 s; no acknowledged write lost.

    .venv/bin/python bench/replication.py [--quick] [--parts service,pause,failover]

`--quick` (a minute or two) is for checking that the benchmark runs; only a
full run of every part writes bench/results/replication.{md,json}, with the
load average noted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import fcntl
import json
import mmap
import os
import random
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from asyncio.subprocess import Process
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from _harness import RESULTS, quantile, run_meta, say, summary

from servergroup.config import load_config
from servergroup.coordination.etcd_process import free_ports, start_cluster
from servergroup.demo import run_replication_demo
from servergroup.replication import uffd
from servergroup.replication.checkpoint import Captured, Capturer
from servergroup.replication.primary import (
    PRECOPY_LAST_ROUNDS,
    PRECOPY_MIN_PAGES,
    PRECOPY_ROUNDS,
)
from servergroup.replication.regions import PAGE_SIZE, Region, RegionSet
from servergroup.replication.tracking import DirtyTracker, HashTracker
from servergroup.replication.uffd import KernelTracker

HOST = "127.0.0.1"
GOAL_PAUSE_P99_MS = 5.0
GOAL_THROUGHPUT_SHARE = 0.5
GOAL_FAILOVER_MEDIAN_S = 1.5
INTERVALS_MS = (25, 50, 100, 200)
PARTS = ("service", "pause", "arming", "failover")
#: The epoch the "spread" pause series writes its pages over (seconds).
SPREAD_INTERVAL = 0.1
#: How often (per interval) the "spread" writer wakes.
SPREAD_SLICES = 10
#: Stores timed right after each capture (the next epoch's first stores).
STORES_PER_EPOCH = 2000
KEYS = 4096


# -- the pause --------------------------------------------------------------------------------


def _dirty(view: np.ndarray[Any, Any], pages: list[int]) -> None:
    index = np.asarray(pages, dtype=np.int64) * PAGE_SIZE
    view[index] += 1


def _writer(
    view: np.ndarray[Any, Any], pages: int, count: int, rng: random.Random
) -> tuple[threading.Thread, threading.Event, set[int]]:
    """A thread storing into distinct random pages at `count` per interval, until set.

    It wakes every interval / SPREAD_SLICES and catches up on the time it
    was kept from running, so a loaded machine slows the pages down but
    does not thin them out.
    """
    stop = threading.Event()
    written: set[int] = set()
    order = rng.sample(range(pages), min(pages, 2 * count))
    began = time.monotonic()

    def run() -> None:
        done = 0
        while True:
            due = int(count * (time.monotonic() - began) / SPREAD_INTERVAL)
            target = min(len(order), max(done, due))
            _dirty(view, order[done:target])
            written.update(order[done:target])
            done = target
            if stop.wait(SPREAD_INTERVAL / SPREAD_SLICES):
                return

    thread = threading.Thread(target=run)
    thread.start()
    return thread, stop, written


def spread_epoch(
    capturer: Capturer, view: np.ndarray[Any, Any], pages: int, count: int, rng: random.Random
) -> tuple[float, Captured, int]:
    """One epoch as the daemon runs it: (pause seconds, the capture, pages written).

    A writer stores `count` pages over the interval and goes on until the
    suspend; pre-copy rounds run every interval / PRECOPY_ROUNDS, the last
    ones when the interval is over and `count` pages were written, with the
    writer still going (the daemon's last rounds: until one copies under
    PRECOPY_MIN_PAGES); then the writer stops (the suspend) and the
    capture is timed.
    """
    began = time.monotonic()
    writer, stop, written = _writer(view, pages, count, rng)
    for k in range(1, PRECOPY_ROUNDS + 1):
        time.sleep(max(0.0, began + k * SPREAD_INTERVAL / PRECOPY_ROUNDS - time.monotonic()))
        while k == PRECOPY_ROUNDS and len(written) < count and writer.is_alive():
            time.sleep(SPREAD_INTERVAL / SPREAD_SLICES)  # a starved writer: the epoch waits
        copied = capturer.precopy()
    for _ in range(PRECOPY_LAST_ROUNDS - 1):  # as the daemon: until a round copies little
        if copied < PRECOPY_MIN_PAGES:
            break
        copied = capturer.precopy()
    stop.set()
    writer.join()
    started = time.perf_counter()
    captured = capturer.capture(full=False)
    return time.perf_counter() - started, captured, len(written)


def store_latencies(view: np.ndarray[Any, Any], pages: list[int]) -> list[float]:
    """Seconds each single-byte store into `pages` took (the first store to each, this epoch)."""
    out: list[float] = []
    clock = time.perf_counter_ns
    for page in pages:
        at = page * PAGE_SIZE
        started = clock()
        view[at] += 1
        out.append((clock() - started) / 1e9)
    return out


def pause_series(
    tracker: DirtyTracker,
    regions: RegionSet,
    share: float,
    rounds: int,
    rng: random.Random,
    *,
    spread: bool,
    realtime: bool = True,
) -> tuple[list[float], float, list[float]]:
    """`rounds` epochs writing `share` of the pages: capture times (s), the share written,
    and the latency of stores made right after each capture while its pages are gathered
    (the service's first stores of the next epoch).
    """
    region = next(iter(regions))
    capturer = Capturer(regions, tracker, realtime=realtime)
    capturer.capture(full=True).messages()
    count = max(1, int(region.pages * share))
    view = region.array(np.uint8)
    samples: list[float] = []
    stores: list[float] = []
    written_pages = 0
    try:
        for _ in range(rounds):
            if spread:
                pause, captured, written = spread_epoch(capturer, view, region.pages, count, rng)
            else:
                _dirty(view, rng.sample(range(region.pages), count))
                started = time.perf_counter()
                captured = capturer.capture(full=False)
                pause = time.perf_counter() - started
                written = count
            if captured.pages != written:
                raise SystemExit(f"captured {captured.pages} pages, {written} were written")
            samples.append(pause)
            written_pages += written
            # After resume: the gather (a worker thread in the daemon) beside the service's
            # first stores of the next epoch, each a write-protect fault the kernel resolves.
            gather = threading.Thread(target=captured.messages)
            gather.start()
            stores += store_latencies(view, rng.sample(range(region.pages), STORES_PER_EPOCH))
            gather.join()
            tracker.reset()  # those stores are not the next epoch's series
    finally:
        del view
    return samples, written_pages / rounds / region.pages, stores


def pause_part(mib: int, rounds: int) -> list[dict[str, Any]]:
    rng = random.Random(15)
    rows: list[dict[str, Any]] = []
    regions = RegionSet()
    try:
        regions.allocate("state", mib * 1024 * 1024)
        # (tracker, make, spread, realtime): the daemon's pause is real-time where allowed;
        # the ordinary-priority rows show what that buys on a busy machine.
        series: list[tuple[str, Callable[[], DirtyTracker], bool, bool]] = [
            ("kernel", KernelTracker, True, True),
            ("kernel", KernelTracker, False, True),
            ("kernel", KernelTracker, True, False),
            ("kernel", KernelTracker, False, False),
            ("hash", HashTracker, False, False),
        ]
        for name, make, spread, realtime in series:
            for share in (0.01, 0.10):
                tracker = make()
                try:
                    tracker.track(next(iter(regions)))
                    samples, written, stores = pause_series(
                        tracker, regions, share, rounds, rng, spread=spread, realtime=realtime
                    )
                finally:
                    tracker.close()
                mode = "spread" if spread else "burst"
                priority = "real-time" if realtime else "ordinary"
                pause = summary(samples, 1000, 2)
                store = summary(stores, 1e6, 1)
                say(
                    f"pause {name:6s} {mode:6s} {priority:9s} {share:4.0%} ({written:.1%}) dirty:"
                    f" {pause}; stores after resume (us): {store}"
                )
                rows.append(
                    {
                        "tracker": name,
                        "writes": mode,
                        "priority": priority,
                        "dirty": share,
                        "dirty_written": round(written, 4),
                        "pause_ms": pause,
                        "store_after_resume_us": store,
                    }
                )
    finally:
        regions.close()
    return rows


# -- copy-on-write: what arming the epoch's pages would cost ----------------------------------
#
# Copy-on-write would leave the copy out of the pause: the pause arms the epoch's pages so
# that a later store reaches a handler (another process: the thread that faults holds the
# GIL), which copies the page first. These are the ways to arm them here, each timed for
# the pages of a burst (`share` of the region, random), beside the copy they would save.

UFFD_FEATURE_MINOR_SHMEM = 1 << 10
UFFDIO_REGISTER_MODE_MINOR = 4
UFFDIO_CONTINUE = 0xC020AA07
UFFDIO_WAKE = 0x8010AA02
UFFDIO_CONTINUE_MODE_WP = 2
UFFD_EVENT_PAGEFAULT = 0x12
UFFD_PAGEFAULT_FLAG_WRITE = 1
SYSCALL_PROCESS_MADVISE = 440  # x86_64 and aarch64 (the generic table)
MADV_DONTNEED = 4


def _new_uffd(features: int) -> int:
    fd = uffd._open_userfaultfd()
    fcntl.ioctl(fd, uffd.UFFDIO_API, bytearray(uffd._API.pack(uffd.UFFD_API, features, 0)))
    return fd


def _register(fd: int, address: int, size: int, mode: int) -> None:
    fcntl.ioctl(fd, uffd.UFFDIO_REGISTER, bytearray(uffd._REGISTER.pack(address, size, mode, 0)))


def _write_protect(fd: int, address: int, size: int, on: bool) -> None:
    arg = uffd._WRITEPROTECT.pack(address, size, uffd.UFFDIO_WRITEPROTECT_MODE_WP if on else 0)
    fcntl.ioctl(fd, uffd.UFFDIO_WRITEPROTECT, bytearray(arg))


def _fault_handler(fd: int) -> tuple[int, int]:
    """A child process resolving minor faults on `fd` (UFFDIO_CONTINUE); (its pid, a pipe
    whose closing ends it). It never copies: the round trip is what is measured."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(read_end)
        return pid, write_end
    os.close(write_end)
    try:
        while True:
            ready, _, _ = select.select([fd, read_end], [], [])
            if read_end in ready:
                os._exit(0)
            try:
                data = os.read(fd, 32 * 64)
            except BlockingIOError:
                continue
            for at in range(0, len(data), 32):
                event = data[at]
                flags, address = struct.unpack_from("=QQ", data, at + 8)
                if event != UFFD_EVENT_PAGEFAULT:
                    continue
                page = address & ~(PAGE_SIZE - 1)
                mode = 0 if flags & UFFD_PAGEFAULT_FLAG_WRITE else UFFDIO_CONTINUE_MODE_WP
                try:
                    arg = struct.pack("=QQQq", page, PAGE_SIZE, mode, 0)
                    fcntl.ioctl(fd, UFFDIO_CONTINUE, bytearray(arg))
                except OSError:
                    fcntl.ioctl(fd, UFFDIO_WAKE, bytearray(struct.pack("=QQ", page, PAGE_SIZE)))
    finally:
        os._exit(1)


def _runs(pages: list[int]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    index = np.sort(np.asarray(pages, dtype=np.int64))
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    starts = index[np.r_[0, breaks]]
    counts = np.diff(np.r_[0, breaks, len(index)])
    return starts, counts


def _zap(pidfd: int, address: int, starts: Any, counts: Any) -> None:
    """MADV_DONTNEED over the runs with process_madvise, up to IOV_MAX runs a call."""
    call = ctypes.CDLL(None, use_errno=True).syscall
    iov = np.empty((len(starts), 2), dtype=np.uint64)
    iov[:, 0] = starts.astype(np.uint64) * PAGE_SIZE + np.uint64(address)
    iov[:, 1] = counts.astype(np.uint64) * PAGE_SIZE
    for at in range(0, len(starts), 1024):
        n = min(1024, len(starts) - at)
        pointer = ctypes.c_void_p(iov.ctypes.data + 16 * at)
        if call(SYSCALL_PROCESS_MADVISE, pidfd, pointer, n, MADV_DONTNEED, 0) < 0:
            raise OSError(ctypes.get_errno(), "process_madvise(MADV_DONTNEED)")


def arming_part(mib: int, rounds: int, share: float = 0.10) -> dict[str, Any]:
    """Per epoch of a burst at `share` dirty: the copy saved, and the ways to arm instead."""
    rng = random.Random(16)
    times: dict[str, list[float]] = {}

    def timed(name: str, started: float) -> None:
        times.setdefault(name, []).append(time.perf_counter() - started)

    region = Region("arming", mib * 1024 * 1024)
    pages = region.array(np.uint8).reshape(region.pages, PAGE_SIZE)
    count = int(region.pages * share)
    block = np.ones(count * PAGE_SIZE, dtype=np.uint8)
    copy = np.zeros_like(block)
    notes: dict[str, Any] = {}
    scanner = KernelTracker()  # its scan only: the region is registered on our own userfaultfd
    fd = _new_uffd(uffd.FEATURES | UFFD_FEATURE_MINOR_SHMEM)
    handler, stop = _fault_handler(fd)
    pidfd = os.pidfd_open(os.getpid())
    try:
        pages[:, 0] = 1
        mode = uffd.UFFDIO_REGISTER_MODE_WP | UFFDIO_REGISTER_MODE_MINOR
        _register(fd, region.address, region.size, mode)
        _write_protect(fd, region.address, region.size, True)
        flat = region.array(np.uint8)
        for _ in range(rounds):
            dirty = rng.sample(range(region.pages), count)
            started = time.perf_counter()
            np.copyto(copy, block)
            timed("memcpy of the dirty bytes (the floor of any copy in the pause)", started)
            _dirty(flat, dirty)
            started = time.perf_counter()
            starts, counts = scanner._scan_arrays(region)
            timed("scan: PAGEMAP_SCAN, list and re-protect (async)", started)
            started = time.perf_counter()
            _zap(pidfd, region.address, starts, counts)
            timed("zap the dirty runs (process_madvise DONTNEED)", started)
            # The service's next stores: each a minor fault to the handler process.
            order = rng.sample(dirty, min(len(dirty), STORES_PER_EPOCH))
            faults = store_latencies(flat, order)
            times.setdefault("store faulting to a handler process", []).extend(faults)
            for page in set(dirty) - set(order):  # the rest back, as a copier would
                arg = struct.pack("=QQQq", region.address + page * PAGE_SIZE, PAGE_SIZE, 2, 0)
                fcntl.ioctl(fd, UFFDIO_CONTINUE, bytearray(arg))
            scanner._scan_arrays(region)
        notes["runs per epoch"] = len(starts)
        del flat
    finally:
        os.close(stop)
        os.waitpid(handler, 0)
        os.close(pidfd)
        os.close(fd)
        scanner.close()
        del pages
        region.close()

    # Synchronous write-protect (faults reach a handler): PAGEMAP_SCAN will not re-protect
    # on it, so the pause would have to protect the whole region again.
    region = Region("arming-sync", mib * 1024 * 1024)
    region.array(np.uint8).reshape(region.pages, PAGE_SIZE)[:, 0] = 1
    fd = _new_uffd(uffd.UFFD_FEATURE_WP_HUGETLBFS_SHMEM | uffd.UFFD_FEATURE_WP_UNPOPULATED)
    scanner = KernelTracker()
    try:
        _register(fd, region.address, region.size, uffd.UFFDIO_REGISTER_MODE_WP)
        try:
            scanner._scan_arrays(region)
            notes["PAGEMAP_SCAN re-protect on a synchronous userfaultfd"] = "accepted"
        except OSError as exc:
            notes["PAGEMAP_SCAN re-protect on a synchronous userfaultfd"] = (
                f"refused ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
            )
        for _ in range(rounds):
            started = time.perf_counter()
            _write_protect(fd, region.address, region.size, True)
            timed("write-protect the whole region (synchronous userfaultfd)", started)
            _write_protect(fd, region.address, region.size, False)
    finally:
        os.close(fd)
        scanner.close()
        region.close()

    # fork(): the child holds a copy-on-write snapshot (private memory; ours is shared).
    private = mmap.mmap(-1, mib * 1024 * 1024, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    anonymous = np.frombuffer(private, dtype=np.uint8).reshape(-1, PAGE_SIZE)
    anonymous[:, 0] = 1
    for _ in range(rounds):
        started = time.perf_counter()
        child = os.fork()
        if child == 0:
            os._exit(0)
        timed("fork with the region private (a copy-on-write snapshot)", started)
        os.waitpid(child, 0)
    del anonymous
    private.close()
    return {
        "share": share,
        "mib": mib,
        "notes": notes,
        "ms": {name: summary(samples, 1000, 3) for name, samples in times.items()},
    }


# -- the service under load -------------------------------------------------------------------


def _requests(rng: random.Random, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        key = f"key-{rng.randrange(KEYS)}"
        if rng.random() < 0.5:
            value = f"{rng.getrandbits(64):016x}" * 4
            out.append(json.dumps({"op": "put", "key": key, "value": value}).encode() + b"\n")
        else:
            out.append(json.dumps({"op": "get", "key": key}).encode() + b"\n")
    return out


async def _client(
    port: int, window: int, requests: list[bytes], start_at: float, until: float, out: list[float]
) -> int:
    """Keep `window` requests in flight until `until`; latencies (s) of replies after `start_at`."""
    reader, writer = await asyncio.open_connection(HOST, port)
    sent: deque[float] = deque()
    replies = 0
    i = 0

    def send() -> None:
        nonlocal i
        writer.write(requests[i % len(requests)])
        sent.append(time.monotonic())
        i += 1

    try:
        for _ in range(window):
            send()
        while True:
            line = await reader.readline()
            if not line:
                raise RuntimeError("the server closed a client connection")
            now = time.monotonic()
            began = sent.popleft()
            if now >= start_at:
                out.append(now - began)
                replies += 1
            if now >= until:
                return replies
            send()
    finally:
        writer.close()


async def load(
    port: int, clients: int, window: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """Throughput and latency of the kv service on `port` under `clients` x `window` requests."""
    rng = random.Random(25)
    requests = _requests(rng, 2000)
    start_at = time.monotonic() + warmup
    until = start_at + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]
    counts = await asyncio.gather(
        *(_client(port, window, requests, start_at, until, latencies[n]) for n in range(clients))
    )
    every = [x for part in latencies for x in part]
    return {
        "throughput_per_s": round(sum(counts) / seconds, 1),
        "latency_ms": {
            "p50": round(quantile(every, 0.5) * 1000, 2),
            "p99": round(quantile(every, 0.99) * 1000, 2),
        },
        "replies": sum(counts),
    }


def _tail(log: Path) -> str:
    """Why a server stopped (its last "stopping:" line), else the end of its log."""
    text = log.read_text(errors="replace")
    stops = [line for line in text.splitlines() if "stopping:" in line]
    if stops:
        return stops[-1].split("stopping:", 1)[1].strip().strip('"}').strip()
    return text[-400:]


async def _wait_serving(
    port: int, proc: asyncio.subprocess.Process, log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    request = json.dumps({"op": "get", "key": "-"}).encode() + b"\n"
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"a server exited early: {await asyncio.to_thread(_tail, log)}")
        with contextlib.suppress(OSError, TimeoutError):
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                writer.write(request)
                async with asyncio.timeout(2.0):
                    if await reader.readline():
                        return
            finally:
                writer.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answered on {port}: {await asyncio.to_thread(_tail, log)}")
        await asyncio.sleep(0.1)


async def _wait_log(log: Path, text: str, proc: asyncio.subprocess.Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in await asyncio.to_thread(log.read_text, errors="replace"):
        if proc.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{log.name} did not say {text!r}: {_tail(log)}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _processes(log: Path) -> AsyncIterator[Callable[..., Awaitable[Process]]]:
    """Start processes with their output in `log`; all terminated (then killed) at the end."""
    procs: list[Process] = []

    async def start(*argv: str) -> Process:
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def service_setup(
    setup: dict[str, Any], sg: list[str], tmp: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One row of the table: start the servers of `setup`, load them, stop them."""
    client, stream, serve = free_ports(3)
    log = tmp / f"{setup['name'].replace(' ', '-')}.log"
    async with _processes(log) as start:
        if setup["interval_ms"] is None:
            server = await start(
                sys.executable, __file__, "--serve-unprotected", f"{HOST}:{client}"
            )
        else:
            pair = f"bench-kv-{os.getpid()}-{client}"
            backup = await start(
                *sg, "backup", "--service", "kv", "--listen", f"{HOST}:{stream}",
                "--serve", f"{HOST}:{serve}", "--pair", pair,
            )  # fmt: skip
            await _wait_log(log, "listening for a primary", backup, 30)
            extra = [] if setup["net_buffer"] else ["--no-net-buffer"]
            server = await start(
                *sg, "protect", "--service", "kv", "--listen", f"{HOST}:{client}",
                "--backup", f"{HOST}:{stream}", "--interval", str(setup["interval_ms"]),
                "--pair", pair, *extra,
            )  # fmt: skip
        await _wait_serving(client, server, log, 60)
        try:
            result = await load(client, args.clients, args.window, args.seconds, args.warmup)
        except (RuntimeError, OSError) as exc:
            tail = await asyncio.to_thread(_tail, log)
            raise RuntimeError(f"{setup['name']}: {exc}; {tail}") from None
    say(
        f"service {setup['name']:32s} {result['throughput_per_s']:9.1f}/s"
        f"  p50 {result['latency_ms']['p50']} ms  p99 {result['latency_ms']['p99']} ms"
    )
    return {**setup, **result}


def service_setups(quick: bool) -> list[dict[str, Any]]:
    setups: list[dict[str, Any]] = [
        {"name": "unprotected", "interval_ms": None, "net_buffer": True}
    ]
    for ms in INTERVALS_MS:
        setups.append({"name": f"protected {ms} ms", "interval_ms": ms, "net_buffer": True})
    for ms in (25,) if quick else INTERVALS_MS:
        setups.append(
            {"name": f"protected {ms} ms --no-net-buffer", "interval_ms": ms, "net_buffer": False}
        )
    return setups


async def service_part(
    args: argparse.Namespace, endpoints: str, prefix: str
) -> list[dict[str, Any]]:
    sg = [sys.executable, "-m", "servergroup", "--endpoints", endpoints, "--prefix", prefix]
    rows = []
    with tempfile.TemporaryDirectory(prefix="sg-bench-repl-") as tmp:
        for setup in service_setups(args.quick):
            try:
                rows.append(await service_setup(setup, sg, Path(tmp), args))
            except RuntimeError as exc:  # a row that failed is reported, the rest still run
                say(f"service {setup['name']} FAILED: {exc}")
                rows.append({**setup, "error": str(exc)[:300]})
    return rows


# -- failover ---------------------------------------------------------------------------------


async def failover_part(config: Any, rounds: int) -> dict[str, Any]:
    times: list[float] = []
    acknowledged = lost = 0
    for n in range(rounds):
        result = await run_replication_demo(config, config.coordination.endpoints, lambda _: None)
        times.append(result.failover_seconds)
        acknowledged += result.acknowledged
        lost += result.lost
        say(
            f"failover round {n + 1}: {result.failover_seconds:.2f} s,"
            f" {result.acknowledged} acknowledged puts, {result.lost} lost"
        )
    return {
        "rounds": rounds,
        "failover_s": summary(times, 1, 3),
        "acknowledged_puts": acknowledged,
        "acknowledged_lost": lost,
    }


# -- the unprotected server (a child process of this script) ----------------------------------


def serve_unprotected(address: str) -> None:
    """The kv service on the replication client front, with no epochs: the baseline."""
    from servergroup.replication.front import ClientFront, parse_address
    from servergroup.replication.primary import Built

    host, port = parse_address(address)

    async def main() -> None:
        with Built.temporary("kv", prefix="sg-bench-kv-") as built:
            sends: list[ClientFront] = []
            front = ClientFront(built.service.handle, lambda conn, data: sends[0].send(conn, data))
            sends.append(front)
            await front.start(host, port)
            print("serving", flush=True)
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            await stop.wait()
            await front.close()

    asyncio.run(main())


# -- the report -------------------------------------------------------------------------------


def report(result: dict[str, Any]) -> list[str]:
    meta = result
    lines = [
        "# replication benchmark",
        "",
        f"`{meta['command']}` on {meta['date']}, {meta['machine']}.",
        f"{meta['setup']}; 1-minute load average {meta['load_average_1m']['start']} at the"
        f" start, {meta['load_average_1m']['end']} at the end (machine shared with other work:"
        " treat the figures as noisy).",
        "",
        "Goals (issue 15): " + "; ".join(result["goals"]) + ".",
    ]
    if "service" in result:
        rows = result["service"]
        base = next(r for r in rows if r["interval_ms"] is None).get("throughput_per_s", 0.0)
        lines += [
            "",
            "## The kv service under load (the Remus paper's table)",
            "",
            "| setup | throughput | share of unprotected | latency p50 | latency p99 |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['name']} | failed: {r['error'][:120]} | | | |")
                continue
            share = r["throughput_per_s"] / base if base else 0.0
            lines.append(
                f"| {r['name']} | {r['throughput_per_s']:.0f}/s | {share:.2f}"
                f" | {r['latency_ms']['p50']} ms | {r['latency_ms']['p99']} ms |"
            )
    if "pause" in result:
        lines += [
            "",
            "## The pause per epoch",
            "",
            "Pause = `Capturer.capture` (the collect and the copy of what is left). Stores:"
            f" {STORES_PER_EPOCH} single-byte stores to random pages right after each capture,"
            " while its pages are gathered (the next epoch's first stores: each a write-protect"
            " fault the kernel resolves, or a page hashing will read).",
            "",
            "| tracker | writes | priority | dirty | rounds | pause p50 | pause p99 | pause max"
            " | store p50 | store p99 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in result["pause"]:
            ms = row["pause_ms"]
            us = row.get("store_after_resume_us", {})
            lines.append(
                f"| {row['tracker']} | {row['writes']} | {row.get('priority', 'ordinary')}"
                f" | {row['dirty']:.0%} ({row.get('dirty_written', row['dirty']):.1%} written)"
                f" | {ms['n']} | {ms['p50']} ms | {ms['p99']} ms | {ms['max']} ms"
                f" | {us.get('p50', '-')} us | {us.get('p99', '-')} us |"
            )
    if "arming" in result:
        a = result["arming"]
        lines += [
            "",
            "## Copy-on-write instead: arming the epoch's pages in the pause",
            "",
            f"A burst of {a['share']:.0%} random pages of {a['mib']} MiB per epoch. Copy-on-write"
            " would take the copy out of the pause but must arm the pages there so that a later"
            " store reaches a handler process; the pause would be the scan plus the arming.",
            "",
            "| step | p50 | p99 | max |",
            "|---|---|---|---|",
        ]
        for name, ms in a["ms"].items():
            lines.append(f"| {name} | {ms['p50']} ms | {ms['p99']} ms | {ms['max']} ms |")
        lines += ["", *(f"- {k}: {v}" for k, v in a["notes"].items())]
    if "failover" in result:
        f = result["failover"]
        s = f["failover_s"]
        lines += [
            "",
            "## Failover",
            "",
            f"{f['rounds']} rounds of the demo's part (SIGKILL of the primary -> the backup"
            f" answering): median {s['p50']} s, max {s['max']} s;"
            f" {f['acknowledged_puts']} acknowledged puts, {f['acknowledged_lost']} lost.",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Short runs: check that it works.")
    parser.add_argument("--parts", default=",".join(PARTS), help="Of: %(default)s.")
    parser.add_argument("--mib", type=int, default=256, help="Pause: the region's size.")
    parser.add_argument("--rounds", type=int, help="Pause: epochs per series [30; quick 8].")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--window", type=int, default=128, help="Requests in flight per client.")
    parser.add_argument("--seconds", type=float, help="Load per setup [10; quick 3].")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--failovers", type=int, help="Failover rounds [10; quick 2].")
    parser.add_argument("--serve-unprotected", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_unprotected:
        serve_unprotected(args.serve_unprotected)
        return
    args.rounds = args.rounds or (8 if args.quick else 30)
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    args.failovers = args.failovers or (2 if args.quick else 10)
    parts = set(args.parts.split(","))
    load_at_start = os.getloadavg()[0]
    result: dict[str, Any] = {
        "goals": [
            f"pause p99 <= {GOAL_PAUSE_P99_MS} ms at 10 % dirty of 256 MiB, kernel tracking",
            f"throughput at 25 ms >= {GOAL_THROUGHPUT_SHARE:.0%} of unprotected",
            f"failover median <= {GOAL_FAILOVER_MEDIAN_S} s",
            "0 acknowledged writes lost",
        ]
    }
    if "pause" in parts:
        result["pause"] = pause_part(args.mib, args.rounds)
    if "arming" in parts:
        result["arming"] = arming_part(args.mib, args.rounds)
    if parts & {"service", "failover"}:
        with tempfile.TemporaryDirectory(prefix="sg-bench-etcd-") as tmp:
            cluster = start_cluster(Path(tmp) / "etcd", 1)
            try:
                endpoints = ",".join(str(e) for e in cluster.endpoints)
                prefix = f"/bench-replication-{os.getpid()}/"
                config = load_config(
                    env={
                        "SERVERGROUP_ETCD_ENDPOINTS": endpoints,
                        "SERVERGROUP_PREFIX": prefix,
                        "SERVERGROUP_STATE_DIR": str(Path(tmp) / "state"),
                    }
                )
                if "service" in parts:
                    result["service"] = asyncio.run(service_part(args, endpoints, prefix))
                if "failover" in parts:
                    result["failover"] = asyncio.run(failover_part(config, args.failovers))
            finally:
                cluster.stop()
    setup = (
        f"service: kv, {args.clients} clients x {args.window} requests in flight, half puts,"
        f" {args.seconds:g} s per setup after {args.warmup:g} s; pause: one {args.mib} MiB"
        f" region, {args.rounds} epochs per series"
    )
    result = {**run_meta("replication", setup, load_at_start), **result}
    lines = report(result)
    if not args.quick and parts == set(PARTS):
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "replication.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "replication.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
