"""Group messaging under load: apps in lab servers that send and record broadcasts (issue 12).

Shared by tests/integration/groups/test_load.py (does anything get lost,
repeated or reordered?) and bench/messaging.py (how fast, how late?), as
tests/integration/servers/workload.py is shared with bench/operations.py.

**The app.** `python -m tests.integration.groups.load app NAME LOG --expect
A,B,...` runs inside lab server NAME (`servergroup server exec NAME -- ...`,
so it is a real process in the server's network namespace and cgroup, and a
paused server freezes it too). It is a member app on the default address
`cgcs.server_grp`, using the client library's synchronous client
(`servergroup.groups.client.ServerGroupClient`; it keeps whatever arrives
while a blocking `broadcast()` waits, up to `MAX_HELD_EVENTS`). It asks for the group's status until
every expected server is listed, prints `{"kind": "ready"}`, then obeys
commands, one JSON object per line on stdin:

- `{"cmd": "send", "tag": T, "count": K, "rate": R, "start_at": S, "size": N,
  "flush_timeout": F}`: from monotonic time S, K broadcasts at R per second
  (0: as fast as the blocking `broadcast()` allows), each text `T NAME INDEX
  SENT_AT` padded with dots to N bytes (SENT_AT: `time.monotonic()` just
  before the call); then `flush(F)`; prints `{"kind": "sent", ...}` with the
  client's `stats` and whether the flush finished.
- `{"cmd": "sync", "write": W}`: writes out its log (unless W is false);
  prints `{"kind": "synced", "received": {tag: count}, "stats": {...}}`.
- `{"cmd": "quit"}` (or end of input): the same as `sync`, as `{"kind":
  "bye"}`, then ends.

Between commands and between sends it receives: every broadcast is stamped
with `time.monotonic()` on arrival and kept as the client library gave it;
the log lines are written after a send command and on `sync`, not while
broadcasts arrive, so that the app's receive costs what a real app's does and
the benchmark measures servergroup, not this harness (`sync` with `"write":
false` only counts what arrived). CLOCK_MONOTONIC is one
clock for every namespace of the machine, so stamps taken in different
servers compare (latency = receive stamp - the sender's stamp). The log
lines (space separated, the last field may hold spaces):

    r SEQ TAG SENDER INDEX SENT_AT RECEIVED_AT SOURCE_INSTANCE   a broadcast received
    x SEQ RECEIVED_AT SOURCE_INSTANCE                             one not ours (counted)
    s TAG INDEX ID SENT_AT                                        a broadcast sent
    n ID REASON                                                   a nack of broadcast ID

**The controller** (this process, outside the servers): `Load.start(lab,
placement, log_dir)` starts one app per server and waits until each is
ready; `burst()` makes senders send at once; `wait_delivered()` waits until
the receivers have what they should (or nothing more comes); `collect()`
reads what the apps logged since the last collect. It is synchronous
(threads read the apps' output); an asyncio caller runs it in a thread.

**The checker.** `check(logs, ...)` says what is wrong, one sentence each,
and counts per receiver (received, duplicates, order violations, seq gaps,
acknowledged broadcasts missing) and per sender (what its client reports):

- one total order: a seq names the same broadcast at every receiver, a
  broadcast has one seq everywhere, each receiver sees seqs increasing (so
  the relative order of common messages is the same everywhere);
- no duplicates, nothing that was never sent;
- each sender's broadcasts in the group order in its send order;
- every broadcast acknowledged to its sender delivered to every receiver in
  `complete` (live ones), except in the sender's own server;
- accounting: the sender's acknowledged + refused + unconfirmed = sent
  (none pending), and refused + unconfirmed = the broadcasts it got a nack
  for (the client nacks an unconfirmed one itself); with `all_acknowledged`
  (the blocking API on a healthy group) none refused or unconfirmed.

Which broadcasts were acknowledged follows from the client's counts: acks
are cumulative and a nack for an id always comes before an ack passing it,
so the acknowledged ids are the first `stats.acknowledged` of the ids sent,
in order, without the nacked ones (refused or unconfirmed; a late ack of an
unconfirmed one changes no count).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TextIO

from servergroup.common.errors import ServergroupError
from servergroup.groups.client import (
    BroadcastReceived,
    ClientEvent,
    NackReceived,
    ServerGroupClient,
    StatusReceived,
)

ROOT: Final = Path(__file__).resolve().parents[3]
MODULE: Final = "tests.integration.groups.load"
#: The stats fields of the client library's `BroadcastStats`.
STAT_FIELDS: Final = ("sent", "acknowledged", "refused", "unconfirmed", "missed", "pending")
#: Events the client keeps while a blocking call waits: far more than a burst brings, so
#: that what arrives while a sender waits for room is logged, not discarded.
MAX_HELD_EVENTS: Final = 1 << 20
TEXT_SIZE: Final = 100
STATUS_INTERVAL: Final = 0.5
READY_TIMEOUT: Final = 60.0


# -- records --------------------------------------------------------------------------

#: A broadcast: (sender, tag, index).
Key = tuple[str, str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """One broadcast as a receiver got it."""

    seq: int  # -1: the host gave none
    tag: str
    sender: str
    index: int
    sent_at: float
    received_at: float
    source: str

    @property
    def key(self) -> Key:
        return (self.sender, self.tag, self.index)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    """One broadcast as its sender sent it: `id` is what `broadcast()` returned."""

    tag: str
    index: int
    id: int
    sent_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats:
    """The client library's `BroadcastStats`, as an app reported them."""

    sent: int = 0
    acknowledged: int = 0
    refused: int = 0
    unconfirmed: int = 0
    missed: int = 0
    pending: int = 0

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Stats:
        return cls(**{k: int(obj.get(k, 0)) for k in STAT_FIELDS})

    def minus(self, before: Stats) -> Stats:
        return Stats(**{k: getattr(self, k) - getattr(before, k) for k in STAT_FIELDS})


@dataclass
class AppLog:
    """What one app logged: its receipts (those since the last collect), and everything it sent."""

    name: str
    host: str
    receipts: list[Receipt] = field(default_factory=list)
    sends: list[Sent] = field(default_factory=list)
    #: id -> the reason of its nack: refused, or unconfirmed (the client's own nack).
    nacked: dict[int, str] = field(default_factory=dict)
    foreign: int = 0  # broadcasts received that no load app sent
    stats: Stats = field(default_factory=Stats)

    def take(self, line: str) -> None:
        """Parse one log line (the edge: text becomes records)."""
        words = line.split(" ")
        kind = words[0]
        if kind == "r":
            seq, tag, sender, index, sent_at, received_at = words[1:7]
            self.receipts.append(
                Receipt(
                    seq=int(seq),
                    tag=tag,
                    sender=sender,
                    index=int(index),
                    sent_at=float(sent_at),
                    received_at=float(received_at),
                    source=" ".join(words[7:]),
                )
            )
        elif kind == "s":
            tag, index, ident, sent_at = words[1:5]
            self.sends.append(
                Sent(tag=tag, index=int(index), id=int(ident), sent_at=float(sent_at))
            )
        elif kind == "n":
            self.nacked.setdefault(int(words[1]), " ".join(words[2:]))
        elif kind == "x":
            self.foreign += 1
        else:
            raise ValueError(f"unknown log line {line!r}")

    def acknowledged(self) -> list[Sent]:
        """The broadcasts acknowledged to this sender (see the module docstring)."""
        open_ = [s for s in sorted(self.sends, key=lambda s: s.id) if s.id not in self.nacked]
        return open_[: self.stats.acknowledged]


# -- the app, inside a server -----------------------------------------------------------


def broadcast_text(tag: str, name: str, index: int, sent_at: float, size: int) -> str:
    head = f"{tag} {name} {index} {sent_at:.6f} "
    return head + "." * max(0, size - len(head))


def _stats_json(stats: Any) -> dict[str, int]:
    return {k: int(getattr(stats, k, 0)) for k in STAT_FIELDS}


class _App:
    """The member app: one client, one log, commands on stdin (see the module docstring)."""

    def __init__(self, name: str, log: TextIO, expect: frozenset[str]) -> None:
        self.name = name
        self.log = log
        self.expect = expect
        self.client = ServerGroupClient(max_held_events=MAX_HELD_EVENTS)
        self.received: Counter[str] = Counter()
        #: Events not written out yet, each list with the time it was received at.
        self._held: list[tuple[float, list[ClientEvent]]] = []
        self._counted = 0  # of `_held`, the lists counted in `received`
        #: Broadcasts sent and not written out yet: (tag, index, id, sent_at).
        self._sent: list[tuple[str, int, int, float]] = []
        self.listed: frozenset[str] = frozenset()
        self._stdin = sys.stdin.fileno()
        os.set_blocking(self._stdin, False)
        self._pending = b""
        self.commands: list[dict[str, Any]] = []
        self.eof = False

    def emit(self, kind: str, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"kind": kind, "at": time.monotonic(), **fields}) + "\n")
        sys.stdout.flush()

    def drain(self) -> None:
        """Keep every event the client has now (received meanwhile, or waiting on the socket).

        Only the client's list and one stamp are kept: turning events into log lines
        is left to `write_out`, outside the measured path (the harness's own cost per
        receipt would otherwise count against the path it measures).
        """
        events = self.client.receive()
        if events:
            self._held.append((time.monotonic(), events))

    def count(self) -> None:
        """Count the broadcasts received per tag (cheap: no log line yet)."""
        for at_events in itertools.islice(self._held, self._counted, None):
            for event in at_events[1]:
                if isinstance(event, BroadcastReceived):
                    words = event.text.split(" ", 3)
                    if len(words) >= 4 and words[2].isdigit():
                        self.received[words[0]] += 1
        self._counted = len(self._held)

    def write_out(self) -> None:
        """Write what was received and sent since the last call to the log, then flush it."""
        self.count()
        write = self.log.write
        for at, events in self._held:
            for event in events:
                match event:
                    case BroadcastReceived(text=text, source_instance=source, seq=seq):
                        words = text.split(" ", 4)
                        seq_ = -1 if seq is None else seq
                        if len(words) >= 4 and words[2].isdigit():
                            tag, sender, idx, stamp = words[:4]
                            write(f"r {seq_} {tag} {sender} {idx} {stamp} {at:.6f} {source}\n")
                        else:
                            write(f"x {seq_} {at:.6f} {source}\n")
                    case NackReceived(reason=reason, id=ident) if ident is not None:
                        write(f"n {ident} {reason}\n")
                    case StatusReceived(servers=servers):
                        self.listed = frozenset(str(s.get("name")) for s in servers)
                    case _:
                        pass
        self._held.clear()
        self._counted = 0
        for sent_tag, index, ident, sent_at in self._sent:
            write(f"s {sent_tag} {index} {ident} {sent_at:.6f}\n")
        self._sent.clear()
        self.log.flush()

    def wait(self, timeout: float) -> None:
        """Until the client's socket or stdin is readable, or `timeout`; then drain both."""
        ready, _, _ = select.select([self.client.fileno(), self._stdin], [], [], max(0.0, timeout))
        self.drain()
        if self._stdin in ready:
            self._read_commands()

    def _read_commands(self) -> None:
        try:
            chunk = os.read(self._stdin, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self.eof = True
            return
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        self.commands += [json.loads(line) for line in lines if line.strip()]

    def until_ready(self) -> None:
        asked_at = -STATUS_INTERVAL
        while not self.expect <= self.listed:
            if time.monotonic() - asked_at >= STATUS_INTERVAL:
                self.client.request_status()
                asked_at = time.monotonic()
            self.wait(0.05)
            self.write_out()
        self.emit("ready", members=sorted(self.listed))

    def send(self, cmd: Mapping[str, Any]) -> None:
        tag, count, rate = str(cmd["tag"]), int(cmd["count"]), float(cmd.get("rate", 0))
        size = int(cmd.get("size", TEXT_SIZE))
        start_at = float(cmd.get("start_at") or time.monotonic())
        while (left := start_at - time.monotonic()) > 0:
            self.wait(left)
        first_at = time.monotonic()
        for index in range(count):
            if rate > 0:
                while (left := start_at + index / rate - time.monotonic()) > 0:
                    self.wait(left)
            sent_at = time.monotonic()
            ident = self.client.broadcast(broadcast_text(tag, self.name, index, sent_at, size))
            self._sent.append((tag, index, ident, sent_at))
            self.drain()
        last_at = time.monotonic()
        flushed = self.client.flush(float(cmd.get("flush_timeout", 30.0)))
        self.drain()
        self.write_out()
        self.emit(
            "sent",
            tag=tag,
            count=count,
            first_at=first_at,
            last_at=last_at,
            flushed=flushed,
            stats=_stats_json(self.client.stats),
        )

    def sync(self, kind: str, *, write: bool = True) -> None:
        self.drain()
        if write:
            self.write_out()
        else:
            self.count()
        self.emit(kind, received=dict(self.received), stats=_stats_json(self.client.stats))

    def run(self) -> None:
        self.until_ready()
        while True:
            while self.commands:
                cmd = self.commands.pop(0)
                what = cmd.get("cmd")
                if what == "send":
                    self.send(cmd)
                elif what == "sync":
                    self.sync("synced", write=bool(cmd.get("write", True)))
                elif what == "quit":
                    self.sync("bye")
                    return
                else:
                    self.emit("error", message=f"unknown command {cmd!r}")
            if self.eof:
                self.sync("bye")
                return
            self.wait(1.0)


def app_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    sub = parser.add_subparsers(dest="what", required=True)
    app = sub.add_parser("app", help="a member app inside a lab server")
    app.add_argument("name")
    app.add_argument("log", type=Path)
    app.add_argument("--expect", default="", help="server names the status must list first")
    args = parser.parse_args(argv)
    with args.log.open("a", buffering=1 << 20) as log:
        expect = frozenset(n for n in args.expect.split(",") if n)
        try:
            member = _App(args.name, log, expect)
            try:
                member.run()
            finally:
                member.client.close()
        except ServergroupError as exc:
            print(json.dumps({"kind": "error", "message": str(exc)}), flush=True)
            return 1
    return 0


# -- the controller, outside the servers --------------------------------------------------


class LabRun(Protocol):
    """What the controller needs of a `servergroup up` (tests.fixtures.setup.Setup, UpRun)."""

    env: dict[str, str]

    def argv(self, *args: str) -> list[str]: ...


class AppFailed(AssertionError):
    """A load app did not answer as it should; the message says which and what it printed."""


class AppHandle:
    """One app process (started with `servergroup server exec`) and what it printed."""

    def __init__(self, lab: LabRun, name: str, host: str, log_path: Path, expect: Iterable[str]):
        self.name = name
        self.host = host
        self.log_path = log_path
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr: list[str] = []
        self.log = AppLog(name=name, host=host)
        self._offset = 0
        argv = lab.argv(
            "server", "exec", name, "--", sys.executable, "-m", MODULE, "app", name,
            str(log_path), "--expect", ",".join(sorted(expect)),
        )  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            env=lab.env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(line))

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())

    def command(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next line of `kind` the app prints (others before it are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.01, left))
            except queue.Empty:
                if left <= 0:
                    raise AppFailed(
                        f"load app {self.name}: no {kind!r} within {timeout:g} s "
                        f"(exit {self.proc.poll()}); stderr: {self.stderr[-15:]}"
                    ) from None
                continue
            if line.get("kind") == kind:
                return line
            if line.get("kind") == "error":
                raise AppFailed(f"load app {self.name}: {line.get('message')}")

    def sync(self, timeout: float = 30.0, *, write: bool = True) -> dict[str, Any]:
        """Ask for the app's counts and stats; with `write`, its log is written out first."""
        self.command(cmd="sync", write=write)
        reply = self.expect("synced", timeout)
        self.log.stats = Stats.from_json(reply["stats"])
        return reply

    def read_log(self) -> None:
        """Parse the complete lines the app wrote since the last read."""
        with self.log_path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].decode().splitlines():
            self.log.take(line)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.command(cmd="quit")
            with contextlib.suppress(AppFailed):
                self.log.stats = Stats.from_json(self.expect("bye", timeout)["stats"])
        if self.proc.poll() is None:
            self.proc.kill()  # our child, not reaped yet: the PID is still its own
        # A frozen server's app dies when thawed (`servergroup down` deletes the server).
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


@dataclass(frozen=True, slots=True, kw_only=True)
class BurstDone:
    """A sender's `sent` report: when it sent, whether its flush finished, its stats after."""

    name: str
    tag: str
    count: int
    first_at: float
    last_at: float
    flushed: bool
    stats: Stats


class Load:
    """Load apps in lab servers, one per server; see the module docstring."""

    def __init__(self, apps: Mapping[str, AppHandle]) -> None:
        self.apps = dict(apps)

    @classmethod
    def start(
        cls,
        lab: LabRun,
        placement: Mapping[str, str],
        log_dir: Path,
        *,
        timeout: float = READY_TIMEOUT,
    ) -> Load:
        """One app in each server of `placement` (server -> host), every one ready."""
        log_dir.mkdir(parents=True, exist_ok=True)
        load = cls({})
        try:
            for name, host in placement.items():
                path = log_dir / f"{name}.log"
                path.write_bytes(b"")
                load.apps[name] = AppHandle(lab, name, host, path, placement)
            for app in load.apps.values():
                app.expect("ready", timeout)
        except BaseException:
            load.close()
            raise
        return load

    def burst(
        self,
        senders: Sequence[str],
        tag: str,
        count: int,
        *,
        rate: float = 0.0,
        size: int = TEXT_SIZE,
        flush_timeout: float = 30.0,
        lead: float = 0.2,
    ) -> float:
        """Make `senders` send `count` each at `rate` each (0: as fast as allowed), from now +
        `lead` on; returns that start time. `wait_sent` collects their reports.

        At a rate, sender k starts k / (rate * senders) later, so that together
        they send evenly spaced broadcasts rather than several at the same instant.
        """
        start_at = time.monotonic() + lead
        for k, name in enumerate(senders):
            self.apps[name].command(
                cmd="send",
                tag=tag,
                count=count,
                rate=rate,
                start_at=start_at + (k / (rate * len(senders)) if rate > 0 else 0.0),
                size=size,
                flush_timeout=flush_timeout,
            )
        return start_at

    def wait_sent(self, senders: Sequence[str], timeout: float) -> dict[str, BurstDone]:
        done: dict[str, BurstDone] = {}
        deadline = time.monotonic() + timeout
        for name in senders:
            line = self.apps[name].expect("sent", max(0.1, deadline - time.monotonic()))
            stats = Stats.from_json(line["stats"])
            self.apps[name].log.stats = stats
            done[name] = BurstDone(
                name=name,
                tag=str(line["tag"]),
                count=int(line["count"]),
                first_at=float(line["first_at"]),
                last_at=float(line["last_at"]),
                flushed=bool(line["flushed"]),
                stats=stats,
            )
        return done

    def received(self, names: Iterable[str], tag: str) -> dict[str, int]:
        """How many broadcasts of `tag` each app has received (asks them: `sync`)."""
        return {n: int(self.apps[n].sync(write=False)["received"].get(tag, 0)) for n in names}

    def wait_delivered(
        self,
        receivers: Mapping[str, int],
        tag: str,
        *,
        quiet: float = 2.0,
        timeout: float = 60.0,
        interval: float = 0.2,
    ) -> dict[str, int]:
        """Until each receiver has its expected count of `tag` (or more), or no count moved
        for `quiet` seconds, or `timeout`; the counts then."""
        deadline = time.monotonic() + timeout
        counts = self.received(receivers, tag)
        moved_at = time.monotonic()
        while any(counts[n] < want for n, want in receivers.items()):
            now = time.monotonic()
            if now - moved_at >= quiet or now >= deadline:
                break
            time.sleep(interval)
            latest = self.received(receivers, tag)
            if latest != counts:
                counts, moved_at = latest, time.monotonic()
        return counts

    def collect(self, names: Iterable[str] | None = None) -> dict[str, AppLog]:
        """Each app's log: receipts since the last collect (they are then forgotten here),
        every send and nack so far, the stats of its last report."""
        logs: dict[str, AppLog] = {}
        for name in self.apps if names is None else names:
            app = self.apps[name]
            app.sync()
            app.read_log()
            log = app.log
            logs[name] = AppLog(
                name=log.name,
                host=log.host,
                receipts=log.receipts,
                sends=list(log.sends),
                nacked=dict(log.nacked),
                foreign=log.foreign,
                stats=log.stats,
            )
            log.receipts = []
        return logs

    def close(self) -> None:
        for app in self.apps.values():
            app.stop()


# -- the checker -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiverCounts:
    received: int
    duplicates: int
    order_violations: int  # a seq not above the one before it
    gaps: int  # seqs skipped that another receiver saw, not from this receiver's own server
    missing_acknowledged: int  # acknowledged broadcasts it should have and did not get
    missed: int  # the client's own count (stats.missed)


@dataclass(frozen=True, slots=True, kw_only=True)
class SenderCounts:
    sent: int
    acknowledged: int
    refused: int
    unconfirmed: int
    pending: int
    nacks_seen: int  # broadcasts with a nack: refused, or unconfirmed (the client says so)


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    problems: tuple[str, ...]
    receivers: Mapping[str, ReceiverCounts]
    senders: Mapping[str, SenderCounts]
    broadcasts: int  # distinct broadcasts delivered anywhere

    @property
    def ok(self) -> bool:
        return not self.problems


class _Problems:
    """Sentences, at most `limit` of each kind (with how many more there were)."""

    def __init__(self, limit: int = 5) -> None:
        self.limit = limit
        self.by_kind: defaultdict[str, list[str]] = defaultdict(list)
        self.counts: Counter[str] = Counter()

    def add(self, kind: str, sentence: str) -> None:
        self.counts[kind] += 1
        if len(self.by_kind[kind]) < self.limit:
            self.by_kind[kind].append(sentence)

    def all(self) -> tuple[str, ...]:
        out: list[str] = []
        for kind, sentences in self.by_kind.items():
            out += sentences
            if self.counts[kind] > len(sentences):
                out.append(f"... and {self.counts[kind] - len(sentences)} more {kind}")
        return tuple(out)


def label(key: Key) -> str:
    """`a#burst/12`: broadcast 12 of burst `burst` from app `a`."""
    return f"{key[0]}#{key[1]}/{key[2]}"


def check(
    logs: Mapping[str, AppLog],
    *,
    complete: Collection[str] | None = None,
    tags: Collection[str] | None = None,
    all_acknowledged: bool = False,
) -> Verdict:
    """What is wrong with what the apps logged (see the module docstring).

    `complete`: the receivers that must have every acknowledged broadcast
    (default: every app); `tags`: the bursts whose acknowledged broadcasts
    count (default: all); `all_acknowledged`: every broadcast sent must be
    acknowledged (none refused, none unconfirmed).
    """
    p = _Problems()
    complete = set(logs) if complete is None else set(complete)
    sent = {(name, s.tag, s.index) for name, log in logs.items() for s in log.sends}
    by_seq: dict[int, Key] = {}
    seq_of: dict[Key, int] = {}
    # The group order as every receiver saw it: one broadcast per seq, one seq per broadcast.
    for name, log in logs.items():
        for r in log.receipts:
            if r.seq < 0:
                p.add("without seq", f"{name} got {label(r.key)} without a seq")
                continue
            known = by_seq.setdefault(r.seq, r.key)
            if known != r.key:
                p.add(
                    "order disagreements",
                    f"seq {r.seq} is {label(known)} at one receiver, {label(r.key)} at {name}",
                )
            seq = seq_of.setdefault(r.key, r.seq)
            if seq != r.seq:
                p.add(
                    "order disagreements",
                    f"{label(r.key)} has seq {seq} at one receiver, {r.seq} at {name}",
                )
            if r.key not in sent:
                p.add("unknown broadcasts", f"{name} got {label(r.key)}, never sent")
    # Per receiver: duplicates, seq order, each sender's order, gaps.
    counts: dict[str, tuple[int, int, int]] = {}
    for name, log in logs.items():
        seen = Counter(r.key for r in log.receipts)
        for key, c in seen.items():
            if c > 1:
                p.add("duplicates", f"{name} got {label(key)} {c} times")
        seqs = [r.seq for r in log.receipts if r.seq >= 0]
        order = sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
        if order:
            p.add("order violations", f"{name} saw the seq go down or repeat {order} times")
        last: dict[tuple[str, str], int] = {}
        for r in log.receipts:
            before = last.get((r.sender, r.tag), -1)
            if r.index <= before:
                p.add(
                    "sender order violations",
                    f"{name} got {label(r.key)} after {label((r.sender, r.tag, before))}",
                )
            last[(r.sender, r.tag)] = max(before, r.index)
        gaps = 0
        if seqs:
            got, low, high = set(seqs), min(seqs), max(seqs)
            gaps = sum(
                1
                for seq, key in by_seq.items()
                if low < seq < high and seq not in got and key[0] != name
            )
        counts[name] = (sum(c - 1 for c in seen.values()), order, gaps)
    # Each sender's broadcasts in the group order in its send order.
    for name, log in logs.items():
        in_send_order = [
            seq_of[(name, s.tag, s.index)] for s in log.sends if (name, s.tag, s.index) in seq_of
        ]
        inversions = sum(1 for a, b in itertools.pairwise(in_send_order) if b <= a)
        if inversions:
            p.add(
                "sender order violations",
                f"{name}'s broadcasts are not in the group order in its send order "
                f"({inversions} inversions)",
            )
    # Accounting at each sender; every acknowledged broadcast at every complete receiver.
    delivered = {name: {r.key for r in log.receipts} for name, log in logs.items()}
    missing: Counter[str] = Counter()
    senders: dict[str, SenderCounts] = {}
    for name, log in logs.items():
        if not log.sends:
            continue
        st = log.stats
        senders[name] = SenderCounts(
            sent=st.sent,
            acknowledged=st.acknowledged,
            refused=st.refused,
            unconfirmed=st.unconfirmed,
            pending=st.pending,
            nacks_seen=len(log.nacked),
        )
        if st.sent != len(log.sends):
            p.add("accounting", f"{name}'s client counts {st.sent} sent, it sent {len(log.sends)}")
        if st.acknowledged + st.refused + st.unconfirmed != st.sent:
            p.add(
                "accounting",
                f"{name}: {st.acknowledged} acknowledged + {st.refused} refused + "
                f"{st.unconfirmed} unconfirmed is not the {st.sent} it sent "
                f"({st.pending} pending)",
            )
        if st.refused + st.unconfirmed != len(log.nacked):
            p.add(
                "accounting",
                f"{name}: {st.refused} refused + {st.unconfirmed} unconfirmed, but "
                f"{len(log.nacked)} broadcasts nacked",
            )
        if all_acknowledged and (st.refused or st.unconfirmed or st.acknowledged != st.sent):
            p.add(
                "accounting",
                f"{name}: {st.acknowledged} of {st.sent} acknowledged, {st.refused} refused, "
                f"{st.unconfirmed} unconfirmed (all must be acknowledged)",
            )
        for s in log.acknowledged():
            if tags is not None and s.tag not in tags:
                continue
            key = (name, s.tag, s.index)
            for receiver in sorted(complete - {name}):
                if key not in delivered[receiver]:
                    missing[receiver] += 1
                    p.add(
                        "acknowledged broadcasts missing",
                        f"{receiver} never got {label(key)}, acknowledged to {name}",
                    )
    # A broadcast that reached one complete receiver reaches every one (all or nothing).
    reached: set[Key] = set().union(*(delivered[n] for n in complete))
    for key in sorted(reached):
        if tags is not None and key[1] not in tags:
            continue
        lacking = sorted(n for n in complete if n != key[0] and key not in delivered[n])
        if lacking:
            p.add(
                "partial deliveries",
                f"{label(key)} reached some receivers but not {', '.join(lacking)}",
            )
    receivers = {
        name: ReceiverCounts(
            received=len(log.receipts),
            duplicates=counts[name][0],
            order_violations=counts[name][1],
            gaps=counts[name][2],
            missing_acknowledged=missing[name],
            missed=log.stats.missed,
        )
        for name, log in logs.items()
    }
    return Verdict(problems=p.all(), receivers=receivers, senders=senders, broadcasts=len(seq_of))


def latencies(logs: Mapping[str, AppLog], *, tags: Collection[str] | None = None) -> list[float]:
    """Receive stamp - send stamp of every receipt (of `tags`), in seconds."""
    return [
        r.received_at - r.sent_at
        for log in logs.values()
        for r in log.receipts
        if tags is None or r.tag in tags
    ]


def expected_counts(senders: Mapping[str, int], receivers: Iterable[str]) -> dict[str, int]:
    """How many broadcasts each receiver should get when `senders` (name -> count) send."""
    return {r: sum(c for s, c in senders.items() if s != r) for r in receivers}


def main(argv: Sequence[str] | None = None) -> int:
    return app_main(argv)


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "AppFailed",
    "AppHandle",
    "AppLog",
    "BurstDone",
    "Key",
    "Load",
    "Receipt",
    "ReceiverCounts",
    "SenderCounts",
    "Sent",
    "Stats",
    "Verdict",
    "broadcast_text",
    "check",
    "expected_counts",
    "label",
    "latencies",
]
