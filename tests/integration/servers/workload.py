"""Concurrent lifecycle operations on one registry, and the checks on the store's history.

Issue 11, part 1: several clients issue random lifecycle operations (create,
delete, pause, unpause, stop, start, reboot, live and cold migration) on a
fixed set of server names in an affinity and an anti-affinity group, so that
creates and deletes of one name race, as do placements in one group. Used by
tests/integration/servers/test_concurrent_operations.py (memory store and real
etcd) and by bench/operations.py.

- `run_client` is one client: `count` operations, one at a time (mostly
  what an operator would ask of the server as just read, sometimes any kind;
  mostly on two hot names per group, so that requests overlap), each
  written as an `OpRecord` (kind, server, wall times, the store revisions
  before and after it, the outcome, the spec it wrote and at which revision).
  Run as a module it is one client process over `EtcdCoordinator`: it prints
  `ready`, waits for a line on stdin, then writes one JSON line per operation.
- `check_history` replays every change under the prefix, from a revision at
  which no server existed yet, and returns what is wrong (one sentence each):
  a success not reflected by a status that settles it, a reboot count that
  differs from the reboots whose spec write happened, a deleted server that
  comes back, a group whose hard policy is broken at some revision.

The records an operation wrote are learnt from `RecordingRegistry`, a
`Registry` that remembers the spec writes it made (the real writes, to the
real store: it only takes note of their revisions).
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import random
import re
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from servergroup.common.errors import ServergroupError
from servergroup.config import CoordinationConfig, parse_endpoints
from servergroup.coordination import Coordinator, EtcdCoordinator, EventKind, Guard, WatchEvent
from servergroup.coordination.types import KeyValue
from servergroup.servers.model import (
    REACHED,
    Desired,
    Policy,
    RegistrySnapshot,
    Server,
    ServerSpec,
    ServerStatus,
    decode_spec,
    decode_status,
    encode_record,
)
from servergroup.servers.operations import OperationFailed, Operations, OperationTimeout
from servergroup.servers.registry import HOSTS, SERVERS, Registry


class Kind(enum.Enum):
    """One kind of lifecycle operation."""

    CREATE = "create"
    DELETE = "delete"
    PAUSE = "pause"
    UNPAUSE = "unpause"
    STOP = "stop"
    START = "start"
    REBOOT = "reboot"
    LIVE_MIGRATE = "live-migrate"
    COLD_MIGRATE = "cold-migrate"


#: How often each kind is drawn when any kind is: creates more often than
#: deletes, so that most names exist most of the time.
WEIGHTS: Mapping[Kind, int] = {
    Kind.CREATE: 3,
    Kind.DELETE: 2,
    Kind.PAUSE: 1,
    Kind.UNPAUSE: 1,
    Kind.STOP: 1,
    Kind.START: 1,
    Kind.REBOOT: 2,
    Kind.LIVE_MIGRATE: 1,
    Kind.COLD_MIGRATE: 1,
}

#: What an operator would ask of a server by its desired state (`_kind`).
SENSIBLE: Mapping[Desired, tuple[Kind, ...]] = {
    Desired.ACTIVE: (
        Kind.PAUSE,
        Kind.STOP,
        Kind.REBOOT,
        Kind.REBOOT,
        Kind.DELETE,
        Kind.LIVE_MIGRATE,
        Kind.COLD_MIGRATE,
    ),
    Desired.PAUSED: (Kind.UNPAUSE, Kind.DELETE, Kind.LIVE_MIGRATE),
    Desired.STOPPED: (Kind.START, Kind.DELETE, Kind.COLD_MIGRATE),
}
#: How often a client draws any kind (by `WEIGHTS`) instead of a sensible one.
ANY_KIND = 0.2
#: How much more often a hot name is drawn than another.
HOT = 4

#: The desired state an operation that wrote nothing (it was already asked) waits for.
_TARGET: Mapping[Kind, Desired] = {
    Kind.PAUSE: Desired.PAUSED,
    Kind.UNPAUSE: Desired.ACTIVE,
    Kind.STOP: Desired.STOPPED,
    Kind.START: Desired.ACTIVE,
}

AFFINITY_GROUP = "aff"
ANTI_AFFINITY_GROUP = "anti"


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """The groups (and their policies), the server names (and their group), the hosts."""

    groups: Mapping[str, Policy]
    servers: Mapping[str, str]
    hosts: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "groups": {g: p.value for g, p in self.groups.items()},
                "servers": dict(self.servers),
                "hosts": list(self.hosts),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Layout:
        raw = json.loads(text)
        return cls(
            groups={g: Policy(p) for g, p in raw["groups"].items()},
            servers=dict(raw["servers"]),
            hosts=tuple(raw["hosts"]),
        )


def two_groups(names: Sequence[str], hosts: Sequence[str]) -> Layout:
    """The first half of `names` in an affinity group, the rest in an anti-affinity group."""
    half = len(names) // 2
    return Layout(
        groups={AFFINITY_GROUP: Policy.AFFINITY, ANTI_AFFINITY_GROUP: Policy.ANTI_AFFINITY},
        servers={
            n: AFFINITY_GROUP if i < half else ANTI_AFFINITY_GROUP for i, n in enumerate(names)
        },
        hosts=tuple(hosts),
    )


def client_argv(
    *,
    endpoints: str,
    prefix: str,
    layout: Layout,
    client: int,
    count: int,
    seed: int,
    timeout: float,
    think: float,
    out: Path,
) -> list[str]:
    """The command of one client process (run it from the repository's root)."""
    return [
        sys.executable,
        "-m",
        "tests.integration.servers.workload",
        f"--endpoints={endpoints}",
        f"--prefix={prefix}",
        f"--layout={layout.to_json()}",
        f"--client={client}",
        f"--count={count}",
        f"--seed={seed}",
        f"--timeout={timeout}",
        f"--think={think}",
        f"--out={out}",
    ]


def split(total: int, clients: int) -> list[int]:
    """`total` operations over `clients` as evenly as possible."""
    return [total // clients + (1 if i < total % clients else 0) for i in range(clients)]


class RecordingRegistry(Registry):
    """A `Registry` that notes the spec writes it made (revision and spec), in order."""

    def __init__(self, coordinator: Coordinator) -> None:
        super().__init__(coordinator)
        self.writes: list[tuple[ServerSpec, int]] = []

    async def put_spec(self, spec: ServerSpec, *, if_mod_revision: int | None = None) -> int:
        revision = await super().put_spec(spec, if_mod_revision=if_mod_revision)
        self.writes.append((spec, revision))
        return revision

    async def place(
        self,
        group: KeyValue,
        spec: ServerSpec,
        *,
        spec_revision: int,
        status: ServerStatus | None = None,
        status_revision: int = 0,
        guard: Guard | None = None,
    ) -> int:
        revision = await super().place(
            group,
            spec,
            spec_revision=spec_revision,
            status=status,
            status_revision=status_revision,
            guard=guard,
        )
        self.writes.append((spec, revision))
        return revision


@dataclass(frozen=True, slots=True, kw_only=True)
class OpRecord:
    """One operation as its client saw it.

    `outcome` is "ok" or the exception's class name; `written_revision` the
    revision of the spec write the operation made (0: none), and `written`
    that spec; `reported_revision` what the error said (`written_revision`).
    """

    client: int
    seq: int
    kind: Kind
    server: str
    target: str | None
    began_at: float  # wall time
    ended_at: float
    begin_revision: int  # the store's revision read just before the operation
    done_revision: int  # ... and just after it returned
    outcome: str
    message: str
    written_revision: int
    written: ServerSpec | None
    reported_revision: int
    conflicts: int

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def latency(self) -> float:
        return self.ended_at - self.began_at

    def to_json(self) -> str:
        return json.dumps(
            {
                "client": self.client,
                "seq": self.seq,
                "kind": self.kind.value,
                "server": self.server,
                "target": self.target,
                "began_at": self.began_at,
                "ended_at": self.ended_at,
                "begin_revision": self.begin_revision,
                "done_revision": self.done_revision,
                "outcome": self.outcome,
                "message": self.message,
                "written_revision": self.written_revision,
                "written": encode_record(self.written).decode() if self.written else None,
                "reported_revision": self.reported_revision,
                "conflicts": self.conflicts,
            }
        )

    @classmethod
    def from_json(cls, line: str) -> OpRecord:
        raw = json.loads(line)
        written = raw["written"]
        return cls(
            client=raw["client"],
            seq=raw["seq"],
            kind=Kind(raw["kind"]),
            server=raw["server"],
            target=raw["target"],
            began_at=raw["began_at"],
            ended_at=raw["ended_at"],
            begin_revision=raw["begin_revision"],
            done_revision=raw["done_revision"],
            outcome=raw["outcome"],
            message=raw["message"],
            written_revision=raw["written_revision"],
            written=decode_spec(written.encode()) if written else None,
            reported_revision=raw["reported_revision"],
            conflicts=raw["conflicts"],
        )


async def _store_revision(coordinator: Coordinator) -> int:
    return (await coordinator.get_prefix(HOSTS)).revision


async def run_client(
    *,
    client: int,
    registry: RecordingRegistry,
    layout: Layout,
    count: int,
    seed: int,
    timeout: float,
    emit: Callable[[OpRecord], None],
    think: float = 0.0,
) -> None:
    """`count` random operations, one at a time; each is handed to `emit` when it ends.

    Before each, the client waits a random time up to `think` seconds (as an
    operator would; 0: none, the most pressure).
    """
    rng = random.Random(seed)
    ops = Operations(registry, timeout=timeout)
    names = list(layout.servers)
    # Two hot names per group draw most operations: requests on one server overlap.
    heat = [HOT if _hot(layout, n) else 1 for n in names]
    for seq in range(count):
        if think:
            await asyncio.sleep(rng.uniform(0, think))
        name = rng.choices(names, heat)[0]
        kind = await _kind(registry, layout, name, rng)
        target = None
        if kind in (Kind.LIVE_MIGRATE, Kind.COLD_MIGRATE):
            target = await _migration_target(registry, layout, name, rng)
        conflicts_before = ops.conflicts
        writes_before = len(registry.writes)
        begin_revision = await _store_revision(registry.coordinator)
        began_at = time.time()
        outcome, message, reported = "ok", "", 0
        try:
            await _perform(ops, kind, name, layout.servers[name], target)
        except ServergroupError as exc:
            outcome, message = type(exc).__name__, str(exc)
            if isinstance(exc, OperationFailed | OperationTimeout):
                reported = exc.written_revision
        except Exception as exc:  # recorded: the checks fail on it
            outcome, message = f"unexpected {type(exc).__name__}", str(exc)
        ended_at = time.time()
        done_revision = await _store_revision(registry.coordinator)
        writes = registry.writes[writes_before:]
        spec, revision = writes[-1] if writes else (None, 0)
        emit(
            OpRecord(
                client=client,
                seq=seq,
                kind=kind,
                server=name,
                target=target,
                began_at=began_at,
                ended_at=ended_at,
                begin_revision=begin_revision,
                done_revision=done_revision,
                outcome=outcome,
                message=message,
                written_revision=revision,
                written=spec,
                reported_revision=reported,
                conflicts=ops.conflicts - conflicts_before,
            )
        )


def _hot(layout: Layout, name: str) -> bool:
    group = layout.servers[name]
    return name in [n for n in layout.servers if layout.servers[n] == group][:2]


async def _kind(registry: Registry, layout: Layout, name: str, rng: random.Random) -> Kind:
    """Mostly what an operator would ask of the server as last read; else any kind.

    The read is a moment old when the request is made: other clients race it.
    A move is asked only of a built server that has somewhere to go (`_free`).
    Any kind (`WEIGHTS`) one time in `1 / ANY_KIND`, so refusals are exercised.
    """
    if rng.random() < ANY_KIND:
        kinds = list(WEIGHTS)
        return rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0]
    snap = await registry.snapshot()
    server = snap.servers.get(name)
    if server is None or server.spec.desired is Desired.DELETED:
        return Kind.CREATE
    options = SENSIBLE[server.spec.desired]
    if server.status is None or not _free(snap, layout, name):
        options = tuple(k for k in options if k not in (Kind.LIVE_MIGRATE, Kind.COLD_MIGRATE))
    return rng.choice(options)


def _free(snap: RegistrySnapshot, layout: Layout, name: str) -> list[str]:
    """The hosts `name` may move to by its group's policy, as `snap` has it."""
    group = layout.servers[name]
    me = snap.servers.get(name)
    here = {me.host, me.spec.host} if me is not None else set()
    others = [s for s in snap.members(group) if s.name != name]
    if layout.groups[group] is Policy.AFFINITY and others:
        return []  # its group lives on one host
    used = {s.host for s in others} | {s.spec.host for s in others}
    return [h for h in layout.hosts if h not in used | here]


async def _migration_target(
    registry: Registry, layout: Layout, name: str, rng: random.Random
) -> str:
    """A host to move `name` to: mostly one its group's policy allows, as an operator would pick.

    Any host one time in four, so that refusals are exercised too.
    """
    if rng.random() < 0.25:
        return rng.choice(layout.hosts)
    free = _free(await registry.snapshot(), layout, name)
    return rng.choice(free or list(layout.hosts))


async def _perform(ops: Operations, kind: Kind, name: str, group: str, target: str | None) -> None:
    match kind:
        case Kind.CREATE:
            await ops.create_server(name, group)
        case Kind.DELETE:
            await ops.delete(name)
        case Kind.PAUSE:
            await ops.pause(name)
        case Kind.UNPAUSE:
            await ops.unpause(name)
        case Kind.STOP:
            await ops.stop(name)
        case Kind.START:
            await ops.start(name)
        case Kind.REBOOT:
            await ops.reboot(name)
        case Kind.LIVE_MIGRATE | Kind.COLD_MIGRATE:
            assert target is not None
            await ops.migrate(name, target, live=kind is Kind.LIVE_MIGRATE)


# -- the history -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Moment:
    """One server's records as of `revision` (after every change at that revision)."""

    revision: int
    spec: ServerSpec | None
    status: ServerStatus | None


@dataclass
class Replay:
    """The servers' records, revision by revision, and what went wrong on the way."""

    timelines: dict[str, list[Moment]] = field(default_factory=lambda: defaultdict(list))
    last_spec: dict[str, ServerSpec] = field(default_factory=dict)  # uuid -> its latest spec
    reboots_written: Counter[str] = field(default_factory=Counter)  # uuid -> increments seen
    revisions: int = 0
    problems: list[str] = field(default_factory=list)

    def between(self, name: str, first: int, last: int) -> list[Moment]:
        """The records of `name` in effect at `first`, and every change up to `last`."""
        line = self.timelines.get(name, [])
        before = [m for m in line if m.revision <= first]
        start = before[-1:] or [Moment(revision=0, spec=None, status=None)]
        return start + [m for m in line if first < m.revision <= last]


async def store_revision(coordinator: Coordinator) -> int:
    return (await coordinator.get_prefix(HOSTS)).revision


async def read_history(
    coordinator: Coordinator, start: int, last: int, *, timeout: float = 60.0
) -> list[WatchEvent]:
    """Every change after revision `start` up to `last`, read back with a watch."""
    events: list[WatchEvent] = []
    if last <= start:
        return events
    watch = await coordinator.watch("", start_revision=start + 1)
    try:
        async with asyncio.timeout(timeout):
            async for event in watch:
                events.append(event)
                if event.revision >= last:
                    break
    finally:
        await watch.close()
    return events


def replay(layout: Layout, events: Sequence[WatchEvent]) -> Replay:
    """Apply the changes under `servers/` in order; check the rules that hold at every revision.

    `events` must start where no server existed yet.
    """
    out = Replay()
    specs: dict[str, ServerSpec] = {}
    statuses: dict[str, ServerStatus] = {}
    asked_deleted: set[str] = set()  # uuids whose spec asked for deletion
    forgotten: set[str] = set()  # uuids whose records were removed
    index = 0
    servers = [e for e in events if e.key.startswith(SERVERS)]
    while index < len(servers):
        revision = servers[index].revision
        touched: set[str] = set()
        while index < len(servers) and servers[index].revision == revision:
            event = servers[index]
            index += 1
            name, _, part = event.key[len(SERVERS) :].partition("/")
            touched.add(name)
            if part == "spec":
                if event.kind is EventKind.DELETE:
                    gone = specs.pop(name, None)
                    if gone is not None:
                        forgotten.add(gone.uuid)
                    continue
                spec = decode_spec(event.value)
                _check_spec(out, revision, spec, asked_deleted, forgotten)
                specs[name] = spec
            elif part == "status":
                if event.kind is EventKind.DELETE:
                    statuses.pop(name, None)
                else:
                    statuses[name] = decode_status(event.value)
        for name in sorted(touched):
            out.timelines[name].append(
                Moment(revision=revision, spec=specs.get(name), status=statuses.get(name))
            )
        _check_policies(out, layout, revision, specs)
        out.revisions += 1
    return out


def _check_spec(
    out: Replay,
    revision: int,
    spec: ServerSpec,
    asked_deleted: set[str],
    forgotten: set[str],
) -> None:
    uuid = spec.uuid
    if uuid in forgotten:
        out.problems.append(
            f"revision {revision}: server {spec.name} ({uuid}) came back after its records "
            "were removed"
        )
    if uuid in asked_deleted and spec.desired is not Desired.DELETED:
        out.problems.append(
            f"revision {revision}: server {spec.name} ({uuid}) was asked to be deleted, then "
            f"its spec asked for {spec.desired.value} again"
        )
    if spec.desired is Desired.DELETED:
        asked_deleted.add(uuid)
    previous = out.last_spec.get(uuid)
    if previous is not None and spec.reboot_count > previous.reboot_count:
        out.reboots_written[uuid] += spec.reboot_count - previous.reboot_count
    if previous is not None and spec.reboot_count < previous.reboot_count:
        out.problems.append(
            f"revision {revision}: server {spec.name} ({uuid}) reboot count went back from "
            f"{previous.reboot_count} to {spec.reboot_count} (a lost update)"
        )
    out.last_spec[uuid] = spec


def _check_policies(
    out: Replay, layout: Layout, revision: int, specs: Mapping[str, ServerSpec]
) -> None:
    placed: dict[str, list[ServerSpec]] = defaultdict(list)
    for spec in specs.values():
        if spec.desired is not Desired.DELETED:
            placed[spec.group].append(spec)
    for group, members in placed.items():
        policy = layout.groups.get(group)
        hosts = Counter(s.host for s in members)
        where = ", ".join(f"{s.name} on {s.host}" for s in sorted(members, key=lambda s: s.name))
        if policy is Policy.ANTI_AFFINITY and any(n > 1 for n in hosts.values()):
            out.problems.append(f"revision {revision}: anti-affinity group {group} broken: {where}")
        if policy is Policy.AFFINITY and len(hosts) > 1:
            out.problems.append(f"revision {revision}: affinity group {group} broken: {where}")


def _reflected(record: OpRecord, history: Replay) -> str | None:
    """Why a successful operation is not reflected in the history (None: it is)."""
    ours = record.written
    first = record.written_revision if ours is not None else record.begin_revision
    moments = history.between(record.server, first, record.done_revision)
    if record.kind is Kind.DELETE:
        if any(m.spec is None or (ours is not None and m.spec.uuid != ours.uuid) for m in moments):
            return None
        return "its records were not removed before it returned"
    if ours is None:
        target = _TARGET.get(record.kind)
        if target is None:
            return "it reported success without writing a spec"
        # It was asked already; the wait ends once a status shows that state
        # (a later request may have changed the spec meanwhile).
        for m in moments:
            if m.spec is not None and m.status is not None and m.status.state is REACHED[target]:
                return None
        return f"no status showed it {target.value} before it returned"
    for m in moments:
        if m.spec is None or m.spec.uuid != ours.uuid or m.status is None:
            continue
        if Server(spec=ours, status=m.status).settled():
            return None
    return f"no status settled its spec (written at revision {record.written_revision})"


def check_history(
    layout: Layout, events: Sequence[WatchEvent], records: Sequence[OpRecord]
) -> tuple[list[str], Replay]:
    """Everything wrong with this run (one sentence each), and the replayed history."""
    history = replay(layout, events)
    problems = list(history.problems)
    acknowledged: Counter[str] = Counter()
    for r in records:
        what = f"{r.kind.value} {r.server} (client {r.client}, #{r.seq})"
        if r.outcome.startswith("unexpected"):
            problems.append(f"{what} raised {r.outcome}: {r.message}")
        if r.outcome == "OperationTimeout":
            problems.append(f"{what} timed out: {r.message}")
        if r.reported_revision and r.reported_revision != r.written_revision:
            problems.append(
                f"{what} reported its write at revision {r.reported_revision}, but it wrote at "
                f"{r.written_revision}"
            )
        if not r.ok and r.written_revision and not r.reported_revision:
            problems.append(
                f"{what} failed with {r.outcome} ({r.message}) without saying that its spec "
                f"was written (at revision {r.written_revision})"
            )
        if r.ok:
            why = _reflected(r, history)
            if why is not None:
                problems.append(f"{what} succeeded, but {why}")
        if r.kind is Kind.REBOOT and r.written is not None:
            acknowledged[r.written.uuid] += 1
    for uuid, spec in sorted(history.last_spec.items()):
        if spec.reboot_count != acknowledged[uuid]:
            problems.append(
                f"server {spec.name} ({uuid}): its spec counts {spec.reboot_count} reboots, "
                f"{acknowledged[uuid]} reboot requests were written"
            )
    for uuid in sorted(set(acknowledged) - set(history.last_spec)):
        problems.append(f"reboots were written for {uuid}, which the history never shows")
    return problems, history


# -- the summary -----------------------------------------------------------------------


def reason(record: OpRecord, layout: Layout) -> str:
    """The outcome with names, hosts and numbers taken out, to count failures by reason."""
    if record.ok:
        return "ok"
    text = record.message
    for name in sorted(layout.servers, key=len, reverse=True):
        text = text.replace(name, "S")
    for host in layout.hosts:
        text = re.sub(rf"\b{re.escape(host)}\b", "H", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return f"{record.outcome}: {text}"


def summarize(records: Sequence[OpRecord], layout: Layout) -> dict[str, object]:
    """Counts, rate, conflicts and median latency per kind, JSON-ready."""
    began = min(r.began_at for r in records)
    ended = max(r.ended_at for r in records)
    elapsed = max(ended - began, 1e-9)
    per_kind: dict[str, dict[str, object]] = {}
    for kind in Kind:
        mine = [r for r in records if r.kind is kind]
        ok = [r.latency for r in mine if r.ok]
        per_kind[kind.value] = {
            "n": len(mine),
            "ok": len(ok),
            "p50_ok_s": round(statistics.median(ok), 3) if ok else None,
            "p50_all_s": round(statistics.median([r.latency for r in mine]), 3) if mine else None,
        }
    return {
        "operations": len(records),
        "clients": len({r.client for r in records}),
        "ok": sum(r.ok for r in records),
        "failed_by_reason": dict(Counter(reason(r, layout) for r in records if not r.ok)),
        "conflicts_retried": sum(r.conflicts for r in records),
        "elapsed_s": round(elapsed, 3),
        "ops_per_s": round(len(records) / elapsed, 2),
        "ok_per_s": round(sum(r.ok for r in records) / elapsed, 2),
        "per_kind": per_kind,
    }


def summary_text(summary: Mapping[str, object]) -> str:
    lines = [
        f"{summary['operations']} operations by {summary['clients']} clients in "
        f"{summary['elapsed_s']} s: {summary['ops_per_s']} ops/s, {summary['ok']} ok, "
        f"{summary['conflicts_retried']} conflicts retried",
    ]
    failed = summary["failed_by_reason"]
    assert isinstance(failed, dict)
    for text, n in sorted(failed.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {n:4d} x {text}")
    per_kind = summary["per_kind"]
    assert isinstance(per_kind, dict)
    for kind, figures in per_kind.items():
        lines.append(
            f"  {kind:13s} n={figures['n']:3d} ok={figures['ok']:3d} p50 ok={figures['p50_ok_s']} s"
        )
    return "\n".join(lines)


# -- one client process ----------------------------------------------------------------


async def _main(args: argparse.Namespace, out: TextIO) -> None:
    layout = Layout.from_json(args.layout)
    coordinator = EtcdCoordinator(
        parse_endpoints(args.endpoints), prefix=args.prefix, config=CoordinationConfig()
    )
    try:
        registry = RecordingRegistry(coordinator)
        await _store_revision(coordinator)  # connected before the start
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        def emit(record: OpRecord) -> None:
            out.write(record.to_json() + "\n")
            out.flush()

        await run_client(
            client=args.client,
            registry=registry,
            layout=layout,
            count=args.count,
            seed=args.seed,
            timeout=args.timeout,
            emit=emit,
            think=args.think,
        )
    finally:
        await coordinator.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one client of the concurrent-operations workload")
    parser.add_argument("--endpoints", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--layout", required=True, help="Layout as JSON")
    parser.add_argument("--client", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--think", type=float, default=0.0, help="most seconds between ops")
    parser.add_argument("--out", required=True, help="one JSON line per operation")
    args = parser.parse_args(argv)
    with open(args.out, "w") as out:
        asyncio.run(_main(args, out))


if __name__ == "__main__":
    main()
