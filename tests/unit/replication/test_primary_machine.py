"""The primary's epoch machine on scripted time: Remus's order, failure points, authority."""

from __future__ import annotations

import pytest

from servergroup.common.errors import UsageError
from servergroup.replication.hooks import FailurePoint, parse_failure_point
from servergroup.replication.primary_machine import (
    AckIgnored,
    BackupLost,
    Capture,
    ClaimActive,
    CommitDisk,
    InjectFailure,
    Mode,
    OnBackupLoss,
    PrepareResume,
    PrimaryAction,
    PrimaryConfig,
    PrimaryMachine,
    Protected,
    ReleaseOutput,
    ResumeDispatch,
    SendCheckpoint,
    SendHeartbeat,
    StopService,
    SuspendDispatch,
    WentUnprotected,
)

pytestmark = pytest.mark.timeout(30)

CONFIG = PrimaryConfig(interval=0.2, heartbeat_interval=0.1, backup_timeout=1.0)


def without_heartbeats(actions: list[PrimaryAction]) -> list[PrimaryAction]:
    return [a for a in actions if not isinstance(a, SendHeartbeat)]


def end_epoch(machine: PrimaryMachine, now: float) -> list[PrimaryAction]:
    """Run time to the end of the running epoch and answer the suspend."""
    for _ in range(100):
        at = max(now, machine.next_timer())
        ticked = without_heartbeats(machine.tick(at))
        if ticked:
            assert ticked == [SuspendDispatch(epoch=machine.epoch)]
            return machine.suspended(at)
        now = at
    raise AssertionError("the epoch never ended")


def test_an_epoch_follows_remus_order() -> None:
    machine = PrimaryMachine(CONFIG, generation=3, now=0.0)
    assert machine.tick(0.0) == [SendHeartbeat(generation=3, epoch=0)]
    assert machine.next_timer() == pytest.approx(0.1)
    assert machine.tick(0.15) == [SendHeartbeat(generation=3, epoch=0)]
    assert machine.tick(0.2) == [SuspendDispatch(epoch=1)]
    assert machine.tick(0.21) == []  # no second suspend while one is pending
    assert machine.suspended(0.21) == [
        Capture(epoch=1, full=True),
        PrepareResume(epoch=1),
        ResumeDispatch(epoch=2),
        SendCheckpoint(generation=3, epoch=1, full=True),
    ]
    # One checkpoint in flight: epoch 2 does not end before epoch 1 is acknowledged.
    assert without_heartbeats(machine.tick(0.5)) == []
    assert machine.acked(3, 1, 0.5) == [CommitDisk(epoch=1), ReleaseOutput(epoch=1)]
    assert machine.committed == 1
    assert without_heartbeats(machine.tick(0.5)) == [SuspendDispatch(epoch=2)]
    actions = machine.suspended(0.5)
    assert actions[0] == Capture(epoch=2, full=False)
    assert actions[-1] == SendCheckpoint(generation=3, epoch=2, full=False)


def test_the_next_epoch_ends_an_interval_after_the_last_suspend() -> None:
    machine = PrimaryMachine(CONFIG, generation=1, now=0.0)
    end_epoch(machine, 0.0)
    suspended_at = 0.2
    machine.acked(1, 1, suspended_at + 0.01)
    assert machine.next_timer() == pytest.approx(min(suspended_at + 0.2, 0.3))
    assert without_heartbeats(machine.tick(0.39)) == []
    assert without_heartbeats(machine.tick(0.4)) == [SuspendDispatch(epoch=2)]


def test_request_checkpoint_ends_the_epoch_early() -> None:
    machine = PrimaryMachine(CONFIG, generation=1, now=0.0)
    machine.tick(0.0)
    machine.request_checkpoint(0.05)
    assert machine.tick(0.05) == [SuspendDispatch(epoch=1)]


@pytest.mark.parametrize(
    ("point", "before"),
    [
        (FailurePoint.S, Capture),
        (FailurePoint.S2, PrepareResume),
        (FailurePoint.R, PrepareResume),
        (FailurePoint.R2, ResumeDispatch),
    ],
)
def test_failure_points_of_the_pause_strike_in_place(
    point: FailurePoint, before: type[PrimaryAction]
) -> None:
    machine = PrimaryMachine(CONFIG, generation=1, now=0.0)
    machine.arm_failure(point)
    machine.tick(0.0)
    machine.tick(0.2)
    actions = machine.suspended(0.2)
    at = actions.index(InjectFailure(point=point))
    kinds = [type(a) for a in actions]
    # Everything before the point has happened, nothing after it yet.
    if point in (FailurePoint.S, FailurePoint.R):
        assert kinds[at + 1] is before
    else:
        assert kinds[at - 1] is {FailurePoint.S2: Capture, FailurePoint.R2: PrepareResume}[point]
        assert kinds[at + 1] is before
    assert actions.count(InjectFailure(point=point)) == 1


def test_failure_points_of_the_commit_bracket_it() -> None:
    machine = PrimaryMachine(CONFIG, generation=1, now=0.0)
    end_epoch(machine, 0.0)
    machine.arm_failure(FailurePoint.C)
    assert machine.acked(1, 1, 0.3) == [
        InjectFailure(point=FailurePoint.C),
        CommitDisk(epoch=1),
        ReleaseOutput(epoch=1),
    ]
    end_epoch(machine, 0.3)
    machine.arm_failure(FailurePoint.C2)
    assert machine.acked(1, 2, 0.6) == [
        CommitDisk(epoch=2),
        ReleaseOutput(epoch=2),
        InjectFailure(point=FailurePoint.C2),
    ]


def test_failure_point_names_are_the_seeds() -> None:
    assert [parse_failure_point(p) for p in ("s", "s2", " r\n", "r2", "c", "c2")] == list(
        FailurePoint
    )
    with pytest.raises(UsageError, match="not a failure point"):
        parse_failure_point("x")


def test_stale_and_foreign_acks_commit_nothing() -> None:
    machine = PrimaryMachine(CONFIG, generation=2, now=0.0)
    end_epoch(machine, 0.0)
    assert machine.acked(1, 1, 0.3) == [AckIgnored(epoch=1, reason="it is for generation 1")]
    assert machine.acked(2, 1, 0.3) == [CommitDisk(epoch=1), ReleaseOutput(epoch=1)]
    assert machine.acked(2, 1, 0.31) == [AckIgnored(epoch=1, reason="it is not the epoch awaited")]
    assert machine.committed == 1


def test_an_ack_of_an_epoch_never_sent_means_a_broken_backup() -> None:
    machine = PrimaryMachine(CONFIG, generation=2, now=0.0)
    end_epoch(machine, 0.0)
    actions = machine.acked(2, 7, 0.3)
    assert isinstance(actions[0], BackupLost)
    assert actions[1] == ClaimActive(previous=2, generation=3)
    assert machine.mode is Mode.CLAIMING


def test_a_stream_reset_makes_the_next_checkpoint_full_and_its_ack_commits_all() -> None:
    machine = PrimaryMachine(CONFIG, generation=1, now=0.0)
    end_epoch(machine, 0.0)  # epoch 1 sent, never acknowledged
    machine.stream_reset(0.25)
    actions = end_epoch(machine, 0.25)
    assert Capture(epoch=2, full=True) in actions
    assert actions[-1] == SendCheckpoint(generation=1, epoch=2, full=True)
    assert machine.acked(1, 2, 0.5) == [CommitDisk(epoch=2), ReleaseOutput(epoch=2)]


def test_a_silent_backup_leads_to_a_claim_and_output_waits_for_it() -> None:
    machine = PrimaryMachine(CONFIG, generation=4, now=0.0)
    end_epoch(machine, 0.0)  # epoch 1 in flight
    machine.heard_from_backup(4, 0.5)
    assert without_heartbeats(machine.tick(1.4)) == []
    actions = without_heartbeats(machine.tick(1.5))
    assert actions == [
        BackupLost(reason="no heartbeat from the backup for 1.00 s", at=1.5),
        ClaimActive(previous=4, generation=5),
    ]
    # While claiming: no commit, no release, no new epoch, and late acks change nothing.
    assert machine.acked(4, 1, 1.6) == [AckIgnored(epoch=1, reason="the primary is claiming")]
    assert without_heartbeats(machine.tick(5.0)) == []
    assert machine.claim_won(5, 5.0) == [
        WentUnprotected(generation=5, at=5.0),
        CommitDisk(epoch=1),
        ReleaseOutput(epoch=1),
    ]
    # Unprotected: each epoch commits as soon as it is captured.
    actions = end_epoch(machine, 5.0)
    assert actions[-2:] == [CommitDisk(epoch=2), ReleaseOutput(epoch=2)]
    assert not any(isinstance(a, SendCheckpoint) for a in actions)


def test_a_lost_claim_stops_the_primary_without_releasing_anything() -> None:
    machine = PrimaryMachine(CONFIG, generation=4, now=0.0)
    end_epoch(machine, 0.0)
    machine.tick(1.3)
    assert machine.mode is Mode.CLAIMING
    assert machine.claim_lost(1.4) == [
        StopService(reason="another node took the pair's key: it is the active now")
    ]
    assert machine.claim_won(5, 1.5) == []
    assert machine.tick(9.0) == []
    assert machine.committed == 0


def test_the_stop_policy_stops_at_once() -> None:
    config = PrimaryConfig(interval=0.2, backup_timeout=1.0, on_backup_loss=OnBackupLoss.STOP)
    machine = PrimaryMachine(config, generation=1, now=0.0)
    end_epoch(machine, 0.0)
    actions = without_heartbeats(machine.tick(1.2))
    assert isinstance(actions[0], BackupLost)
    assert isinstance(actions[1], StopService)
    assert machine.mode is Mode.STOPPED
    assert machine.next_timer() == float("inf")


def test_fencing_stops_a_primary_at_any_moment() -> None:
    machine = PrimaryMachine(CONFIG, generation=4, now=0.0)
    assert machine.fenced(4, 0.1) == []
    machine.tick(0.2)
    assert machine.fenced(5, 0.2) == [
        StopService(reason="the pair moved to generation 5, past ours")
    ]
    assert machine.suspended(0.2) == []


def test_a_new_backup_protects_again_with_a_full_checkpoint() -> None:
    machine = PrimaryMachine(
        PrimaryConfig(interval=0.2, backup_timeout=1.0, no_backup=True), generation=1, now=0.0
    )
    assert machine.mode is Mode.UNPROTECTED
    actions = end_epoch(machine, 0.0)
    assert actions[-2:] == [CommitDisk(epoch=1), ReleaseOutput(epoch=1)]
    assert machine.backup_attached(2, 0.3) == [Protected(generation=2, at=0.3)]
    actions = end_epoch(machine, 0.3)
    assert actions[0] == Capture(epoch=2, full=True)
    assert actions[-1] == SendCheckpoint(generation=2, epoch=2, full=True)


def test_unsafe_timings_are_refused() -> None:
    with pytest.raises(UsageError, match="twice the heartbeat"):
        PrimaryConfig(heartbeat_interval=0.5, backup_timeout=1.0)
    with pytest.raises(UsageError, match="positive"):
        PrimaryConfig(interval=0)


def test_a_backup_cannot_attach_during_a_claim() -> None:
    machine = PrimaryMachine(CONFIG, generation=1, now=0.0)
    machine.tick(1.5)
    assert machine.mode is Mode.CLAIMING
    with pytest.raises(UsageError, match="while the primary claims"):
        machine.backup_attached(1, 1.6)
