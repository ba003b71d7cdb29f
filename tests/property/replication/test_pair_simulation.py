"""The two pure machines and the output buffer wired together, under random faults.

A discrete-event simulation on scripted time: a primary serving a counter
service whose state is pages of memory, a backup, two links between them
(the checkpoint stream and the heartbeat channel, each FIFO with random
latency), a compare-and-set "pair key" standing for etcd, and faults drawn
by hypothesis: a crash of the primary (at a random moment or at one of the
failure points s s2 r r2 c c2), a crash of the backup, a permanent cut
between them (split brain), and stream breaks. It checks what the issue
requires of the real daemons:

- the backup applies only complete checkpoints: after applying epoch n its
  memory equals the primary's at the capture of n;
- a reply leaves the primary while protected only for an epoch the backup
  has applied;
- after a takeover, every reply any client received is reflected in the
  state the backup took over from (no acknowledged write lost);
- never do both release output: once the backup is active, the primary
  releases nothing;
- without faults, epochs keep committing (so the checks are not vacuous).
"""

from __future__ import annotations

import heapq
import itertools
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servergroup.replication import backup_machine as bm
from servergroup.replication import primary_machine as pm
from servergroup.replication.hooks import FailurePoint
from servergroup.replication.output import OutputBuffer
from servergroup.replication.protocol import (
    Ack,
    EpochBegin,
    Heartbeat,
    Hello,
    Message,
    Pages,
    Welcome,
    epoch_messages,
)

pytestmark = pytest.mark.timeout(120)

PAGE = 16
PAGES = 6
LAYOUT = (("counters", PAGE * PAGES),)
END = 6.0
_COUNTER = struct.Struct("!Q")


@dataclass(frozen=True)
class Faults:
    seed: int
    interval: float
    backup_timeout: float
    primary_crash_at: float | None
    fail_point: FailurePoint | None
    backup_crash_at: float | None
    cut_at: float | None
    stream_breaks: tuple[float, ...]


faults = st.builds(
    Faults,
    seed=st.integers(0, 2**32),
    interval=st.sampled_from([0.02, 0.05, 0.2]),
    backup_timeout=st.sampled_from([0.8, 1.5]),
    primary_crash_at=st.none() | st.floats(0.1, 5.0),
    fail_point=st.none() | st.sampled_from(list(FailurePoint)),
    backup_crash_at=st.none() | st.floats(0.1, 5.0),
    cut_at=st.none() | st.floats(0.1, 5.0),
    stream_breaks=st.lists(st.floats(0.1, 5.0), max_size=3).map(tuple),
)


@dataclass
class World:
    faults: Faults
    rng: random.Random
    now: float = 0.0
    queue: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    pair_generation: int = 1
    cut: bool = False
    #: Per link, the time its last message arrives (FIFO).
    link_tail: dict[str, float] = field(default_factory=dict)
    #: Bumped on each stream break, so messages of a broken stream are lost.
    stream_id: int = 0

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.queue, (when, next(self.seq), action))

    def send(self, link: str, deliver: Callable[[], None]) -> None:
        if self.cut:
            return
        arrive = max(self.link_tail.get(link, 0.0), self.now + self.rng.uniform(0.001, 0.05))
        self.link_tail[link] = arrive
        stream = self.stream_id

        def arrival() -> None:
            if self.cut or (link.startswith("stream") and stream != self.stream_id):
                return
            deliver()

        self.at(arrive, arrival)

    def cas(self, previous: int, generation: int) -> bool:
        if self.pair_generation != previous:
            return False
        self.pair_generation = generation
        return True

    def run(self) -> None:
        while self.queue:
            when, _, action = heapq.heappop(self.queue)
            if when > END:
                return
            self.now = when
            action()


def counter(memory: bytes | bytearray, page: int) -> int:
    value: int = _COUNTER.unpack_from(memory, page * PAGE)[0]
    return value


class Primary:
    def __init__(self, world: World, backup: Backup) -> None:
        self.world = world
        self.backup = backup
        self.machine = pm.PrimaryMachine(
            pm.PrimaryConfig(
                interval=world.faults.interval,
                heartbeat_interval=0.1,
                backup_timeout=world.faults.backup_timeout,
            ),
            generation=1,
            now=0.0,
        )
        self.output = OutputBuffer(limit=1 << 20)
        self.memory = bytearray(PAGE * PAGES)
        self.dirty: set[int] = set()
        self.captured: dict[int, list[Pages]] = {}
        self.snapshots: dict[int, bytes] = {}
        self.dispatching = True
        self.dead = False
        self.timer_version = 0
        #: (time, page, value) of every reply released to the client.
        self.released: list[tuple[float, int, int]] = []

    def alive(self) -> bool:
        return not self.dead and self.machine.mode is not pm.Mode.STOPPED

    def request(self) -> None:
        if self.alive() and self.dispatching:
            page = self.world.rng.randrange(PAGES)
            value = counter(self.memory, page) + 1
            _COUNTER.pack_into(self.memory, page * PAGE, value)
            self.dirty.add(page)
            self.output.write(0, _COUNTER.pack(page) + _COUNTER.pack(value))
        if not self.dead:
            self.world.at(self.world.now + 0.01, self.request)

    def hello(self) -> None:
        if self.alive():
            hello = Hello(
                service="counter",
                generation=self.machine.generation,
                page_size=PAGE,
                disk_size=0,
                regions=LAYOUT,
            )
            self.world.send("stream>", lambda: self.backup.on_stream(hello))

    def on_reply(self, message: Message) -> None:
        if not self.alive():
            return
        if isinstance(message, Welcome):
            self.carry(self.machine.backup_attached(message.generation, self.world.now))
        elif isinstance(message, Ack):
            self.carry(self.machine.acked(message.generation, message.epoch, self.world.now))

    def on_heartbeat(self, heartbeat: Heartbeat) -> None:
        if self.alive():
            self.machine.heard_from_backup(heartbeat.generation, self.world.now)

    def tick(self, version: int) -> None:
        if version == self.timer_version and self.alive():
            self.carry(self.machine.tick(self.world.now))

    def carry(self, actions: list[pm.PrimaryAction]) -> None:
        for action in actions:
            if self.dead:
                return
            self.do(action)
        self.arm()

    def arm(self) -> None:
        if self.alive():
            self.timer_version += 1
            version = self.timer_version
            self.world.at(
                max(self.world.now, self.machine.next_timer()), lambda: self.tick(version)
            )

    def do(self, action: pm.PrimaryAction) -> None:
        world = self.world
        match action:
            case pm.SuspendDispatch():
                self.dispatching = False
                self.carry(self.machine.suspended(world.now))
            case pm.Capture(epoch=n, full=full):
                pages = range(PAGES) if full else sorted(self.dirty)
                self.captured[n] = [
                    Pages(
                        region=0,
                        runs=((p, 1),),
                        data=bytes(self.memory[p * PAGE : (p + 1) * PAGE]),
                    )
                    for p in pages
                ]
                self.snapshots[n] = bytes(self.memory)
                self.dirty.clear()
                self.output.seal(n)
            case pm.ResumeDispatch():
                self.dispatching = True
            case pm.SendCheckpoint(generation=g, epoch=n, full=full):
                for message in epoch_messages(
                    EpochBegin(generation=g, epoch=n, full=full), self.captured.pop(n)
                ):
                    world.send("stream>", partial(self.backup.on_stream, message))
            case pm.ReleaseOutput(epoch=n):
                if self.machine.mode is pm.Mode.PROTECTED:
                    assert self.backup.applied_max >= n, "released an epoch the backup lacks"
                for send in self.output.release(n):
                    page = _COUNTER.unpack_from(send.data)[0]
                    value = _COUNTER.unpack_from(send.data, 8)[0]
                    self.released.append((world.now, page, value))
            case pm.InjectFailure():
                self.dead = True
            case pm.SendHeartbeat(generation=g, epoch=n):
                beat = Heartbeat(generation=g, epoch=n)
                world.send("beat>", partial(self.backup.on_heartbeat, beat))
            case pm.ClaimActive(previous=previous, generation=g):
                if world.cas(previous, g):
                    self.backup.watch_later(g)
                    self.carry(self.machine.claim_won(g, world.now))
                else:
                    self.carry(self.machine.claim_lost(world.now))
            case pm.StopService():
                self.output.discard()
            case _:
                pass  # PrepareResume, CommitDisk and the events

    def watch_later(self, generation: int) -> None:
        def seen() -> None:
            if self.alive():
                self.carry(self.machine.fenced(generation, self.world.now))

        self.world.at(self.world.now + self.world.rng.uniform(0.001, 0.05), seen)

    def stream_broke(self) -> None:
        if self.alive():
            self.machine.stream_reset(self.world.now)
            self.world.at(self.world.now + 0.05, self.hello)


class Backup:
    def __init__(self, world: World) -> None:
        self.world = world
        self.primary: Primary | None = None
        self.machine = bm.BackupMachine(
            bm.BackupConfig(
                service="counter",
                page_size=PAGE,
                regions=LAYOUT,
                heartbeat_interval=0.1,
                primary_timeout=1.0,
            ),
            generation=0,
            now=0.0,
        )
        self.memory = bytearray(PAGE * PAGES)
        self.applied_max = 0
        self.dead = False
        self.timer_version = 0
        self.activated: tuple[float, int, bytes] | None = None

    def on_stream(self, message: Message) -> None:
        if not self.dead:
            self.carry(self.machine.received(message, self.world.now))

    def on_heartbeat(self, heartbeat: Heartbeat) -> None:
        if not self.dead:
            self.carry(self.machine.heartbeat(heartbeat, self.world.now))

    def tick(self, version: int) -> None:
        if version == self.timer_version and not self.dead:
            self.carry(self.machine.tick(self.world.now))

    def carry(self, actions: list[bm.BackupAction]) -> None:
        assert self.primary is not None
        primary = self.primary
        world = self.world
        for action in actions:
            match action:
                case bm.SendWelcome(generation=g):
                    welcome = Welcome(generation=g)
                    world.send("stream<", partial(primary.on_reply, welcome))
                case bm.ApplyCheckpoint(epoch=n, pages=pages):
                    for message in pages:
                        ((first, _),) = message.runs
                        self.memory[first * PAGE : (first + 1) * PAGE] = message.data
                    assert bytes(self.memory) == primary.snapshots[n], "applied a partial epoch"
                    self.applied_max = max(self.applied_max, n)
                case bm.SendAck(generation=g, epoch=n):
                    ack = Ack(generation=g, epoch=n)
                    world.send("stream<", partial(primary.on_reply, ack))
                case bm.SendHeartbeat(generation=g, epoch=n):
                    beat = Heartbeat(generation=g, epoch=n)
                    world.send("beat<", partial(primary.on_heartbeat, beat))
                case bm.ClaimActive(previous=previous, generation=g):
                    if world.cas(previous, g):
                        primary.watch_later(g)
                        self.carry(self.machine.claim_won(g, world.now))
                    else:
                        self.carry(self.machine.claim_lost(world.now))
                case bm.Activate(generation=g):
                    self.activated = (world.now, g, bytes(self.memory))
                case bm.DropStream():
                    world.stream_id += 1
                    self.carry(self.machine.stream_closed(world.now))
                    primary.stream_broke()
                case _:
                    pass
        if not self.dead:
            self.timer_version += 1
            version = self.timer_version
            world.at(max(world.now, self.machine.next_timer()), lambda: self.tick(version))

    def watch_later(self, generation: int) -> None:
        def seen() -> None:
            if not self.dead:
                self.carry(self.machine.fenced(generation, self.world.now))

        self.world.at(self.world.now + self.world.rng.uniform(0.001, 0.05), seen)


def simulate(f: Faults) -> tuple[World, Primary, Backup]:
    world = World(faults=f, rng=random.Random(f.seed))
    backup = Backup(world)
    primary = Primary(world, backup)
    backup.primary = primary
    world.at(0.0, primary.hello)
    world.at(0.0, lambda: primary.carry([]))
    world.at(0.0, lambda: backup.carry([]))
    world.at(0.005, primary.request)
    # Armed once the backup has had time for a full checkpoint (the seed's stdin command).
    world.at(1.0, lambda: primary.machine.arm_failure(f.fail_point))
    if f.primary_crash_at is not None:
        world.at(f.primary_crash_at, lambda: setattr(primary, "dead", True))
    if f.backup_crash_at is not None:
        world.at(f.backup_crash_at, lambda: setattr(backup, "dead", True))
    if f.cut_at is not None:
        world.at(f.cut_at, lambda: setattr(world, "cut", True))
    for when in f.stream_breaks:

        def broke() -> None:
            world.stream_id += 1
            if not backup.dead:
                backup.carry(backup.machine.stream_closed(world.now))
            primary.stream_broke()

        world.at(when, broke)
    world.run()
    return world, primary, backup


@settings(max_examples=120)
@given(faults)
def test_no_acknowledged_write_is_lost_and_never_two_actives(f: Faults) -> None:
    _, primary, backup = simulate(f)
    if backup.activated is not None:
        took_over_at, _, memory = backup.activated
        for _, page, value in primary.released:
            assert counter(memory, page) >= value, "a write whose reply left was lost"
        assert all(when < took_over_at for when, _, _ in primary.released), "two actives"
    clean = (
        f.primary_crash_at is None
        and f.fail_point is None
        and f.backup_crash_at is None
        and f.cut_at is None
    )
    if clean:
        assert backup.activated is None
        assert primary.machine.mode is pm.Mode.PROTECTED
        assert primary.machine.committed >= 3
        assert primary.released


def test_a_primary_killed_at_each_failure_point_is_taken_over_without_loss() -> None:
    for point in FailurePoint:
        f = Faults(
            seed=7,
            interval=0.05,
            backup_timeout=1.5,
            primary_crash_at=None,
            fail_point=point,
            backup_crash_at=None,
            cut_at=None,
            stream_breaks=(),
        )
        _, primary, backup = simulate(f)
        assert primary.dead
        assert backup.activated is not None, point
        memory = backup.activated[2]
        assert all(counter(memory, page) >= value for _, page, value in primary.released)


def test_a_cut_gives_the_pair_to_one_side_only() -> None:
    for backup_timeout in (0.8, 1.5):
        f = Faults(
            seed=3,
            interval=0.05,
            backup_timeout=backup_timeout,
            primary_crash_at=None,
            fail_point=None,
            backup_crash_at=None,
            cut_at=1.0,
            stream_breaks=(),
        )
        _, primary, backup = simulate(f)
        if backup_timeout > 1.0:  # the backup notices first and takes over
            assert backup.activated is not None
            assert primary.machine.mode is pm.Mode.STOPPED
        else:  # the primary notices first, fences the backup, runs unprotected
            assert backup.activated is None
            assert primary.machine.mode is pm.Mode.UNPROTECTED
            assert backup.machine.phase is bm.BackupPhase.STOOD_DOWN
