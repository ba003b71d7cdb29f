"""Benchmark: group messaging throughput and latency on 10 lab servers over 3 lab hosts.

One run brings up a `servergroup up --hosts 3` of its own (state directory
under /tmp, etcd ports and lab name of its own), creates one
soft-anti-affinity group and 10 servers placed round-robin on h1..h3.
Every app stamps what it receives with `time.monotonic()`; CLOCK_MONOTONIC
is one clock for all namespaces of the machine, so stamps from different
servers and from this process compare.

Throughput (issue 12; `--parts throughput`), first:

0. etcd ceiling: on the same managed etcd, transactions as the group
   service's batcher makes them (compare the key's mod revision, put one
   `BroadcastBatch` of 100 items of ~100-byte texts), back to back from one
   client, then from 4 clients on 4 keys; messages/s (median of `--repeat`).
1. one load app per server (tests/integration/groups/load.py, shared with
   tests/integration/groups/test_load.py; the client library's blocking
   `broadcast()`), with one sender (m0) and then four (m0..m3 on h1, h2, h3,
   h1): low load (100/s), then offered load stepped up (1000, 2000, 4000,
   ... /s per group, `--step-seconds` each) until delivered falls under 90 %
   of offered, then `--repeat` bursts of `--burst` as fast as allowed (the
   max: their median delivered rate, or a step's if more), then steps at 50 %
   and 90 % of the max. Each step: broadcasts delivered to all 9 other
   members per second, latency p50/p99 (send stamp in the text -> receive
   stamp), refused and unconfirmed (the senders' client stats), and what
   the load checker finds (loss of acknowledged broadcasts, duplicates,
   order).

Latency, notifications, host loss (issue 3; `--parts latency`): starts
`bench/messaging_member.py` inside every server with `servergroup server
exec`, then:

1. broadcast: `--broadcasts` broadcasts at `--rate` per second, senders in
   turn, each text carrying the sender's stamp taken just before the send;
   latency = receive stamp - send stamp, at each of the 9 other members.
   Also checked: every receipt arrived once, in increasing `seq` at every
   member, every member saw the same `seq` for the same broadcast, the
   `seq`s are contiguous. A few warm-up broadcasts first are not counted.
2. lifecycle notification: `--ops` operations, `servergroup server pause`
   then `unpause` of each member in turn; latency of the
   `compute.instance.pause.end`/`unpause.end` notification at the 9 others
   from the moment the CLI command starts, and from the moment a watcher in
   this process sees the host daemon's status write in etcd.
3. host loss: `--kills` runs; `kill -9` of one host daemon (h1, h2, h3 in
   turn; its PID from the `servergroup up` state); time to the
   `compute.instance.lost` notifications at the members on the other hosts
   (first and last per member) and to the DELETE of the host's record (its
   lease expiring) seen by a watcher here. `servergroup up --hosts 3` then
   restarts the daemon; the time until the killed host's members answer a
   status request again is reported too.

The original system's design figures stand beside ours (it is not run: it
needs OpenStack nova and the Titanium host agent).

Everything is torn down at the end (`servergroup down`), also on an error or
Ctrl-C. Writes a table on stdout and JSON plus Markdown under bench/results/.

    .venv/bin/python bench/messaging.py [--quick] [--broadcasts 400] [--rate 50]
                                        [--ops 16] [--kills 5] [--parts throughput,latency]
                                        [--step-seconds 2] [--burst 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the load apps live with the test that checks them

from _harness import RESULTS, UpRun, run_meta, run_then_tear_down, say, summary  # noqa: E402
from tests.integration.groups.load import (  # noqa: E402
    AppLog,
    BurstDone,
    Load,
    Stats,
    check,
    expected_counts,
    latencies,
)

from servergroup.config import CoordinationConfig, parse_endpoints  # noqa: E402
from servergroup.coordination import Compare, Get, Put, connect  # noqa: E402
from servergroup.coordination.types import EventKind  # noqa: E402
from servergroup.servers import registry as keys  # noqa: E402
from servergroup.servers.model import BroadcastBatch, BroadcastItem, encode_batch  # noqa: E402

MEMBER = HERE / "messaging_member.py"
GROUP = "bench"
SERVERS = 10
HOSTS = ("h1", "h2", "h3")
WARMUP = 10
CLI_TIMEOUT = 120.0
EVENT = "compute.instance."

#: The original system (seed 000 and the Titanium/StarlingX guest SDK it
#: ships). Only what is written down is quoted; the rest is "not stated".
ORIGINAL = {
    "broadcast": 'not stated: "not intended for high bandwidth or low-latency operations", '
    "best-effort, not reliable (seed 000)",
    "notification": "not stated (nova notifications relayed to the members; seed 000)",
    "host_loss": "not stated; liveness came from nova service heartbeats "
    "(nova defaults: report_interval 10 s, service_down_time 60 s)",
    "reconnect": "host agent retried the channel connection every 1 s "
    "(guest-host-protocol.md section 2)",
}
SHORT_ORIGINAL = {
    "broadcast": 'not stated ("not intended for ... low-latency", best-effort)',
    "notification": "not stated",
    "host_loss": "not stated (nova heartbeats; nova defaults 10 s / 60 s)",
    "reconnect": "channel retry every 1 s",
}
GOALS = {
    "broadcast": "p99 <= 20 ms",
    "host_loss": "<= lease TTL + 0.5 s",
}


# -- small helpers ---------------------------------------------------------------------


# -- what members print ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BroadcastSeen:
    at: float
    seq: int | None
    id: int
    sent_at: float
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationSeen:
    at: float
    event_type: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusSeen:
    at: float
    names: tuple[str, ...]


@dataclass
class Member:
    """One member process (inside server `name` on `host`) and what it printed."""

    name: str
    host: str
    instance: str
    proc: asyncio.subprocess.Process
    broadcasts: list[BroadcastSeen] = field(default_factory=list)
    notifications: list[NotificationSeen] = field(default_factory=list)
    statuses: list[StatusSeen] = field(default_factory=list)
    sent: dict[int, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def take(self, line: str) -> None:
        """Parse one line the member printed (the edge: JSON becomes typed records)."""
        try:
            obj = json.loads(line)
            kind, at = obj["kind"], float(obj["at"])
            if kind == "broadcast":
                _, ident, stamp = str(obj["text"]).split()
                seq = obj["seq"]
                self.broadcasts.append(
                    BroadcastSeen(
                        at=at,
                        seq=int(seq) if seq is not None else None,
                        id=int(ident),
                        sent_at=float(stamp),
                        source=str(obj["source"]),
                    )
                )
            elif kind == "notification":
                self.notifications.append(
                    NotificationSeen(at=at, event_type=obj["event_type"], name=obj["name"])
                )
            elif kind == "status":
                self.statuses.append(StatusSeen(at=at, names=tuple(obj["names"])))
            elif kind == "sent":
                self.sent[int(obj["id"])] = at
            else:
                self.problems.append(line)
        except (ValueError, KeyError, TypeError) as exc:
            self.problems.append(f"unreadable line ({exc}): {line}")

    async def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    def notified(self, event_type: str, names: set[str], after: int) -> list[NotificationSeen]:
        return [
            n for n in self.notifications[after:] if n.event_type == event_type and n.name in names
        ]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreEvent:
    """A change in etcd as this process's watcher saw it."""

    at: float
    kind: EventKind
    key: str
    value: bytes


class Bench(UpRun):
    """The setup of one run: CLI calls with its environment, the members, an etcd watcher."""

    def __init__(self) -> None:
        super().__init__("msg", cli_timeout=CLI_TIMEOUT)
        self.members: list[Member] = []
        self.store: list[StoreEvent] = []
        self.changed = asyncio.Condition()
        self.up: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def bring_up(self) -> None:
        self.up = json.loads(await self.cli("up", "--hosts", str(len(HOSTS)), "--json"))

    def host_pid(self, host: str) -> int:
        for h in self.up["hosts"]:
            if h["name"] == host:
                return int(h["pid"])
        raise RuntimeError(f"no host {host} in the up state")

    def check_own_daemon(self, host: str, pid: int) -> None:
        """Refuse to signal a PID that is not this run's host daemon for `host`."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            raise RuntimeError(f"host daemon {host} (pid {pid}) is not running") from None
        words = [w.decode(errors="replace") for w in argv]
        named = any(a == "--name" and b == host for a, b in itertools.pairwise(words))
        if "host" not in words or str(self.state_dir) not in words or not named:
            raise RuntimeError(f"pid {pid} is not our host daemon {host}: {' '.join(words)}")

    # -- the etcd watcher ----------------------------------------------------------------

    async def watch_store(self) -> None:
        endpoints = parse_endpoints(str(self.up["etcd"]))
        coordinator = connect(
            CoordinationConfig(), endpoints=endpoints, prefix=str(self.up["prefix"])
        )
        try:
            start = (await coordinator.get_prefix(keys.HOSTS)).revision + 1
            watch = await coordinator.watch(keys.REGISTRY, start_revision=start)
            try:
                async for ev in watch:
                    if ev.key.startswith((keys.SERVERS, keys.HOSTS)):
                        self.store.append(
                            StoreEvent(
                                at=time.monotonic(), kind=ev.kind, key=ev.key, value=ev.value
                            )
                        )
            finally:
                await watch.close()
        finally:
            await coordinator.close()

    async def etcd_floor(self, puts: int) -> list[float]:
        """put -> watch event on the same etcd, from this process: the floor under a broadcast.

        Under a prefix of its own, so that no host daemon sees these keys.
        """
        endpoints = parse_endpoints(str(self.up["etcd"]))
        prefix = f"/bench-messaging-floor/{os.getpid()}/"
        writer = connect(CoordinationConfig(), endpoints=endpoints, prefix=prefix)
        watcher = connect(CoordinationConfig(), endpoints=endpoints, prefix=prefix)
        samples: list[float] = []
        try:
            start = (await writer.get_prefix("")).revision + 1
            watch = await watcher.watch("floor", start_revision=start)
            events = aiter(watch)
            try:
                for i in range(puts):
                    sent_at = time.monotonic()
                    await writer.put("floor", str(i).encode())
                    async with asyncio.timeout(5.0):
                        await anext(events)
                    samples.append(time.monotonic() - sent_at)
                    await asyncio.sleep(0.01)
            finally:
                await watch.close()
                await writer.delete_prefix("")
        finally:
            await writer.close()
            await watcher.close()
        return samples

    def daemon_warnings(self) -> list[str]:
        """Log lines of the host daemons and guest agents marked BUG, ERROR or WARNING."""
        found: list[str] = []
        logs = sorted((self.state_dir / "up" / "hosts").glob("*/host.log"))
        logs += sorted((self.state_dir / "servers").glob("*/guest.log"))
        for path in logs:
            with contextlib.suppress(OSError):
                for line in path.read_text(errors="replace").splitlines():
                    if any(word in line for word in ("BUG", "ERROR", "WARNING")):
                        found.append(f"{path.parent.name}: {line.strip()}")
        return found

    def store_event(
        self, key: str, after: float, match: Callable[[StoreEvent], bool]
    ) -> StoreEvent | None:
        for ev in self.store:
            if ev.at >= after and ev.key == key and match(ev):
                return ev
        return None

    # -- members -------------------------------------------------------------------------

    async def start_member(self, name: str, host: str, instance: str) -> Member:
        proc = await asyncio.create_subprocess_exec(
            *self.argv("server", "exec", name, "--", sys.executable, str(MEMBER)),
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        member = Member(name=name, host=host, instance=instance, proc=proc)
        self.members.append(member)
        self._tasks.append(asyncio.create_task(self._read(member)))
        self._tasks.append(asyncio.create_task(self._read_err(member)))
        return member

    async def _read(self, member: Member) -> None:
        assert member.proc.stdout is not None
        async for raw in member.proc.stdout:
            member.take(raw.decode().strip())
            async with self.changed:
                self.changed.notify_all()

    async def _read_err(self, member: Member) -> None:
        assert member.proc.stderr is not None
        async for raw in member.proc.stderr:
            member.problems.append("stderr: " + raw.decode().rstrip())

    async def until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            async with self.changed:
                await asyncio.wait_for(self.changed.wait_for(done), timeout)
        except TimeoutError:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}") from None

    async def stop_members(self) -> None:
        for m in self.members:
            if m.proc.returncode is None and m.proc.stdin is not None:
                with contextlib.suppress(OSError, ConnectionError):
                    m.proc.stdin.write(b"q\n")
                    m.proc.stdin.close()
        for m in self.members:
            try:
                await asyncio.wait_for(m.proc.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    m.proc.kill()
                await m.proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- the three measurements -------------------------------------------------------------


def all_notified(
    members: Sequence[Member], event_type: str, names: set[str], marks: dict[str, int]
) -> bool:
    """Whether every one of `members` got `event_type` about each of `names` since its mark."""
    return all(
        {n.name for n in m.notified(event_type, names, marks[m.name])} == names for m in members
    )


def status_in_state(state: str, ev: StoreEvent) -> bool:
    return ev.kind is EventKind.PUT and json.loads(ev.value).get("state") == state


def is_delete(ev: StoreEvent) -> bool:
    return ev.kind is EventKind.DELETE


def statuses_beyond(member: Member, mark: int) -> bool:
    return len(member.statuses) > mark


async def create_servers(bench: Bench) -> dict[str, tuple[str, str]]:
    """The group and its 10 servers; server name -> (host, instance), in creation order."""
    await bench.cli("group", "create", GROUP, "--policy", "soft-anti-affinity")
    for i in range(SERVERS):
        name, host = f"{bench.lab}m{i}", HOSTS[i % len(HOSTS)]
        say(f"  server {name} on {host}")
        await bench.cli("server", "create", name, "--group", GROUP, "--host", host)
    listed = json.loads(await bench.cli("server", "list", "--json"))
    placed = {str(s["name"]): (str(s["host"]), str(s["instance_name"])) for s in listed}
    names = sorted(placed, key=lambda n: int(n.rsplit("m", 1)[1]))
    return {name: placed[name] for name in names}


async def start_members(bench: Bench, placed: dict[str, tuple[str, str]]) -> None:
    names = list(placed)
    for name in names:
        host, instance = placed[name]
        await bench.start_member(name, host, instance)
    everyone = tuple(sorted(names))

    def all_ready() -> bool:
        return all(any(s.names == everyone for s in m.statuses) for m in bench.members)

    await bench.until(all_ready, 90.0, "every member's status listing all 10 servers")


async def measure_broadcasts(bench: Bench, count: int, rate: float) -> dict[str, Any]:
    members = bench.members
    total = WARMUP + count
    say(f"broadcast: {WARMUP} warm-up + {count} at {rate:g}/s")
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1
    for ident in range(total):
        delay = start + ident / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await members[ident % len(members)].command(f"b {ident}")

    def receipts() -> int:
        return sum(len(m.broadcasts) for m in members)

    expected_all = total * (len(members) - 1)
    with contextlib.suppress(RuntimeError):
        await bench.until(lambda: receipts() >= expected_all, 10.0, "every broadcast receipt")
    return analyse_broadcasts(members, total)


def analyse_broadcasts(members: list[Member], total: int) -> dict[str, Any]:
    n = len(members)
    by_name = {m.instance: m for m in members}
    latencies: list[float] = []
    same_host: list[float] = []
    cross_host: list[float] = []
    seqs: dict[int, set[int | None]] = {}
    per_pair: Counter[tuple[str, int]] = Counter()
    out_of_order = wrong_source = 0
    for m in members:
        last = 0
        for b in m.broadcasts:
            per_pair[(m.name, b.id)] += 1
            seqs.setdefault(b.id, set()).add(b.seq)
            sender = members[b.id % n]
            if b.source != sender.instance or b.source not in by_name:
                wrong_source += 1
            if b.seq is None or b.seq <= last:
                out_of_order += 1
            last = b.seq if b.seq is not None else last
            if b.id >= WARMUP:
                latency = b.at - b.sent_at
                latencies.append(latency)
                (same_host if sender.host == m.host else cross_host).append(latency)
    missing = [
        (m.name, ident)
        for ident in range(total)
        for m in members
        if m is not members[ident % n] and per_pair[(m.name, ident)] == 0
    ]
    duplicates = sum(c - 1 for c in per_pair.values() if c > 1)
    agreed = all(len(s) == 1 for s in seqs.values())
    known = sorted(next(iter(s)) or 0 for s in seqs.values() if len(s) == 1)
    contiguous = bool(known) and known[-1] - known[0] + 1 == len(known) == len(set(known))
    send_failures = [i for i in range(total) if i not in members[i % n].sent]
    # Does the group's order (seq) follow the order the broadcasts were sent in?
    by_seq = sorted((next(iter(s)) or 0, ident) for ident, s in seqs.items() if len(s) == 1)
    inversions = sum(1 for a, b in itertools.pairwise(by_seq) if b[1] < a[1])
    return {
        "broadcasts_sent": total - len(send_failures),
        "warmup_not_counted": WARMUP,
        "receipts": sum(per_pair.values()),
        "receipts_expected": total * (n - 1),
        "lost": len(missing),
        "lost_examples": missing[:10],
        "duplicates": duplicates,
        "out_of_order_or_no_seq": out_of_order,
        "wrong_source_instance": wrong_source,
        "seq_same_at_every_member": agreed,
        "seq_contiguous": contiguous,
        "seq_order_vs_send_order_inversions": inversions,
        "send_failures": len(send_failures),
        "latency_ms": summary(latencies, 1000.0),
        "latency_same_host_ms": summary(same_host, 1000.0),
        "latency_cross_host_ms": summary(cross_host, 1000.0),
    }


async def measure_lifecycle(bench: Bench, ops: int) -> dict[str, Any]:
    members = bench.members
    from_cli: list[float] = []
    from_status: list[float] = []
    cli_durations: list[float] = []
    rows: list[dict[str, Any]] = []
    say(f"lifecycle: {ops} pause/unpause operations")
    for k in range(ops):
        target = members[(k // 2) % len(members)]
        action, state = ("pause", "paused") if k % 2 == 0 else ("unpause", "active")
        event_type = f"{EVENT}{action}.end"
        others = [m for m in members if m is not target]
        marks = {m.name: len(m.notifications) for m in others}
        started_at = time.monotonic()
        await bench.cli("server", action, target.name)
        cli_done_at = time.monotonic()
        await bench.until(
            functools.partial(all_notified, others, event_type, {target.name}, marks),
            15.0,
            f"{event_type} about {target.name} at the 9 others",
        )
        arrivals = [m.notified(event_type, {target.name}, marks[m.name])[0].at for m in others]
        written = bench.store_event(
            keys.status_key(target.name),
            started_at,
            functools.partial(status_in_state, state),
        )
        from_cli += [a - started_at for a in arrivals]
        cli_durations.append(cli_done_at - started_at)
        row: dict[str, Any] = {
            "op": f"{action} {target.name}",
            "cli_s": round(cli_done_at - started_at, 4),
            "from_cli_first_s": round(min(arrivals) - started_at, 4),
            "from_cli_last_s": round(max(arrivals) - started_at, 4),
        }
        if written is not None:
            from_status += [a - written.at for a in arrivals]
            row["status_seen_s"] = round(written.at - started_at, 4)
            row["from_status_last_ms"] = round((max(arrivals) - written.at) * 1000, 2)
        rows.append(row)
        say(
            f"  {row['op']}: CLI {row['cli_s']:.3f} s, last notification "
            f"{row['from_cli_last_s']:.3f} s after the CLI started"
        )
        await asyncio.sleep(0.2)
    return {
        "operations": ops,
        "from_cli_start_ms": summary(from_cli, 1000.0, 1),
        "from_status_write_ms": summary(from_status, 1000.0, 2),
        "status_writes_seen": sum(1 for r in rows if "status_seen_s" in r),
        "cli_duration_ms": summary(cli_durations, 1000.0, 1),
        "rows": rows,
    }


async def measure_host_loss(bench: Bench, runs: int, lease_ttl: float) -> dict[str, Any]:
    members = bench.members
    first: list[float] = []
    last: list[float] = []
    expiry: list[float] = []
    reconnect: list[float] = []
    rows: list[dict[str, Any]] = []
    say(f"host loss: {runs} kill -9 runs")
    for run in range(runs):
        victim = HOSTS[run % len(HOSTS)]
        lost = {m.name for m in members if m.host == victim}
        watchers = [m for m in members if m.host != victim]
        marks = {m.name: len(m.notifications) for m in members}
        pid = bench.host_pid(victim)
        bench.check_own_daemon(victim, pid)
        await asyncio.sleep(0.5)
        # The host daemon and its supervisor die together, so that only the lease can
        # tell (killed alone, the daemon would have its lease revoked by the supervisor):
        # the supervisor is stopped first, so it can neither react nor pass on its death.
        os.kill(pid, signal.SIGSTOP)
        daemons = psutil.Process(pid).children()
        killed_at = time.monotonic()
        for child in daemons:
            os.kill(child.pid, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
        lost_type = EVENT + "lost"
        await bench.until(
            functools.partial(all_notified, watchers, lost_type, lost, marks),
            15.0,
            f"{lost_type} of {victim}'s servers at the members on the other hosts",
        )
        arrivals = [[n.at for n in m.notified(lost_type, lost, marks[m.name])] for m in watchers]
        firsts = [min(a) - killed_at for a in arrivals]
        lasts = [max(a) - killed_at for a in arrivals]
        first += firsts
        last += lasts
        deleted = bench.store_event(keys.host_key(victim), killed_at, is_delete)
        row: dict[str, Any] = {
            "host": victim,
            "servers_lost": len(lost),
            "members_notified": len(watchers),
            "first_s": round(min(firsts), 4),
            "last_s": round(max(lasts), 4),
        }
        if deleted is not None:
            expiry.append(deleted.at - killed_at)
            row["host_record_deleted_s"] = round(deleted.at - killed_at, 4)
        # Restart the killed daemon; wait for "recovered" and for the killed host's
        # members to answer a status request again (their channels reconnected).
        up_started_at = time.monotonic()
        await bench.bring_up()
        up_done_at = time.monotonic()
        row["up_s"] = round(up_done_at - up_started_at, 3)
        recovered = EVENT + "recovered"
        await bench.until(
            functools.partial(all_notified, watchers, recovered, lost, marks),
            20.0,
            f"{recovered} of {victim}'s servers",
        )
        back = [m for m in members if m.host == victim]
        usable: list[float] = []
        for m in back:
            usable.append(await status_answered_after(bench, m, up_done_at) - up_done_at)
        reconnect += usable
        row["status_answered_after_up_max_s"] = round(max(usable), 3)
        rows.append(row)
        say(
            f"  kill {victim}: lost at first {row['first_s']:.3f} s, last {row['last_s']:.3f} s; "
            f"host record gone {row.get('host_record_deleted_s', float('nan')):.3f} s"
        )
    goal = lease_ttl + 0.5
    return {
        "runs": runs,
        "lease_ttl_s": lease_ttl,
        "goal_s": goal,
        "first_lost_s": summary(first),
        "last_lost_s": summary(last),
        "host_record_deleted_s": summary(expiry),
        "status_answered_after_up_s": summary(reconnect),
        "within_goal": bool(last) and max(last) <= goal,
        "rows": rows,
    }


async def status_answered_after(bench: Bench, member: Member, after: float) -> float:
    """Ask `member` for the status every 0.1 s until an answer comes; its arrival stamp."""
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        mark = len(member.statuses)
        await member.command("s")
        with contextlib.suppress(RuntimeError):
            await bench.until(
                functools.partial(statuses_beyond, member, mark), 0.1, "a status answer"
            )
        answers = [s.at for s in member.statuses[mark:] if s.at >= after]
        if answers:
            return answers[0]
    raise RuntimeError(f"member {member.name} got no status answer within 20 s")


# -- throughput (issue 12) ------------------------------------------------------------------

#: Offered loads per group (broadcasts/s), stepped up until delivery falls behind.
STEPS = (1000, 2000, 4000, 8000, 16000, 32000, 64000)
#: A step fell behind when it delivered less than this share of what was offered.
KEEPS_UP = 0.9
LOW_RATE = 100.0
SENDER_COUNTS = (1, 4)
CEILING_ITEMS = 100
CEILING_TEXT = 100
THROUGHPUT_GOALS = {
    "max_delivered_per_s": ">= 8000 /s",
    "p99_at_half_ms": "<= 20 ms",
    "low_load_p99_ms": "<= 5 ms",
    "delivered_vs_ceiling": ">= 0.5",
}


class Throughput:
    """The throughput part: one load app per server (tests/integration/groups/load.py)."""

    def __init__(self, bench: Bench, load: Load, names: list[str], args: argparse.Namespace):
        self.bench = bench
        self.load = load
        self.names = names
        self.seconds = float(args.step_seconds)
        self.burst = int(args.burst)
        self.repeat = int(args.repeat)
        self.profile: Path | None = args.profile
        self._tags = itertools.count()

    async def step(
        self, senders: int, rate: float | None, *, seconds: float = 0.0, total: int = 0
    ) -> dict[str, Any]:
        """`senders` apps send `rate` per second together (None: as fast as allowed) for
        `seconds` (or `total` broadcasts); what was delivered, how late, what was refused."""
        who = self.names[:senders]
        tag = f"t{next(self._tags)}"
        if rate is not None:
            total = max(senders, round(rate * seconds))
        count = max(1, total // senders)
        per_sender = rate / senders if rate else 0.0
        before = {n: self.load.apps[n].log.stats for n in who}
        batches_before = await group_counters(self.bench.state_dir)
        cpu_before = cpu_by_role(self.bench.state_dir)
        fsync_before = await asyncio.to_thread(etcd_fsyncs, str(self.bench.up["etcd"]))
        profilers = (
            start_profilers(self.bench.state_dir, self.profile, f"{senders}s-{tag}")
            if self.profile is not None and rate is None
            else []
        )
        await asyncio.to_thread(self.load.burst, who, tag, count, rate=per_sender)
        sending = count / per_sender if per_sender else 0.0
        done: dict[str, BurstDone] = await asyncio.to_thread(
            self.load.wait_sent, who, sending + 120.0
        )
        expected = expected_counts(dict.fromkeys(who, count), self.names)
        await asyncio.to_thread(
            functools.partial(self.load.wait_delivered, expected, tag, quiet=3.0, timeout=120.0)
        )
        cpu_after = cpu_by_role(self.bench.state_dir)
        cpu = cpu_used(cpu_before, cpu_after)
        cpu_us = cpu_per_broadcast(cpu_before, cpu_after, count * senders)
        fsync_after = await asyncio.to_thread(etcd_fsyncs, str(self.bench.up["etcd"]))
        batches_after = await group_counters(self.bench.state_dir)
        await asyncio.to_thread(stop_profilers, profilers)
        logs: dict[str, AppLog] = await asyncio.to_thread(self.load.collect)
        return {
            **step_figures(logs, done, before, tag, rate, senders, len(self.names)),
            "cpu_cores": cpu,
            "cpu_us_per_broadcast": cpu_us,
            "etcd_fsync": fsync_summary(fsync_before, fsync_after),
            "batches": batch_summary(batches_before, batches_after),
        }

    async def fixed(self, senders: int, rate: float) -> dict[str, Any]:
        """One step at `rate` (after a warm-up): what the path costs at a load it carries.

        For comparing two versions on a busy machine: at a rate both carry, the
        CPU per broadcast does not depend on how much CPU the machine leaves
        the run (as the maximum does).
        """
        say(f"fixed rate, {senders} sender(s): warm-up, then {rate:g}/s for {self.seconds:g} s")
        await self.step(senders, LOW_RATE, seconds=0.5)
        figures = await self.step(senders, rate, seconds=self.seconds)
        say(f"  {rate:g}/s: {line_of(figures)}; CPU per broadcast {figures['cpu_us_per_broadcast']}"
            f"; batches {figures['batches']}")  # fmt: skip
        return figures

    async def sweep(self, senders: int) -> dict[str, Any]:
        say(f"throughput, {senders} sender(s): warm-up, low load {LOW_RATE:g}/s")
        await self.step(senders, LOW_RATE, seconds=0.5)
        low = await self.step(senders, LOW_RATE, seconds=max(3.0, self.seconds))
        steps: list[dict[str, Any]] = []
        for rate in STEPS:
            figures = await self.step(senders, float(rate), seconds=self.seconds)
            steps.append(figures)
            say(f"  offered {rate}/s: {line_of(figures)}")
            if figures["delivered_per_s"] < KEEPS_UP * rate:
                break
        unlimited: list[dict[str, Any]] = []
        for _ in range(self.repeat):
            figures = await self.step(senders, None, total=self.burst)
            unlimited.append(figures)
            say(f"  as fast as allowed: {line_of(figures)}")
        # The most delivered: as fast as allowed (median of the bursts), or a step's when
        # more (a path that drops what it cannot carry delivers less when pushed harder).
        maximum = max(median([f["delivered_per_s"] for f in unlimited]),
                      *(f["delivered_per_s"] for f in steps))  # fmt: skip
        at: dict[str, dict[str, Any]] = {}
        for share in (0.5, 0.9):
            figures = await self.step(senders, share * maximum, seconds=self.seconds)
            at[f"{share:.0%}"] = figures
            say(f"  {share:.0%} of {maximum:.0f}/s: {line_of(figures)}")
        every = [low, *steps, *unlimited, *at.values()]
        return {
            "senders": senders,
            "max_delivered_per_s": maximum,
            "low_load": low,
            "steps": steps,
            "as_fast_as_allowed": unlimited,
            "at_share_of_max": at,
            "refused_total": sum(f["refused"] for f in every),
            "unconfirmed_total": sum(f["unconfirmed"] for f in every),
            "missing_acknowledged_total": sum(f["missing_acknowledged"] for f in every),
            "problems": [p for f in every for p in f["problems"]][:20],
        }


#: Where the CPU goes, by what a process's command line names (all under the run's
#: state directory); "machine" is every CPU of the machine busy, other work included.
ROLES = (
    ("load apps", "tests.integration.groups.load"),
    ("guest agents", "guest"),
    ("host daemons", "host"),
    ("etcd", "--data-dir"),
)


def cpu_by_role(state_dir: Path) -> dict[str, float]:
    """CPU seconds so far of this run's processes by role, of this process, of the machine."""
    seconds: defaultdict[str, float] = defaultdict(float)
    marker = str(state_dir)
    for proc in psutil.process_iter(["cmdline", "cpu_times"]):
        argv = proc.info["cmdline"] or []
        times = proc.info["cpu_times"]
        if times is None or not any(marker in word for word in argv):
            continue
        role = next((name for name, word in ROLES if word in argv), "other")
        seconds[role] += times.user + times.system
    me = psutil.Process().cpu_times()
    seconds["this benchmark"] = me.user + me.system
    machine = psutil.cpu_times()
    seconds["machine"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
    seconds["wall"] = time.monotonic()
    return dict(seconds)


#: What `--profile` samples: (file name, role word, a word the command line must also hold,
#: a word it must not). The sender m0 and its agent are on h1; m1 on h2 only receives.
PROFILED = (
    ("daemon-h1", "host", "h1", "--supervised"),
    ("daemon-h2", "host", "h2", "--supervised"),
    ("agent-m0", "guest", "m0/channel.sock", ""),
    ("agent-m1", "guest", "m1/channel.sock", ""),
    ("app-m0", "tests.integration.groups.load", "m0", ""),
    ("app-m1", "tests.integration.groups.load", "m1", ""),
)


def start_profilers(state_dir: Path, out: Path, label: str) -> list[subprocess.Popen[bytes]]:
    """`py-spy record` (collapsed stacks) on one process of each kind in `PROFILED`."""
    out.mkdir(parents=True, exist_ok=True)
    marker = str(state_dir)
    started: list[subprocess.Popen[bytes]] = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        argv = proc.info["cmdline"] or []
        if not any(marker in word for word in argv):
            continue
        for name, role, must, must_not in PROFILED:
            if (
                role in argv
                and any(w == must or w.endswith(must) for w in argv)
                and (not must_not or must_not not in argv)
            ):
                started.append(
                    subprocess.Popen(
                        ["py-spy", "record", "--nonblocking", "-p", str(proc.info["pid"]),
                         "-r", "200", "-f", "raw", "-o", str(out / f"{label}-{name}.txt")],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )  # fmt: skip
    return started


def stop_profilers(profilers: list[subprocess.Popen[bytes]]) -> None:
    """Stop each `py-spy record` we started (SIGINT: it writes its file and ends)."""
    for p in profilers:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in profilers:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Cores used between two `cpu_by_role` readings, by role."""
    wall = max(after["wall"] - before["wall"], 1e-6)
    return {
        role: round((after[role] - before.get(role, 0.0)) / wall, 2)
        for role in after
        if role != "wall"
    }


_GROUP_HEALTH = re.compile(
    r"host (?P<host>\S+) health: groups \S+: .*?(?P<stored>\d+) broadcast\(s\) stored in "
    r"(?P<batches>\d+) batch\(es\).*?(?P<conflicts>\d+) conflict\(s\)"
)


def host_daemons(state_dir: Path) -> dict[str, int]:
    """host name -> PID of this run's host daemons (the daemons, not their supervisors)."""
    marker = str(state_dir)
    out: dict[str, int] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        argv = proc.info["cmdline"] or []
        if "host" in argv and "--supervised" not in argv and any(marker in w for w in argv):
            for a, b in itertools.pairwise(argv):
                if a == "--name":
                    out[b] = int(proc.info["pid"])
    return out


async def group_counters(state_dir: Path) -> dict[str, tuple[int, int, int]]:
    """host -> (broadcasts stored, batches, conflicts) of its group service so far.

    Asks each daemon to log its health (SIGUSR1) and reads the line back.
    """
    pids = host_daemons(state_dir)
    marks = {}
    for host, pid in pids.items():
        path = state_dir / "up" / "hosts" / host / "host.log"
        with contextlib.suppress(OSError):
            marks[host] = path.stat().st_size
            os.kill(pid, signal.SIGUSR1)
    out: dict[str, tuple[int, int, int]] = {}
    deadline = time.monotonic() + 5.0
    while len(out) < len(marks) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        for host, mark in marks.items():
            path = state_dir / "up" / "hosts" / host / "host.log"
            with contextlib.suppress(OSError), path.open("rb") as f:
                f.seek(mark)
                for line in f.read().decode(errors="replace").splitlines():
                    m = _GROUP_HEALTH.search(line)
                    if m is not None and m["host"] == host:
                        out[host] = (int(m["stored"]), int(m["batches"]), int(m["conflicts"]))
    return out


def batch_summary(
    before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]
) -> dict[str, dict[str, float]]:
    """Per host, in one step: broadcasts stored, transactions that stored them, their
    mean size, and the transactions refused by a conflict (another host wrote first)."""
    out: dict[str, dict[str, float]] = {}
    for host, (stored, batches, conflicts) in sorted(after.items()):
        s0, b0, c0 = before.get(host, (0, 0, 0))
        if stored - s0 or conflicts - c0:
            out[host] = {
                "stored": stored - s0,
                "batches": batches - b0,
                "mean": round((stored - s0) / max(1, batches - b0), 1),
                "conflicts": conflicts - c0,
            }
    return out


def etcd_fsyncs(endpoints: str) -> dict[float, int]:
    """etcd's WAL fsync histogram (upper bound in s -> count so far), from its /metrics."""
    first = parse_endpoints(endpoints)[0]
    url = f"http://{first.host}:{first.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    out: dict[float, int] = {}
    for line in text.splitlines():
        if line.startswith("etcd_disk_wal_fsync_duration_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            out[float(bound)] = int(float(line.rsplit(" ", 1)[1]))
    return out


def fsync_summary(before: dict[float, int], after: dict[float, int]) -> dict[str, Any]:
    """The fsyncs of one step: how many, and the bucket bounds of their p50 and p99 (ms).

    What a transaction waits for on the disk, to tell the disk's share of the
    latency tail from the CPU's.
    """
    if not before or not after:
        return {}
    counts = sorted((bound, after[bound] - before.get(bound, 0)) for bound in after)
    total = counts[-1][1]
    if total <= 0:
        return {"count": 0}

    def bound_of(share: float) -> float:
        return next(b for b, c in counts if c >= share * total) * 1000.0

    return {"count": total, "p50_ms_at_most": bound_of(0.5), "p99_ms_at_most": bound_of(0.99)}


def cpu_per_broadcast(
    before: dict[str, float], after: dict[str, float], broadcasts: int
) -> dict[str, float]:
    """CPU microseconds per broadcast sent (and delivered to the 9 others) by role.

    What the path costs, whatever else the machine runs: a busy machine gives
    this run's processes fewer cores, and so fewer broadcasts per second, but
    about the same CPU time per broadcast.
    """
    roles = [r for r, _ in ROLES]
    out = {
        role: round((after.get(role, 0.0) - before.get(role, 0.0)) * 1e6 / max(1, broadcasts), 1)
        for role in roles
    }
    out["total"] = round(sum(out.values()), 1)
    return out


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def step_figures(
    logs: dict[str, AppLog],
    done: dict[str, BurstDone],
    before: dict[str, Stats],
    tag: str,
    rate: float | None,
    senders: int,
    members: int,
) -> dict[str, Any]:
    receipts = [r for log in logs.values() for r in log.receipts if r.tag == tag]
    first_at = min(d.first_at for d in done.values())
    last_sent_at = max(d.last_at for d in done.values())
    last_received_at = max((r.received_at for r in receipts), default=first_at)
    copies = Counter(r.key for r in receipts)
    everywhere = sum(1 for c in copies.values() if c >= members - 1)
    sent = sum(d.count for d in done.values())
    delta = {n: d.stats.minus(before[n]) for n, d in done.items()}
    verdict = check(logs, tags={tag})
    return {
        "senders": senders,
        "offered_per_s": rate,
        "broadcasts": sent,
        "sent_per_s": round(sent / max(last_sent_at - first_at, 1e-6), 1),
        "delivered_per_s": round(everywhere / max(last_received_at - first_at, 1e-6), 1),
        "delivered_everywhere": everywhere,
        "latency_ms": summary(latencies(logs, tags={tag}), 1000.0),
        "refused": sum(s.refused for s in delta.values()),
        "unconfirmed": sum(s.unconfirmed for s in delta.values()),
        "flushed": all(d.flushed for d in done.values()),
        "missing_acknowledged": sum(c.missing_acknowledged for c in verdict.receivers.values()),
        "problems": list(verdict.problems[:10]),
    }


def line_of(f: dict[str, Any]) -> str:
    lat = f["latency_ms"]
    return (
        f"sent {f['sent_per_s']:.0f}/s, delivered {f['delivered_per_s']:.0f}/s "
        f"({f['delivered_everywhere']} of {f['broadcasts']} everywhere), "
        f"p50 {lat.get('p50', float('nan')):g} ms, p99 {lat.get('p99', float('nan')):g} ms, "
        f"refused {f['refused']}, unconfirmed {f['unconfirmed']}"
    )


async def etcd_ceiling(bench: Bench, clients: int, seconds: float) -> dict[str, Any]:
    """Batched puts as the group service makes them, as fast as `clients` clients can.

    Each client writes its own key: one transaction per batch, comparing the
    key's mod revision (absent at first), putting one `BroadcastBatch` of
    100 items of 100-byte texts; a refused compare re-reads in the same
    transaction. Under a prefix of its own, so that no host daemon sees it.
    """
    endpoints = parse_endpoints(str(bench.up["etcd"]))
    prefix = f"/bench-messaging-ceiling/{os.getpid()}/"
    coordinators = [
        connect(CoordinationConfig(), endpoints=endpoints, prefix=prefix) for _ in range(clients)
    ]
    item = BroadcastItem(sender="m0", sender_instance="instance-00000000", text="x" * CEILING_TEXT)
    sizes: list[int] = []

    async def writer(coordinator: Any, key: str) -> int:
        revision, total, txns = 0, CEILING_ITEMS, 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = encode_batch(
                BroadcastBatch(
                    group="ceiling",
                    host=key,
                    host_total=total,
                    sent_at="",
                    items=(item,) * CEILING_ITEMS,
                )
            )
            sizes.append(len(value))
            result = await coordinator.txn(
                [Compare.unchanged(key, revision)], [Put(key=key, value=value)], [Get(key=key)]
            )
            if result.succeeded:
                revision, total, txns = result.revision, total + CEILING_ITEMS, txns + 1
            else:
                kv = result.reads.get(key)
                revision = kv.mod_revision if kv is not None else 0
        return txns

    try:
        started = time.monotonic()
        counts = await asyncio.gather(*(writer(c, f"g{i}") for i, c in enumerate(coordinators)))
        elapsed = time.monotonic() - started
        await coordinators[0].delete_prefix("")
    finally:
        for coordinator in coordinators:
            await coordinator.close()
    return {
        "clients": clients,
        "transactions": sum(counts),
        "seconds": round(elapsed, 3),
        "value_bytes": max(sizes, default=0),
        "messages_per_s": round(sum(counts) * CEILING_ITEMS / elapsed, 1),
    }


async def measure_ceiling(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for clients in (1, 4):
        runs = [await etcd_ceiling(bench, clients, args.step_seconds) for _ in range(args.repeat)]
        out[f"{clients}_clients"] = {
            "messages_per_s": median([r["messages_per_s"] for r in runs]),
            "runs": runs,
        }
        say(f"etcd ceiling, {clients} client(s): {out[f'{clients}_clients']['messages_per_s']:.0f} "
            "messages/s (median)")  # fmt: skip
    return out


async def measure_throughput(
    bench: Bench, placed: dict[str, tuple[str, str]], args: argparse.Namespace
) -> dict[str, Any]:
    placement = {name: host for name, (host, _) in placed.items()}
    say("throughput: etcd ceiling first, then one load app per server")
    ceiling = await measure_ceiling(bench, args)
    load = await asyncio.to_thread(Load.start, bench, placement, bench.state_dir / "load")
    try:
        part = Throughput(bench, load, list(placement), args)
        if args.fixed_rate:
            fixed = {f"{n}_senders": await part.fixed(n, args.fixed_rate) for n in args.senders}
            return {"etcd_ceiling": ceiling, "fixed_rate": fixed, "rate": args.fixed_rate}
        sweeps = {f"{n}_senders": await part.sweep(n) for n in args.senders}
    finally:
        await asyncio.to_thread(load.close)
    return {
        "etcd_ceiling": ceiling,
        **sweeps,
        "step_seconds": args.step_seconds,
        "burst": args.burst,
        "repeat": args.repeat,
        "goals": THROUGHPUT_GOALS,
    }


# -- the run -----------------------------------------------------------------------------


async def run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    say(f"servergroup up: lab {bench.lab}, state {bench.state_dir}")
    await bench.bring_up()
    watcher = asyncio.create_task(bench.watch_store())
    try:
        placed = await create_servers(bench)
        results: dict[str, Any] = {}
        if "throughput" in args.parts:
            # First, while nothing else runs in the servers (a load app binds the
            # address the members use).
            results["throughput"] = await measure_throughput(bench, placed, args)
        if "latency" in args.parts:
            await start_members(bench, placed)
            lease_ttl = float(CoordinationConfig().lease_ttl)
            say("etcd floor: put -> watch event, same etcd")
            floor = summary(await bench.etcd_floor(args.broadcasts), 1000.0)
            results |= {
                "etcd_put_to_watch_ms": floor,
                "broadcast": await measure_broadcasts(bench, args.broadcasts, args.rate),
                "lifecycle": await measure_lifecycle(bench, args.ops),
                "host_loss": await measure_host_loss(bench, args.kills, lease_ttl),
            }
        problems = [f"{m.name}: {p}" for m in bench.members for p in m.problems]
        warnings = bench.daemon_warnings()
        return {
            **results,
            "member_problems": problems[:50],
            "daemon_warnings_count": len(warnings),
            "daemon_warnings": warnings[:40],
        }
    finally:
        await bench.stop_members()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


# -- output ------------------------------------------------------------------------------


def ms(summary_: dict[str, Any], key: str, unit: str = "ms") -> str:
    value = summary_.get(key)
    return f"{value:g} {unit}" if isinstance(value, int | float) else ""


def table(results: dict[str, Any]) -> str:
    b, lc, hl = results["broadcast"], results["lifecycle"], results["host_loss"]
    loss_goal = f"<= {hl['goal_s']:g} s"
    rows: list[tuple[str, dict[str, Any], str, str, str]] = [
        ("broadcast: send -> receive, each other member", b["latency_ms"], "ms",
         GOALS["broadcast"], SHORT_ORIGINAL["broadcast"]),
        ("  receiver on the sender's host", b["latency_same_host_ms"], "ms", "", ""),
        ("  receiver on another host", b["latency_cross_host_ms"], "ms", "", ""),
        ("  floor: etcd put -> watch event alone", results["etcd_put_to_watch_ms"], "ms", "",
         ""),
        ("pause/unpause notification, from the CLI start", lc["from_cli_start_ms"], "ms", "",
         SHORT_ORIGINAL["notification"]),
        ("pause/unpause notification, from the status write", lc["from_status_write_ms"],
         "ms", "", ""),
        ("  the CLI command itself", lc["cli_duration_ms"], "ms", "", ""),
        ("kill -9 host daemon -> first `lost` at a member", hl["first_lost_s"], "s", loss_goal,
         SHORT_ORIGINAL["host_loss"]),
        ("kill -9 host daemon -> last `lost` at a member", hl["last_lost_s"], "s", loss_goal,
         ""),
        ("kill -9 -> host record deleted (lease expiry)", hl["host_record_deleted_s"], "s", "",
         ""),
        ("daemon restarted -> its members answer again", hl["status_answered_after_up_s"], "s",
         "", SHORT_ORIGINAL["reconnect"]),
    ]  # fmt: skip
    lines = [
        "| measurement | n | min | p50 | p90 | p99 | max | goal | original system |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, s, unit, goal, original in rows:
        cells = " | ".join(ms(s, key, unit) for key in ("min", "p50", "p90", "p99", "max"))
        lines.append(f"| {label} | {s.get('n', 0)} | {cells} | {goal} | {original} |")
    return "\n".join(lines)


def checks(results: dict[str, Any]) -> str:
    b, floor = results["broadcast"], results["etcd_put_to_watch_ms"]
    lat = b["latency_ms"]
    ratio = lat["p50"] / floor["p50"] if floor.get("p50") else float("nan")
    return (
        f"Broadcasts: {b['broadcasts_sent']} sent ({b['warmup_not_counted']} warm-up not "
        f"timed), {b['receipts']} of {b['receipts_expected']} receipts, {b['lost']} lost, "
        f"{b['duplicates']} duplicated, {b['out_of_order_or_no_seq']} out of order; "
        f"same seq at every member: {'yes' if b['seq_same_at_every_member'] else 'NO'}; "
        f"seq contiguous: {'yes' if b['seq_contiguous'] else 'NO'}; "
        f"send failures: {b['send_failures']}. Broadcast p50 is {ratio:.1f}x the bare etcd "
        f"put -> watch p50 (the path adds two channel hops and two agents per side)."
    )


def notes() -> str:
    lines = ["Original system (not run; figures as written down):", ""]
    lines += [f"- {what}: {text}" for what, text in ORIGINAL.items()]
    lines += [
        "",
        "Notification latency from the CLI start includes starting the `servergroup` CLI "
        "(a Python process) and its etcd round trips; from the status write it is the "
        "group service's part (status put seen by a watcher here -> notification in the "
        "member; a negative minimum means the host's watch saw the put before ours).",
    ]
    return "\n".join(lines)


def rate(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) else "as fast as allowed"


def throughput_table(t: dict[str, Any]) -> str:
    """The summary against the goals, then every step."""
    ceiling = t["etcd_ceiling"]
    one = ceiling["1_clients"]["messages_per_s"]
    sweeps = [t[f"{n}_senders"] for n in SENDER_COUNTS if f"{n}_senders" in t]
    lines = [
        "| throughput (broadcasts/s per group, 10 members) | "
        + " | ".join(f"{s['senders']} sender(s)" for s in sweeps)
        + " | goal |",
        "|---|" + "---|" * len(sweeps) + "---|",
    ]

    def row(label: str, cells: list[str], goal: str = "") -> None:
        lines.append(f"| {label} | {' | '.join(cells)} | {goal} |")

    def lat(f: dict[str, Any]) -> str:
        return f"{ms(f['latency_ms'], 'p50')} / {ms(f['latency_ms'], 'p99')}"

    row(
        "max delivered (as fast as allowed, median of "
        f"{len(sweeps[0]['as_fast_as_allowed'])}; or a step's if more)",
        [f"{s['max_delivered_per_s']:.0f}" for s in sweeps],
        THROUGHPUT_GOALS["max_delivered_per_s"],
    )
    for share, goal in (("50%", THROUGHPUT_GOALS["p99_at_half_ms"]), ("90%", "")):
        row(
            f"p50 / p99 latency at {share} of the max",
            [
                f"{lat(s['at_share_of_max'][share])} "
                f"(at {s['at_share_of_max'][share]['offered_per_s']:.0f}/s)"
                for s in sweeps
            ],
            f"p99 {goal}" if goal else "",
        )
    row(
        f"p50 / p99 latency at low load ({LOW_RATE:g}/s)",
        [lat(s["low_load"]) for s in sweeps],
        f"p99 {THROUGHPUT_GOALS['low_load_p99_ms']}",
    )

    def cores(s: dict[str, Any]) -> str:
        bursts = s["as_fast_as_allowed"]
        roles = [r for r in bursts[0]["cpu_cores"] if r != "machine"]
        used = {r: median([b["cpu_cores"].get(r, 0.0) for b in bursts]) for r in roles}
        machine = median([b["cpu_cores"]["machine"] for b in bursts])
        parts = ", ".join(f"{r} {v:.2f}" for r, v in used.items() if v >= 0.01)
        return f"machine {machine:.2f} of {os.cpu_count()}: {parts}"

    row("CPU cores busy as fast as allowed (median)", [cores(s) for s in sweeps])

    def per_broadcast(s: dict[str, Any]) -> str:
        bursts = [b for b in s["as_fast_as_allowed"] if "cpu_us_per_broadcast" in b]
        if not bursts:
            return ""
        roles = list(bursts[0]["cpu_us_per_broadcast"])
        used = {r: median([b["cpu_us_per_broadcast"][r] for b in bursts]) for r in roles}
        total = used.pop("total")
        return f"{total:.0f} µs: " + ", ".join(f"{r} {v:.0f}" for r, v in used.items())

    def fsync(s: dict[str, Any]) -> str:
        f = s["at_share_of_max"]["50%"].get("etcd_fsync") or {}
        if not f.get("count"):
            return ""
        return (
            f"{f['count']} fsyncs, p50 <= {f['p50_ms_at_most']:g} ms, "
            f"p99 <= {f['p99_ms_at_most']:g} ms"
        )

    row("etcd WAL fsync at 50% of the max (histogram buckets)", [fsync(s) for s in sweeps])

    def batching(f: dict[str, Any]) -> str:
        b = f.get("batches") or {}
        return "; ".join(
            f"{h} {v['mean']:g} per txn, {v['conflicts']:.0f} conflicts" for h, v in b.items()
        )

    row(
        "broadcasts per transaction, as fast as allowed (by sending host)",
        [batching(s["as_fast_as_allowed"][0]) for s in sweeps],
    )
    row(
        "broadcasts per transaction at 50% of the max",
        [batching(s["at_share_of_max"]["50%"]) for s in sweeps],
    )
    row(
        "CPU per broadcast as fast as allowed (median; whole path, 9 deliveries each)",
        [per_broadcast(s) for s in sweeps],
    )
    row("refused (blocking API)", [str(s["refused_total"]) for s in sweeps], "0")
    row("unconfirmed", [str(s["unconfirmed_total"]) for s in sweeps], "0")
    row(
        "acknowledged but not delivered everywhere",
        [str(s["missing_acknowledged_total"]) for s in sweeps],
        "0",
    )
    row(
        "etcd ceiling, 1 client / 4 clients on 4 keys (messages/s, median)",
        [f"{one:.0f} / {ceiling['4_clients']['messages_per_s']:.0f}"] * len(sweeps),
    )
    row(
        "max delivered / etcd ceiling (1 client)",
        [f"{s['max_delivered_per_s'] / one:.2f}" if one else "" for s in sweeps],
        THROUGHPUT_GOALS["delivered_vs_ceiling"],
    )
    lines += [
        "",
        "| senders | offered /s | sent /s | delivered /s | everywhere | p50 | p99 | refused "
        "| unconfirmed | acked, missing |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sweeps:
        for f in [s["low_load"], *s["steps"], *s["as_fast_as_allowed"],
                  *s["at_share_of_max"].values()]:  # fmt: skip
            lines.append(
                f"| {f['senders']} | {rate(f['offered_per_s'])} | {f['sent_per_s']:.0f} "
                f"| {f['delivered_per_s']:.0f} | {f['delivered_everywhere']} of "
                f"{f['broadcasts']} | {ms(f['latency_ms'], 'p50')} | {ms(f['latency_ms'], 'p99')} "
                f"| {f['refused']} | {f['unconfirmed']} | {f['missing_acknowledged']} |"
            )
    return "\n".join(lines)


def fixed_rate_table(t: dict[str, Any]) -> str:
    """`--fixed-rate`: one step per sender count, what it cost and how late it was."""
    lines = [
        f"Fixed rate {t['rate']:g}/s per group (`--fixed-rate`): CPU microseconds per broadcast "
        "by kind of process (whole path, 9 deliveries each), broadcasts per transaction.",
        "",
        "| senders | delivered /s | p50 / p99 | CPU per broadcast | per transaction |",
        "|---|---|---|---|---|",
    ]
    for key, f in t["fixed_rate"].items():
        lat = f["latency_ms"]
        cpu = f["cpu_us_per_broadcast"]
        batches = "; ".join(f"{h} {v['mean']:g}" for h, v in (f.get("batches") or {}).items())
        lines.append(
            f"| {key.split('_')[0]} | {f['delivered_per_s']:.0f} | {lat.get('p50', 0):g} / "
            f"{lat.get('p99', 0):g} ms | {cpu['total']:.0f} µs: "
            + ", ".join(f"{r} {v:.0f}" for r, v in cpu.items() if r != "total")
            + f" | {batches} |"
        )
    return "\n".join(lines)


def throughput_notes(t: dict[str, Any]) -> str:
    problems = [p for n in SENDER_COUNTS for p in t.get(f"{n}_senders", {}).get("problems", [])]
    text = (
        "Throughput: one load app per server (tests/integration/groups/load.py, the client "
        "library's blocking `broadcast()`), senders m0 (h1), then m0..m3 (h1, h2, h3, h1), each "
        "at its share of the offered load (staggered, so that together they send evenly); every "
        "app receives and stamps every broadcast. CPU: cores busy during the bursts as fast as "
        "allowed, by this run's processes (their command lines) and for the whole machine. "
        f"Offered load is stepped up ({', '.join(str(r) for r in STEPS)}/s, "
        f"{t['step_seconds']:g} s each) until delivered falls under {KEEPS_UP:.0%} of offered; "
        f"then {t['repeat']} burst(s) of {t['burst']} as fast as allowed (the max is their "
        "median delivered rate, or a step's when more) and steps at 50 % and 90 % of the "
        "max. Delivered = broadcasts that "
        "reached all 9 other members / (last receipt - first send). Latency = receive stamp - "
        "send stamp, CLOCK_MONOTONIC of the one machine, at every receiver. The etcd ceiling: "
        f"one transaction per batch of {CEILING_ITEMS} items of {CEILING_TEXT}-byte texts, "
        "compare on the key's mod revision, back to back from one client, and from 4 clients "
        "on 4 keys (4 connections, one Python process)."
    )
    if problems:
        text += "\n\nWhat the checker found:\n\n" + "\n".join(f"- {p}" for p in problems)
    return text


def write(
    results: dict[str, Any], args: argparse.Namespace, lab: str, load_at_start: float
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        **run_meta(
            "messaging",
            f"servergroup up --hosts {len(HOSTS)} (lab {lab}, managed local etcd), "
            f"{SERVERS} lab servers round-robin on {', '.join(HOSTS)}, one group",
            load_at_start,
        ),
        "parts": sorted(args.parts),
        "broadcast_rate_per_s": args.rate,
        "goals": GOALS,
        "original_system": ORIGINAL,
    }
    (RESULTS / f"{args.output}.json").write_text(json.dumps({**meta, **results}, indent=2) + "\n")
    sections: list[str] = []
    if "throughput" in results and "fixed_rate" in results["throughput"]:
        sections.append(fixed_rate_table(results["throughput"]))
    elif "throughput" in results:
        sections += [
            throughput_table(results["throughput"]),
            throughput_notes(results["throughput"]),
        ]
    if "broadcast" in results:
        sections += [table(results), checks(results), notes()]
    body = "\n\n".join(sections)
    (RESULTS / f"{args.output}.md").write_text(
        f"# messaging benchmark\n\n`{meta['command']}` on {meta['date']}, {meta['machine']}.\n"
        f"{meta['setup']}; latency broadcasts at {args.rate:g}/s; 1-minute load average "
        f"{load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (machine shared "
        "with other work). The original system is not run (it needs OpenStack nova); its "
        f"design figures are quoted.\n\n{body}\n"
    )
    print(body)


PARTS = ("throughput", "latency")
STEP_SECONDS_DEFAULT = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 s steps, bursts of 5000, no repeats; 60 broadcasts, 4 ops, 1 kill",
    )
    parser.add_argument("--broadcasts", type=int, help="timed broadcasts (default 400)")
    parser.add_argument("--rate", type=float, default=50.0, help="broadcasts per second")
    parser.add_argument("--ops", type=int, help="pause/unpause operations (default 16)")
    parser.add_argument("--kills", type=int, help="host daemon kill -9 runs (default 5)")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="comma-separated: throughput (issue 12), latency (broadcast latency, "
        "notifications, host loss); default both",
    )
    parser.add_argument(
        "--step-seconds", type=float, help=f"one throughput step (default {STEP_SECONDS_DEFAULT:g})"
    )
    parser.add_argument(
        "--burst", type=int, help="broadcasts per as-fast-as-allowed burst (default 20000)"
    )
    parser.add_argument("--repeat", type=int, help="bursts and etcd ceiling runs (default 3)")
    parser.add_argument("--output", default="messaging", help="result file stem")
    parser.add_argument(
        "--senders",
        default=",".join(map(str, SENDER_COUNTS)),
        help="throughput sweeps to run, by number of senders (default 1,4)",
    )
    parser.add_argument(
        "--fixed-rate",
        type=float,
        help="instead of the sweep: one step at this offered rate per group (for comparing "
        "the CPU per broadcast of two versions on a busy machine); prints, writes JSON only",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="directory: run `py-spy record` (on PATH, not a dependency) on the host daemons "
        "of h1 and h2, the agents and apps of m0 and m1 during each as-fast-as-allowed burst",
    )
    args = parser.parse_args()
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not args.parts or not args.parts <= set(PARTS):
        parser.error(f"--parts takes some of {', '.join(PARTS)}")
    args.senders = tuple(int(n) for n in args.senders.split(",") if n.strip())
    if not args.senders or not set(args.senders) <= set(SENDER_COUNTS):
        parser.error(f"--senders takes some of {', '.join(map(str, SENDER_COUNTS))}")
    args.step_seconds = args.step_seconds or (1.0 if args.quick else STEP_SECONDS_DEFAULT)
    args.burst = args.burst or (5000 if args.quick else 20000)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.broadcasts = args.broadcasts or (60 if args.quick else 400)
    args.ops = args.ops or (4 if args.quick else 16)
    args.kills = args.kills or (1 if args.quick else 5)
    if os.geteuid() != 0:
        sys.exit("bench/messaging.py needs root (lab namespaces and cgroups)")
    bench = Bench()
    load_at_start = os.getloadavg()[0]
    results = run_then_tear_down(bench, run(bench, args))
    write(results, args, bench.lab, load_at_start)


if __name__ == "__main__":
    main()
