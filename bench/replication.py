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
import json
import os
import random
import signal
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
from servergroup.replication.checkpoint import Captured, Capturer
from servergroup.replication.primary import (
    PRECOPY_LAST_ROUNDS,
    PRECOPY_MIN_PAGES,
    PRECOPY_ROUNDS,
)
from servergroup.replication.regions import PAGE_SIZE, RegionSet
from servergroup.replication.tracking import DirtyTracker, HashTracker
from servergroup.replication.uffd import KernelTracker

HOST = "127.0.0.1"
GOAL_PAUSE_P99_MS = 5.0
GOAL_THROUGHPUT_SHARE = 0.5
GOAL_FAILOVER_MEDIAN_S = 1.5
INTERVALS_MS = (25, 50, 100, 200)
#: The epoch the "spread" pause series writes its pages over (seconds).
SPREAD_INTERVAL = 0.1
#: How often (per interval) the "spread" writer wakes.
SPREAD_SLICES = 10
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


def pause_series(
    tracker: DirtyTracker,
    regions: RegionSet,
    share: float,
    rounds: int,
    rng: random.Random,
    *,
    spread: bool,
) -> tuple[list[float], float]:
    """Capture times (s) of `rounds` epochs writing `share` of the pages; the share written."""
    region = next(iter(regions))
    capturer = Capturer(regions, tracker)
    capturer.capture(full=True).messages()
    count = max(1, int(region.pages * share))
    view = region.array(np.uint8)
    samples: list[float] = []
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
            captured.messages()  # after resume: frees the shadows for the next pre-copy
    finally:
        del view
    return samples, written_pages / rounds / region.pages


def pause_part(mib: int, rounds: int) -> list[dict[str, Any]]:
    rng = random.Random(15)
    rows: list[dict[str, Any]] = []
    regions = RegionSet()
    try:
        regions.allocate("state", mib * 1024 * 1024)
        series: list[tuple[str, Callable[[], DirtyTracker], bool]] = [
            ("kernel", KernelTracker, True),
            ("kernel", KernelTracker, False),
            ("hash", HashTracker, False),
        ]
        for name, make, spread in series:
            for share in (0.01, 0.10):
                tracker = make()
                try:
                    tracker.track(next(iter(regions)))
                    samples, written = pause_series(
                        tracker, regions, share, rounds, rng, spread=spread
                    )
                finally:
                    tracker.close()
                mode = "spread" if spread else "burst"
                pause = summary(samples, 1000, 2)
                say(f"pause {name:6s} {mode:6s} {share:4.0%} ({written:.1%}) dirty: {pause}")
                rows.append(
                    {
                        "tracker": name,
                        "writes": mode,
                        "dirty": share,
                        "dirty_written": round(written, 4),
                        "pause_ms": pause,
                    }
                )
    finally:
        regions.close()
    return rows


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
            "| tracker | writes | dirty | rounds | p50 | p99 | max |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in result["pause"]:
            ms = row["pause_ms"]
            lines.append(
                f"| {row['tracker']} | {row['writes']} | {row['dirty']:.0%}"
                f" ({row.get('dirty_written', row['dirty']):.1%} written) | {ms['n']}"
                f" | {ms['p50']} ms | {ms['p99']} ms | {ms['max']} ms |"
            )
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
    parser.add_argument("--parts", default="service,pause,failover")
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
    if not args.quick and parts == {"service", "pause", "failover"}:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "replication.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "replication.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
