"""Benchmark: qemu servers (issue 5): boot to connected, memory per VM, live migration.

One run brings up a `servergroup up --hosts 2` of its own (state directory
under /tmp, etcd ports and lab name of its own), creates one group and then,
always with the `qemu` driver:

1. boot: `--boots` times, `servergroup server create` of a VM on h1, then
   `server delete`. Timed from the start of the CLI to (a) the CLI returning
   and (b) the VM being connected: the host relay has logged "guest
   <instance> connected" AND the guest agent has printed "guest agent ready"
   on the VM's console (the later of the two). Stages on the way (QEMU
   started, the guest's init ready, the exec agent ready) are timed too. One
   warm-up boot first is not counted: it may build the guest image or its
   disk (both cached).
2. memory: VmRSS (/proc/PID/status) of each QEMU with 1, then 3 VMs running
   on h1, and the CPU the 3 idle VMs use.
3. live migration: a counter in the guest prints `tick <guest uptime>` to the
   console every 10 ms; `server migrate --live` h1 -> h2 and back,
   `--migrations` times. Reported: the CLI's wall time, what QEMU says
   (total time and downtime, from the source host's log), the longest gap
   between consecutive ticks across the move by the guest's own uptime
   stamps, and the same gap as seen from outside (when this process saw the
   last tick in the source's console and the first in the target's).

Times "seen" are `time.monotonic()` when a poller here (every 10 ms) finds
the line in the file, so they carry up to ~10 ms of poll delay.

There is no peer to run: the figures measured by hand on these machines
(REFERENCE.md, "Real VMs on these machines") stand beside ours, quoted.

Everything is torn down at the end (`servergroup down`, the state
directory), also on an error or Ctrl-C. Writes a table on stdout and JSON
plus Markdown under bench/results/.

    .venv/bin/python bench/vm.py [--quick] [--boots 10] [--migrations 6]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from _harness import RESULTS, UpRun, run_meta, run_then_tear_down, say, summary

HERE = Path(__file__).resolve().parent
GROUP = "bench"
HOSTS = ("h1", "h2")
CLI_TIMEOUT = 240.0
#: How long a booted VM may take to say its guest agent is ready.
READY_TIMEOUT = 120.0
POLL_INTERVAL = 0.01
#: Let a new VM settle before its memory is read (the agents finish starting).
SETTLE_INTERVAL = 3.0
RSS_SAMPLES = 5
CPU_INTERVAL = 5.0
#: Ticks to see on the target after a move before it is analysed.
TICKS_AFTER_MOVE = 30
TICK_TIMEOUT = 30.0

TICKER = (
    "setsid sh -c 'while :; do read u i < /proc/uptime; echo tick $u; sleep 0.01; done' "
    "> /dev/console 2>&1 < /dev/null &"
)
TICK = re.compile(r"tick (\d+\.\d+)")
MIGRATED = re.compile(r"migrated from \S+ to \S+ in ([\d.]+) s \(downtime (\d+) ms\)")
ACCEL = re.compile(r"run with -accel (\w+)")
INSTANCE = re.compile(r"\((instance-[0-9a-z]+)\)")

#: What REFERENCE.md ("Real VMs on these machines") wrote down from trying QEMU
#: by hand on these machines. Quoted, not run.
REFERENCE = {
    "boot": "PVH vmlinux, /usr over 9p: first command in the guest ~2 s after QEMU "
    "starts, Python output ~1.5 s later (a bzImage takes ~5 s)",
    "memory": "~240-280 MB RSS per VM with -m 128 / -m 256; three at once ran fine",
    "idle_cpu": "~0.2 % of a core per idle VM",
    "migration": "not measured",
}
SHORT_REFERENCE = {
    "boot": "~2 s QEMU start -> first guest command, +~1.5 s to Python output",
    "memory": "~240-280 MB (-m 128 / 256)",
    "idle_cpu": "~0.2 % of a core",
    "migration": "not measured",
}
GOALS = {"boot_to_connected": "p50 <= 5 s under TCG"}
#: The driver's `downtime-limit` for QEMU (MIGRATION_DOWNTIME_MS in the driver).
DRIVER_DOWNTIME_LIMIT_MS = 100


# -- small helpers ---------------------------------------------------------------------


# -- following files -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Seen:
    """A line as the poller found it, stamped with `time.monotonic()`."""

    at: float
    text: str


@dataclass
class Tail:
    """New complete lines of a file that may not exist yet, be appended to or be replaced."""

    path: Path
    offset: int = 0
    inode: int | None = None
    partial: bytes = b""
    lines: list[Seen] = field(default_factory=list)

    def poll(self, now: float) -> None:
        try:
            with self.path.open("rb") as f:
                stat = os.fstat(f.fileno())
                if stat.st_ino != self.inode or stat.st_size < self.offset:
                    self.inode, self.offset, self.partial = stat.st_ino, 0, b""
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        self.offset += len(data)
        *complete, self.partial = (self.partial + data).split(b"\n")
        for raw in complete:
            self.lines.append(Seen(at=now, text=raw.decode(errors="replace").strip()))


class Poller:
    """Follows files every `POLL_INTERVAL` in a task of its own."""

    def __init__(self) -> None:
        self.tails: dict[Path, Tail] = {}
        self._task: asyncio.Task[None] | None = None

    def follow(self, path: Path) -> Tail:
        tail = self.tails.get(path)
        if tail is None:
            tail = Tail(path=path)
            tail.poll(time.monotonic())
            self.tails[path] = tail
        return tail

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            for tail in list(self.tails.values()):
                tail.poll(now)
            await asyncio.sleep(POLL_INTERVAL)

    async def first(
        self, path: Path, needle: str, after: int = 0, timeout: float = READY_TIMEOUT
    ) -> Seen:
        """The first line of `path` from index `after` on that contains `needle`."""
        tail = self.follow(path)
        deadline = time.monotonic() + timeout
        while True:
            for seen in tail.lines[after:]:
                if needle in seen.text:
                    return seen
            if time.monotonic() > deadline:
                raise RuntimeError(f"no line with {needle!r} in {path} within {timeout:g} s")
            await asyncio.sleep(POLL_INTERVAL)

    async def until(self, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(POLL_INTERVAL)
        return True


# -- the setup -------------------------------------------------------------------------


class Bench(UpRun):
    """The setup of one run: CLI calls with its environment, paths of its files."""

    def __init__(self) -> None:
        super().__init__("vm", cli_timeout=CLI_TIMEOUT)
        self.poller = Poller()

    def console(self, host: str, name: str) -> Path:
        return self.state_dir / "qemu" / host / name / "console.log"

    def qemu_pid(self, host: str, name: str) -> int:
        """The PID of `name`'s QEMU on `host`, checked by its command line."""
        directory = self.state_dir / "qemu" / host / name
        pid = int((directory / "qemu.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if os.fsencode(directory / "qmp.sock") not in cmdline:
            raise RuntimeError(f"pid {pid} is not the QEMU of {host}/{name}")
        return pid

    async def create(self, name: str, host: str) -> tuple[str, float, float]:
        """Create qemu server `name` on `host`: its instance, CLI start and return stamps."""
        started_at = time.monotonic()
        out = await self.cli(
            "server", "create", name, "--group", GROUP, "--driver", "qemu", "--host", host,
            "--timeout", str(CLI_TIMEOUT - 10),
        )  # fmt: skip
        returned_at = time.monotonic()
        found = INSTANCE.search(out)
        if found is None:
            raise RuntimeError(f"no instance name in the output of server create: {out!r}")
        return found.group(1), started_at, returned_at

    async def delete(self, name: str) -> None:
        await self.cli("server", "delete", name, "--timeout", str(CLI_TIMEOUT - 10))

    def daemon_warnings(self) -> list[str]:
        """Host daemon log lines and console lines marked BUG, ERROR, WARNING or Traceback."""
        found: list[str] = []
        for tail in self.poller.tails.values():
            for seen in tail.lines:
                if any(w in seen.text for w in ("BUG", "ERROR", "WARNING", "Traceback")):
                    found.append(f"{tail.path.relative_to(self.state_dir)}: {seen.text}")
        return found


# -- 1. boot ---------------------------------------------------------------------------


async def one_boot(bench: Bench, name: str, host: str) -> dict[str, Any]:
    """Create `name`, time each stage from the CLI start; the VM keeps running."""
    log = bench.poller.follow(bench.host_log(host))
    console = bench.console(host, name)
    bench.poller.follow(console)
    mark = len(log.lines)
    instance, started_at, returned_at = await bench.create(name, host)
    first = bench.poller.first
    connected = await first(log.path, f"guest {instance} connected", mark)
    agent = await first(console, "guest agent ready")
    qemu = await first(log.path, f"qemu server {name} on {host}: QEMU started", mark, 1.0)
    init = await first(console, "servergroup-init: ready", 0, 1.0)
    opened = await first(log.path, f"qemu server {name} on {host}: its guest agent opened", mark)
    # `server create` returns once the guest agent is up; the exec agent follows.
    exec_agent = await first(console, "exec agent ready")
    stages = {
        "qemu_started_s": qemu.at,
        "relay_connected_s": connected.at,
        "init_ready_s": init.at,
        "exec_agent_ready_s": exec_agent.at,
        "guest_agent_ready_s": agent.at,
        "port_opened_s": opened.at,
        "create_returned_s": returned_at,
        "connected_s": max(connected.at, agent.at),
    }
    return {"name": name, "instance": instance} | {
        key: round(at - started_at, 3) for key, at in stages.items()
    }


async def measure_boots(bench: Bench, boots: int) -> dict[str, Any]:
    say("boot: 1 warm-up boot (not counted)")
    warmup = await one_boot(bench, "w0", "h1")
    say(f"  warm-up: connected {warmup['connected_s']:.2f} s")
    await bench.delete("w0")
    rows: list[dict[str, Any]] = []
    say(f"boot: {boots} boots on h1")
    for i in range(boots):
        row = await one_boot(bench, f"b{i}", "h1")
        await bench.delete(f"b{i}")
        rows.append(row)
        say(
            f"  b{i}: QEMU started {row['qemu_started_s']:.2f} s, init ready "
            f"{row['init_ready_s']:.2f} s, connected {row['connected_s']:.2f} s, "
            f"CLI returned {row['create_returned_s']:.2f} s"
        )
        await asyncio.sleep(0.5)
    keys = [k for k in rows[0] if k.endswith("_s")] if rows else []
    return {
        "boots": boots,
        "warmup": warmup,
        **{key: summary([r[key] for r in rows]) for key in keys},
        "rows": rows,
    }


# -- 2. memory -------------------------------------------------------------------------


def status_kb(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem of `pid` in kB."""
    wanted = {"VmRSS", "RssAnon", "RssFile", "RssShmem"}
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            found[key] = int(value.split()[0])
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time `pid` has used."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def sample_memory(bench: Bench, names: Sequence[str]) -> dict[str, Any]:
    """Median VmRSS (MB) of each VM's QEMU over `RSS_SAMPLES` reads, and the breakdown."""
    per_vm: dict[str, list[dict[str, int]]] = {n: [] for n in names}
    pids = {n: bench.qemu_pid("h1", n) for n in names}
    for _ in range(RSS_SAMPLES):
        for n in names:
            per_vm[n].append(status_kb(pids[n]))
        await asyncio.sleep(0.5)
    medians = {
        n: {k: statistics.median(s[k] for s in samples) / 1024 for k in samples[0]}
        for n, samples in per_vm.items()
    }
    rss = [m["VmRSS"] for m in medians.values()]
    return {
        "vms": len(names),
        "vm_rss_mb": summary(rss, digits=1),
        "per_vm_mb": {n: {k: round(v, 1) for k, v in m.items()} for n, m in medians.items()},
        "qemu_memory_option_mb": qemu_memory(pids[names[0]]),
    }


def qemu_memory(pid: int) -> int | None:
    words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    for option, value in itertools.pairwise(words):
        if option == b"-m":
            with contextlib.suppress(ValueError):
                return int(value.decode().split(",")[0].rstrip("M"))
    return None


async def measure_memory(bench: Bench) -> dict[str, Any]:
    say("memory: 1 VM on h1")
    await one_boot(bench, "vm1", "h1")
    await asyncio.sleep(SETTLE_INTERVAL)
    one = await sample_memory(bench, ["vm1"])
    say(f"  1 VM: {one['vm_rss_mb']['p50']} MB")
    say("memory: 3 VMs on h1")
    await one_boot(bench, "vm2", "h1")
    await one_boot(bench, "vm3", "h1")
    await asyncio.sleep(SETTLE_INTERVAL)
    three = await sample_memory(bench, ["vm1", "vm2", "vm3"])
    say(f"  3 VMs: {three['vm_rss_mb']['p50']} MB median")
    pids = [bench.qemu_pid("h1", n) for n in ("vm1", "vm2", "vm3")]
    before = [cpu_seconds(p) for p in pids]
    await asyncio.sleep(CPU_INTERVAL)
    after = [cpu_seconds(p) for p in pids]
    idle = [(b - a) / CPU_INTERVAL for a, b in zip(before, after, strict=True)]
    say(f"  idle CPU per VM: {', '.join(f'{x * 100:.1f} %' for x in idle)}")
    await bench.delete("vm2")
    await bench.delete("vm3")
    return {
        "one_vm": one,
        "three_vms": three,
        "idle_cpu_percent_of_a_core": summary(idle, 100.0, 2),
    }


# -- 3. live migration ---------------------------------------------------------------


def ticks(lines: Sequence[Seen]) -> list[tuple[float, float]]:
    """(seen at, guest uptime) of each tick line."""
    found = []
    for seen in lines:
        match = TICK.fullmatch(seen.text)
        if match is not None:
            found.append((seen.at, float(match.group(1))))
    return found


async def start_ticker(bench: Bench, name: str, host: str) -> None:
    console = bench.poller.follow(bench.console(host, name))
    mark = len(console.lines)
    await bench.cli("server", "exec", name, "--", "sh", "-c", TICKER)
    if not await bench.poller.until(lambda: len(ticks(console.lines[mark:])) >= 20, 20.0):
        raise RuntimeError(f"the ticker in {name} printed nothing on {console.path}")


async def one_migration(bench: Bench, name: str, src: str, dst: str) -> dict[str, Any]:
    src_console = bench.poller.follow(bench.console(src, name))
    dst_console = bench.poller.follow(bench.console(dst, name))
    src_log = bench.poller.follow(bench.host_log(src))
    dst_log = bench.poller.follow(bench.host_log(dst))
    src_mark, dst_mark = len(src_console.lines), len(dst_console.lines)
    src_log_mark, dst_log_mark = len(src_log.lines), len(dst_log.lines)
    # Ticks on the source for a second before the move: the gaps in flight count too.
    await asyncio.sleep(1.0)
    started_at = time.monotonic()
    await bench.cli("server", "migrate", name, "--to", dst, "--live", "--timeout", "120")
    returned_at = time.monotonic()
    row: dict[str, Any] = {"from": src, "to": dst, "cli_s": round(returned_at - started_at, 3)}

    def enough() -> bool:
        return len(ticks(dst_console.lines[dst_mark:])) >= TICKS_AFTER_MOVE

    await bench.poller.until(enough, TICK_TIMEOUT)
    before = ticks(src_console.lines[src_mark:])
    after = ticks(dst_console.lines[dst_mark:])
    for seen in src_log.lines[src_log_mark:]:
        reported = MIGRATED.search(seen.text)
        if reported is not None and f"qemu server {name} " in seen.text:
            row["qemu_total_s"] = float(reported.group(1))
            row["qemu_downtime_ms"] = int(reported.group(2))
    row["ticks_before"], row["ticks_after"] = len(before), len(after)
    live = bool(before) and bool(after) and after[0][1] >= before[-1][1]
    row["live"] = live
    if live:
        uptimes = [u for _, u in before] + [u for _, u in after]
        gaps = [b - a for a, b in itertools.pairwise(uptimes)]
        row["guest_max_gap_ms"] = round(max(gaps) * 1000, 1)
        row["guest_gap_at_switch_ms"] = round((after[0][1] - before[-1][1]) * 1000, 1)
        row["guest_median_gap_ms"] = round(statistics.median(gaps) * 1000, 1)
        row["seen_gap_at_switch_ms"] = round((after[0][0] - before[-1][0]) * 1000, 1)
    else:
        # Not live: keep what the hosts logged about the server, to report it.
        row["target_log"] = [
            s.text for s in dst_log.lines[dst_log_mark:] if f"server {name} " in s.text
        ][:20]
        row["source_log"] = [
            s.text for s in src_log.lines[src_log_mark:] if f"server {name} " in s.text
        ][:20]
        say(f"  NOT LIVE: {len(before)} ticks before, {len(after)} after on {dst}")
        for line in row["target_log"]:
            say(f"    {dst}: {line[:260]}")
        # The guest's uptime going back means it booted again: a cold move, not a live one.
        row["guest_uptime_restarted"] = bool(before and after and after[0][1] < before[-1][1])
        await start_ticker(bench, name, dst)
    return row


async def measure_migrations(bench: Bench, name: str, runs: int) -> dict[str, Any]:
    say(f"live migration: {runs} moves of {name} between h1 and h2")
    await start_ticker(bench, name, "h1")
    rows: list[dict[str, Any]] = []
    host = "h1"
    for _ in range(runs):
        dst = "h2" if host == "h1" else "h1"
        row = await one_migration(bench, name, host, dst)
        rows.append(row)
        if row["live"]:
            say(
                f"  {host} -> {dst}: CLI {row['cli_s']:.2f} s, QEMU "
                f"{row.get('qemu_total_s', float('nan')):.2f} s downtime "
                f"{row.get('qemu_downtime_ms')} ms; longest guest tick gap "
                f"{row['guest_max_gap_ms']:.0f} ms, seen from here "
                f"{row['seen_gap_at_switch_ms']:.0f} ms"
            )
        host = dst
    live = [r for r in rows if r["live"]]

    def values(key: str) -> list[float]:
        return [float(r[key]) for r in live if key in r]

    return {
        "runs": runs,
        "live": len(live),
        "not_live": len(rows) - len(live),
        "driver_downtime_limit_ms": DRIVER_DOWNTIME_LIMIT_MS,
        "cli_s": summary(values("cli_s")),
        "qemu_total_s": summary(values("qemu_total_s")),
        "qemu_downtime_ms": summary(values("qemu_downtime_ms"), digits=1),
        "guest_max_gap_ms": summary(values("guest_max_gap_ms"), digits=1),
        "guest_gap_at_switch_ms": summary(values("guest_gap_at_switch_ms"), digits=1),
        "guest_median_gap_ms": summary(values("guest_median_gap_ms"), digits=1),
        "seen_gap_at_switch_ms": summary(values("seen_gap_at_switch_ms"), digits=1),
        "rows": rows,
    }


# -- the run -----------------------------------------------------------------------------


def accelerator(bench: Bench) -> dict[str, str | None]:
    logged = None
    for host in HOSTS:
        for seen in bench.poller.follow(bench.host_log(host)).lines:
            found = ACCEL.search(seen.text)
            if found is not None:
                logged = found.group(1)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cached = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cached = str(json.loads((cache / "servergroup/guest/accel").read_text())["accel"])
    return {"host_log": logged, "cache_file": cached}


async def run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    say(f"servergroup up: lab {bench.lab}, state {bench.state_dir}")
    up = json.loads(await bench.cli("up", "--hosts", str(len(HOSTS)), "--json"))
    bench.poller.start()
    try:
        for host in HOSTS:
            bench.poller.follow(bench.host_log(host))
        await bench.cli("group", "create", GROUP)
        results = {
            "boot": await measure_boots(bench, args.boots),
            "memory": await measure_memory(bench),
            "migration": await measure_migrations(bench, "vm1", args.migrations),
        }
        await bench.delete("vm1")
        await asyncio.sleep(0.2)
        warnings = bench.daemon_warnings()
        return {
            **results,
            "accelerator": accelerator(bench),
            "hosts": [h["name"] for h in up["hosts"]],
            "daemon_warnings_count": len(warnings),
            "daemon_warnings": warnings[:40],
        }
    finally:
        await bench.poller.stop()


def leftover_qemus(state_dir: Path) -> list[int]:
    """PIDs of QEMUs still running for a VM of `state_dir` (by their command line)."""
    pids = []
    for pid_file in state_dir.glob("qemu/*/*/qemu.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            qmp = os.fsencode(pid_file.parent / "qmp.sock")
            if qmp in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
    return pids


# -- output ------------------------------------------------------------------------------


def cell(summary_: dict[str, Any], key: str, unit: str) -> str:
    value = summary_.get(key)
    return f"{value:g} {unit}" if isinstance(value, int | float) else ""


def table(results: dict[str, Any]) -> str:
    b, m, mg = results["boot"], results["memory"], results["migration"]
    limit = f"QEMU downtime-limit {mg['driver_downtime_limit_ms']} ms (driver)"
    rows: list[tuple[str, dict[str, Any], str, str, str]] = [
        ("boot: CLI start -> relay connected and guest agent ready", b["connected_s"], "s",
         GOALS["boot_to_connected"], SHORT_REFERENCE["boot"]),
        ("  CLI start -> `server create` returned", b["create_returned_s"], "s", "", ""),
        ("  CLI start -> QEMU started (host log)", b["qemu_started_s"], "s", "", ""),
        ("  CLI start -> relay connected to the channel", b["relay_connected_s"], "s", "", ""),
        ("  CLI start -> guest init ready (console)", b["init_ready_s"], "s", "", ""),
        ("  CLI start -> exec agent ready (console)", b["exec_agent_ready_s"], "s", "", ""),
        ("  CLI start -> guest agent ready (console)", b["guest_agent_ready_s"], "s", "", ""),
        ("  CLI start -> port opened by the guest agent (QMP, host log)", b["port_opened_s"],
         "s", "", ""),
        ("memory: VmRSS per QEMU, 1 VM running", m["one_vm"]["vm_rss_mb"], "MB", "",
         SHORT_REFERENCE["memory"]),
        ("memory: VmRSS per QEMU, 3 VMs running", m["three_vms"]["vm_rss_mb"], "MB", "", ""),
        ("idle CPU per VM (3 running), % of a core", m["idle_cpu_percent_of_a_core"], "%", "",
         SHORT_REFERENCE["idle_cpu"]),
        ("live migration: `server migrate --live` wall time", mg["cli_s"], "s", "",
         SHORT_REFERENCE["migration"]),
        ("  QEMU: migration total time (source host log)", mg["qemu_total_s"], "s", "", ""),
        ("  QEMU: reported downtime (source host log)", mg["qemu_downtime_ms"], "ms", limit,
         ""),
        ("  guest clock: longest gap between ticks across the move", mg["guest_max_gap_ms"],
         "ms", "", ""),
        ("  guest clock: gap at the switch (last source tick -> first target tick)",
         mg["guest_gap_at_switch_ms"], "ms", "", ""),
        ("  guest clock: median gap between ticks (the ticker's own period)",
         mg["guest_median_gap_ms"], "ms", "", ""),
        ("  seen from the host: last tick on the source -> first on the target",
         mg["seen_gap_at_switch_ms"], "ms", "", ""),
    ]  # fmt: skip
    lines = [
        "| measurement | n | min | p50 | p90 | p99 | max | goal "
        "| REFERENCE.md (by hand, not run) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, s, unit, goal, reference in rows:
        cells = " | ".join(cell(s, key, unit) for key in ("min", "p50", "p90", "p99", "max"))
        lines.append(f"| {label} | {s.get('n', 0)} | {cells} | {goal} | {reference} |")
    return "\n".join(lines)


def checks(results: dict[str, Any]) -> str:
    b, m, mg = results["boot"], results["memory"], results["migration"]
    accel = results["accelerator"]
    p50 = b["connected_s"].get("p50")
    met = isinstance(p50, int | float) and p50 <= 5.0
    w = b["warmup"]
    return "\n".join(
        [
            f"- Accelerator: {accel['host_log']} (host log), {accel['cache_file']} (cache file).",
            f"- Boot goal (p50 <= 5 s to connected): {'met' if met else 'MISSED'}, p50 {p50} s.",
            f"- Warm-up boot (not counted): connected {w['connected_s']} s, QEMU started "
            f"{w['qemu_started_s']} s after the CLI start.",
            f"- QEMU memory option: -m {m['one_vm']['qemu_memory_option_mb']} (MiB); "
            f"per-VM breakdown in vm.json.",
            f"- Live migrations: {mg['live']} of {mg['runs']} live (the guest's uptime went on "
            f"across the move); {mg['not_live']} not live (see `migration.rows` in vm.json).",
            f"- Daemon/console lines marked BUG, ERROR, WARNING or Traceback: "
            f"{results['daemon_warnings_count']}.",
        ]
    )


def notes() -> str:
    lines = ["REFERENCE.md figures (measured by hand on these machines; not run here):", ""]
    lines += [f"- {what}: {text}" for what, text in REFERENCE.items()]
    lines += [
        "",
        "Stamps are taken when a poller in the benchmark (every 10 ms) finds the line in "
        "the host log or the VM's console, so they include up to ~10 ms of poll delay. "
        "The relay connects to the channel socket as soon as QEMU listens on it, before "
        "the guest runs, so 'connected' is set by the guest agent's readiness.",
        "",
        "Under TCG the guest's clock is QEMU's virtual clock, which stands still while the "
        "VM is stopped and migrates with it: the gap in the guest's own uptime stamps is "
        "time the guest ran without its ticker printing (not the stop itself); the gap "
        "'seen from the host' is wall time between the last tick in the source's console "
        "and the first in the target's, stop included, plus console flushing and up to "
        "~10 ms of poll delay. The ticker's own period is ~20 ms (sleep 0.01 in busybox "
        "sh under TCG; /proc/uptime counts in 10 ms steps).",
    ]
    return "\n".join(lines)


def write(
    results: dict[str, Any], args: argparse.Namespace, lab: str, load_at_start: float
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        **run_meta(
            "vm",
            f"servergroup up --hosts {len(HOSTS)} (lab {lab}, managed local etcd), "
            f"qemu servers (default flavor: 1 vCPU), {args.boots} boots on h1, "
            f"{args.migrations} live migrations h1 <-> h2",
            load_at_start,
        ),
        "goals": GOALS,
        "reference": REFERENCE,
    }
    (RESULTS / f"{args.output}.json").write_text(json.dumps({**meta, **results}, indent=2) + "\n")
    text = table(results)
    (RESULTS / f"{args.output}.md").write_text(
        f"# vm benchmark (qemu servers)\n\n`{meta['command']}` on {meta['date']}, "
        f"{meta['machine']}.\n{meta['setup']}; 1-minute load average {load_at_start:.1f} at "
        f"the start, {os.getloadavg()[0]:.1f} at the end (machine shared with other work). "
        "No peer is run: the figures measured by hand in REFERENCE.md are quoted.\n\n"
        f"{text}\n\n{checks(results)}\n\n{notes()}\n"
    )
    print(text)
    print()
    print(checks(results))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="Needs root and qemu-system-x86_64. Writes bench/results/OUTPUT.{md,json}.",
    )
    parser.add_argument("--quick", action="store_true", help="3 boots and 2 migrations")
    parser.add_argument("--boots", type=int, help="timed boots (default 10; 3 with --quick)")
    parser.add_argument(
        "--migrations", type=int, help="live migrations, h1 <-> h2 (default 6; 2 with --quick)"
    )
    parser.add_argument("--output", default="vm", help="result file stem (default vm)")
    args = parser.parse_args()
    args.boots = args.boots or (3 if args.quick else 10)
    args.migrations = args.migrations or (2 if args.quick else 6)
    if os.geteuid() != 0:
        sys.exit("bench/vm.py needs root (lab namespaces, cgroups, the qemu driver)")
    if shutil.which("qemu-system-x86_64") is None:
        sys.exit("bench/vm.py needs qemu-system-x86_64 (Debian package qemu-system-x86)")
    bench = Bench()
    load_at_start = os.getloadavg()[0]
    results = run_then_tear_down(bench, run(bench, args))
    write(results, args, bench.lab, load_at_start)


if __name__ == "__main__":
    main()
