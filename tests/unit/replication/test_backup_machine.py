"""The backup's machine on scripted time: only complete checkpoints, refusals, takeover."""

from __future__ import annotations

import pytest

from servergroup.replication.backup_machine import (
    Activate,
    ApplyCheckpoint,
    BackupAction,
    BackupConfig,
    BackupMachine,
    BackupPhase,
    CheckpointRejected,
    ClaimActive,
    DropStream,
    PrimaryLost,
    SendAck,
    SendHeartbeat,
    SendRefuse,
    SendWelcome,
    StoodDown,
    StopService,
)
from servergroup.replication.protocol import (
    Ack,
    DiskWrite,
    EpochBegin,
    EpochEnd,
    Heartbeat,
    Hello,
    Message,
    Pages,
    epoch_messages,
)

pytestmark = pytest.mark.timeout(30)

PAGE = 16
CONFIG = BackupConfig(
    service="kv",
    page_size=PAGE,
    regions=(("a", 4 * PAGE), ("b", 2 * PAGE)),
    disk_size=100,
    heartbeat_interval=0.1,
    primary_timeout=1.0,
)
HELLO = Hello(service="kv", generation=2, page_size=PAGE, disk_size=100, regions=CONFIG.regions)


def full_epoch(epoch: int, generation: int = 2, fill: int = 1) -> list[Message]:
    return epoch_messages(
        EpochBegin(generation=generation, epoch=epoch, full=True),
        [
            Pages(region=0, runs=((0, 4),), data=bytes([fill]) * 4 * PAGE),
            Pages(region=1, runs=((0, 1), (1, 1)), data=bytes([fill]) * 2 * PAGE),
            DiskWrite(offset=10, data=b"disk"),
        ],
    )


def incremental(epoch: int, generation: int = 2) -> list[Message]:
    return epoch_messages(
        EpochBegin(generation=generation, epoch=epoch, full=False),
        [Pages(region=0, runs=((2, 1),), data=b"\x07" * PAGE)],
    )


def feed(machine: BackupMachine, messages: list[Message], now: float) -> list[BackupAction]:
    out: list[BackupAction] = []
    for message in messages:
        out += machine.received(message, now)
    return out


def following(now: float = 0.0) -> BackupMachine:
    machine = BackupMachine(CONFIG, generation=0, now=now)
    assert machine.received(HELLO, now) == [SendWelcome(generation=2)]
    return machine


def rejected(actions: list[BackupAction]) -> str:
    assert len(actions) >= 2
    assert isinstance(actions[0], CheckpointRejected)
    assert isinstance(actions[-1], DropStream)
    return actions[0].reason


def test_a_complete_epoch_is_applied_then_acknowledged() -> None:
    machine = following()
    actions = feed(machine, full_epoch(1), 0.1)
    assert len(actions) == 2
    apply, ack = actions
    assert isinstance(apply, ApplyCheckpoint)
    assert (apply.epoch, apply.full, len(apply.pages), len(apply.writes)) == (1, True, 2, 1)
    assert ack == SendAck(generation=2, epoch=1)
    assert feed(machine, incremental(2), 0.2)[-1] == SendAck(generation=2, epoch=2)
    assert machine.applied == 2


def test_nothing_is_applied_before_the_end() -> None:
    machine = following()
    epoch = full_epoch(1)
    assert feed(machine, epoch[:-1], 0.1) == []
    assert machine.status().staged_bytes == 6 * PAGE + 4
    assert machine.status().phase is BackupPhase.RECEIVING


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda m: m[:2] + m[3:], "not what its end describes"),  # a run lost
        (lambda m: m[:2] + m[1:], "skips or repeats pages"),  # a run repeated
        (
            lambda m: [*m[:3], DiskWrite(offset=10, data=b"DISK"), m[-1]],
            "not what its end describes",
        ),
        (lambda m: [*m[:-1], EpochEnd(epoch=9, runs=2, writes=1, digest=0)], "ended as epoch 9"),
    ],
)
def test_a_damaged_epoch_is_rejected_with_its_stream(change: object, reason: str) -> None:
    machine = following()
    assert callable(change)
    actions = feed(machine, change(full_epoch(1)), 0.1)
    assert not any(isinstance(a, ApplyCheckpoint | SendAck) for a in actions)
    assert reason in rejected(actions)
    assert machine.applied == 0


def test_a_full_epoch_must_cover_every_page() -> None:
    machine = following()
    messages = epoch_messages(
        EpochBegin(generation=2, epoch=1, full=True),
        [Pages(region=0, runs=((0, 4),), data=b"\x01" * 4 * PAGE)],
    )
    assert "does not cover every page" in rejected(feed(machine, messages, 0.1))


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (Pages(region=2, runs=((0, 1),), data=b"x" * PAGE), "does not exist"),
        (Pages(region=1, runs=((1, 2),), data=b"x" * 2 * PAGE), "not inside region"),
        (Pages(region=1, runs=((0, 0),), data=b""), "not inside region"),
        (Pages(region=0, runs=((0, 1),), data=b"x" * (PAGE + 1)), "not the 1 pages"),
        (Pages(region=0, runs=(), data=b""), "not the 0 pages"),
        (DiskWrite(offset=98, data=b"xyz"), "overruns the disk"),
        (Ack(generation=2, epoch=1), "does not send Ack"),
    ],
)
def test_data_outside_the_layout_is_rejected(message: Message, reason: str) -> None:
    machine = following()
    machine.received(EpochBegin(generation=2, epoch=1, full=True), 0.1)
    assert reason in rejected(machine.received(message, 0.1))


def test_the_first_epoch_must_be_full_and_the_next_must_follow() -> None:
    machine = following()
    assert "a full one is needed" in rejected(feed(machine, incremental(1), 0.1))
    feed(machine, full_epoch(5), 0.2)
    assert "does not follow epoch 5" in rejected(feed(machine, incremental(7), 0.3))
    # After a rejection only a full epoch is taken.
    assert "a full one is needed" in rejected(feed(machine, incremental(6), 0.3))
    assert feed(machine, full_epoch(8), 0.4)[-1] == SendAck(generation=2, epoch=8)


def test_a_checkpoint_of_a_stale_generation_is_refused() -> None:
    machine = following()
    assert "generation 1, not 2" in rejected(feed(machine, full_epoch(1, generation=1), 0.1))
    stale = BackupMachine(CONFIG, generation=3, now=0.0)
    actions = stale.received(HELLO, 0.0)
    assert isinstance(actions[1], SendRefuse)
    assert "generation 2 is stale" in actions[1].reason


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        (Hello(service="counter", generation=2, page_size=PAGE, disk_size=100,
               regions=CONFIG.regions), "not 'counter'"),
        (Hello(service="kv", generation=2, page_size=8, disk_size=100,
               regions=CONFIG.regions), "page size"),
        (Hello(service="kv", generation=2, page_size=PAGE, disk_size=100,
               regions=(("a", 4 * PAGE),)), "regions differ"),
        (Hello(service="kv", generation=2, page_size=PAGE, disk_size=5,
               regions=CONFIG.regions), "disk size"),
    ],
)  # fmt: skip
def test_a_primary_of_another_service_is_refused(hello: Hello, reason: str) -> None:
    machine = BackupMachine(CONFIG, generation=0, now=0.0)
    actions = machine.received(hello, 0.0)
    assert isinstance(actions[1], SendRefuse)
    assert reason in actions[1].reason
    assert machine.phase is BackupPhase.WAITING


def test_a_closed_stream_drops_the_partial_epoch_but_is_no_failover() -> None:
    machine = following()
    feed(machine, full_epoch(1), 0.1)
    feed(machine, incremental(2)[:-1], 0.2)
    assert machine.stream_closed(0.3) == []
    assert machine.phase is BackupPhase.FOLLOWING
    assert machine.applied == 1
    machine.heartbeat(Heartbeat(generation=2, epoch=1), 0.9)
    assert not any(isinstance(a, PrimaryLost) for a in machine.tick(1.5))


def test_silence_takes_over_from_the_last_complete_checkpoint() -> None:
    machine = following()
    assert machine.tick(0.0) == [SendHeartbeat(generation=2, epoch=0)]
    feed(machine, full_epoch(1), 0.1)
    feed(machine, incremental(2), 0.2)
    feed(machine, incremental(3)[:-1], 0.3)  # epoch 3 never completes
    machine.heartbeat(Heartbeat(generation=2, epoch=2), 0.5)
    assert machine.next_timer() == pytest.approx(0.1)
    actions = [a for a in machine.tick(1.5) if not isinstance(a, SendHeartbeat)]
    assert actions == [
        PrimaryLost(reason="no heartbeat for 1.00 s", at=1.5),
        ClaimActive(previous=2, generation=3),
    ]
    assert machine.status().staged_bytes == 0
    assert machine.claim_won(3, 1.6) == [Activate(generation=3, epoch=2)]
    assert machine.phase is BackupPhase.ACTIVE
    assert machine.claim_won(3, 1.7) == []
    assert machine.fenced(4, 2.0) == [
        StopService(reason="the pair moved to generation 4, past ours")
    ]


def test_silence_before_any_complete_checkpoint_takes_nothing_over() -> None:
    machine = following()
    feed(machine, full_epoch(1)[:-1], 0.1)
    actions = machine.tick(1.0)
    assert isinstance(actions[-1], PrimaryLost)
    assert "no complete checkpoint" in actions[-1].reason
    assert machine.phase is BackupPhase.WAITING
    assert machine.next_timer() == float("inf")


def test_a_lost_claim_or_a_newer_primary_stands_the_backup_down() -> None:
    machine = following()
    feed(machine, full_epoch(1), 0.1)
    machine.tick(1.1)
    assert machine.phase is BackupPhase.CLAIMING
    assert [type(a) for a in machine.claim_lost(1.2)] == [StoodDown]
    # A hello at the pair's generation makes it a backup again, with a full copy first.
    assert machine.received(HELLO, 1.3) == [SendWelcome(generation=2)]
    assert "a full one is needed" in rejected(feed(machine, incremental(2), 1.4))
    other = following()
    actions = other.heartbeat(Heartbeat(generation=5, epoch=9), 0.2)
    assert [type(a) for a in actions] == [StoodDown]
    assert "generation 2 is stale" in other.received(HELLO, 0.3)[0].reason  # type: ignore[union-attr]


def test_a_waiting_backup_learns_a_new_generation_without_standing_down() -> None:
    """A new pair's primary makes the key (generation 1) before its hello (generation 2)."""
    machine = BackupMachine(CONFIG, generation=0, now=0.0)
    assert machine.fenced(1, 0.1) == []
    assert machine.phase is BackupPhase.WAITING
    assert machine.generation == 1
    stale = Hello(service="kv", generation=0, page_size=PAGE, disk_size=100, regions=CONFIG.regions)
    refused = machine.received(stale, 0.2)[1]
    assert isinstance(refused, SendRefuse)
    assert "this backup has seen 1" in refused.reason
    assert machine.received(HELLO, 0.3) == [SendWelcome(generation=2)]


def test_an_active_backup_refuses_hellos() -> None:
    machine = following()
    feed(machine, full_epoch(1), 0.1)
    machine.tick(1.2)
    machine.claim_won(3, 1.2)
    actions = machine.received(HELLO, 1.3)
    assert isinstance(actions[1], SendRefuse)
    assert "active" in actions[1].reason


def test_a_full_epoch_that_repeats_pages_is_rejected() -> None:
    machine = following()
    messages = epoch_messages(
        EpochBegin(generation=2, epoch=1, full=True),
        [
            Pages(region=0, runs=((0, 2), (0, 2)), data=b"\x01" * 4 * PAGE),
            Pages(region=1, runs=((0, 2),), data=b"\x01" * 2 * PAGE),
        ],
    )
    assert "skips or repeats pages" in rejected(feed(machine, messages, 0.1))
