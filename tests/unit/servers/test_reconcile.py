"""decide(): scripted records and observations in, actions and status out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from servergroup.servers.drivers.base import MoveStyle, Observed, Power
from servergroup.servers.model import (
    Desired,
    IncomingRecord,
    Server,
    ServerSpec,
    ServerStatus,
    VmState,
)
from servergroup.servers.reconcile import REACH, Action, Decision, decide, failed, involves

A = Action
NOW = "2026-01-01T00:00:00.000+00:00"
CH0, CH1 = Path("/ch/h0"), Path("/ch/h1")
SPEC = ServerSpec(name="vm1", instance="instance-0000abcd", uuid="u", group="g", host="h0", vcpus=3)


def status(state: VmState, **kw: object) -> ServerStatus:
    base = ServerStatus(
        name="vm1",
        host="h0",
        state=state,
        online_cpus=(0, 1, 2),
        vcpus=3,
        launched_at="earlier",
        updated_at="earlier",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def seen(power: Power, *, guest: bool = True, channel: Path | None = CH0) -> Observed:
    running = power in (Power.RUNNING, Power.FROZEN)
    return Observed(
        power=power,
        pids=(10, 11) if running else (),
        guest_pid=10 if running and guest else None,
        channel_dir=channel if power is not Power.ABSENT else None,
    )


def run(
    server: Server, observed: Observed, *, me: str = "h0", alive: tuple[str, ...] = ("h0", "h1")
) -> Decision:
    return decide(
        server,
        observed,
        me=me,
        channel_dir=CH0 if me == "h0" else CH1,
        host_alive=lambda h: h in alive,
        now_iso=NOW,
    )


def test_table_is_complete() -> None:
    # A copy waiting for a migration stream is handled before the table (see _reach).
    wanted = {
        (d, p)
        for d in Desired
        if d is not Desired.DELETED
        for p in Power
        if p is not Power.INCOMING
    }
    assert set(REACH) == wanted


def test_new_server_is_created_started_and_attached() -> None:
    d = run(Server(spec=SPEC), seen(Power.ABSENT))
    assert d.actions == (A.CREATE, A.START, A.ATTACH)
    assert d.status is not None
    assert (d.status.host, d.status.state, d.status.task_state) == ("h0", VmState.ACTIVE, None)
    assert d.status.online_cpus == (0, 1, 2)
    assert d.status.launched_at == NOW
    assert "should be active" in d.sentence


def test_nothing_to_do_when_reached() -> None:
    d = run(Server(spec=SPEC, status=status(VmState.ACTIVE)), seen(Power.RUNNING))
    assert d.idle
    assert d.sentence == "server vm1 is running as asked"


def test_status_is_written_only_when_it_changes() -> None:
    d = run(Server(spec=SPEC, status=status(VmState.ERROR, error="x")), seen(Power.RUNNING))
    assert d.actions == ()
    assert d.status is not None
    assert d.status.state is VmState.ACTIVE
    assert d.status.error is None


# (desired, observed power, guest alive, attached) -> actions, state reported
CASES = [
    (Desired.PAUSED, Power.RUNNING, True, CH0, (A.PAUSE,), VmState.PAUSED),
    (Desired.PAUSED, Power.FROZEN, True, CH0, (), VmState.PAUSED),
    (Desired.ACTIVE, Power.FROZEN, True, CH0, (A.UNPAUSE,), VmState.ACTIVE),
    (Desired.STOPPED, Power.RUNNING, True, CH0, (A.STOP, A.DETACH), VmState.STOPPED),
    (Desired.STOPPED, Power.FROZEN, True, CH0, (A.STOP, A.DETACH), VmState.STOPPED),
    (Desired.STOPPED, Power.STOPPED, False, None, (), VmState.STOPPED),
    (Desired.ACTIVE, Power.STOPPED, False, None, (A.START, A.ATTACH), VmState.ACTIVE),
    (Desired.PAUSED, Power.STOPPED, False, None, (A.START, A.ATTACH, A.PAUSE), VmState.PAUSED),
    (Desired.STOPPED, Power.ABSENT, False, None, (A.CREATE,), VmState.STOPPED),
    # the guest agent died while the server should run: start it again
    (Desired.ACTIVE, Power.RUNNING, False, CH0, (A.START, A.ATTACH), VmState.ACTIVE),
    (Desired.ACTIVE, Power.FROZEN, False, CH0, (A.UNPAUSE, A.START, A.ATTACH), VmState.ACTIVE),
    (Desired.PAUSED, Power.RUNNING, False, CH0, (A.START, A.ATTACH, A.PAUSE), VmState.PAUSED),
    # not attached here (e.g. after a crash mid-attach): attach
    (Desired.ACTIVE, Power.RUNNING, True, None, (A.ATTACH,), VmState.ACTIVE),
    (Desired.ACTIVE, Power.RUNNING, True, CH1, (A.ATTACH,), VmState.ACTIVE),
]


@pytest.mark.parametrize(("desired", "power", "guest", "channel", "actions", "state"), CASES)
def test_reach(
    desired: Desired,
    power: Power,
    guest: bool,
    channel: Path | None,
    actions: tuple[Action, ...],
    state: VmState,
) -> None:
    server = Server(spec=replace(SPEC, desired=desired), status=status(VmState.ACTIVE))
    d = run(server, seen(power, guest=guest, channel=channel))
    assert d.actions == actions
    # No status when the one in the store already says so.
    assert (d.status or server.status).state is state  # type: ignore[union-attr]
    if not guest and power is not Power.STOPPED and power is not Power.ABSENT:
        assert "guest agent is dead" in d.sentence


def test_reboot_resets_once() -> None:
    server = Server(
        spec=replace(SPEC, reboot_count=2), status=status(VmState.ACTIVE, reboot_count=1)
    )
    d = run(server, seen(Power.RUNNING))
    assert d.actions == (A.REBOOT, A.ATTACH)
    assert d.status is not None
    assert d.status.reboot_count == 2
    assert d.status.launched_at == NOW
    again = run(Server(spec=server.spec, status=d.status), seen(Power.RUNNING))
    assert again.idle


def test_reboot_of_a_stopped_server_is_only_recorded() -> None:
    server = Server(
        spec=replace(SPEC, reboot_count=1, desired=Desired.STOPPED),
        status=status(VmState.STOPPED),
    )
    d = run(server, seen(Power.STOPPED, channel=None))
    assert d.actions == ()
    assert d.status is not None
    assert d.status.reboot_count == 1


def test_live_migration_source_detaches_and_hands_over() -> None:
    server = Server(spec=replace(SPEC, host="h1"), status=status(VmState.ACTIVE))
    d = run(server, seen(Power.RUNNING))
    assert d.actions == (A.DETACH,)
    assert d.status is not None
    assert (d.status.host, d.status.state, d.status.task_state) == (
        "h1",
        VmState.MIGRATING,
        "migrating",
    )
    assert d.status.launched_at == "earlier"  # the guest keeps running
    assert "live" in d.sentence


def test_live_migration_target_waits_then_attaches() -> None:
    spec = replace(SPEC, host="h1")
    waiting = run(Server(spec=spec, status=status(VmState.ACTIVE)), seen(Power.RUNNING), me="h1")
    assert waiting.idle
    assert "waiting for h0" in waiting.sentence
    moved = status(VmState.MIGRATING, host="h1", task_state="migrating")
    d = run(Server(spec=spec, status=moved), seen(Power.RUNNING, channel=None), me="h1")
    assert d.actions == (A.ATTACH,)
    assert d.status is not None
    assert (d.status.host, d.status.state, d.status.task_state) == ("h1", VmState.ACTIVE, None)
    assert d.status.launched_at == "earlier"


def test_live_migration_of_a_paused_server_stays_paused() -> None:
    spec = replace(SPEC, host="h1", desired=Desired.PAUSED)
    moved = status(VmState.MIGRATING, host="h1", task_state="migrating")
    d = run(Server(spec=spec, status=moved), seen(Power.FROZEN, channel=None), me="h1")
    assert d.actions == (A.ATTACH,)
    assert d.status is not None
    assert d.status.state is VmState.PAUSED


def test_cold_migration_stops_on_the_source_and_starts_on_the_target() -> None:
    spec = replace(SPEC, host="h1", live_migration=False)
    src = run(Server(spec=spec, status=status(VmState.ACTIVE)), seen(Power.RUNNING))
    assert src.actions == (A.STOP, A.DETACH)
    assert src.status is not None
    assert src.status.host == "h1"
    dst = run(Server(spec=spec, status=src.status), seen(Power.STOPPED, channel=None), me="h1")
    assert dst.actions == (A.START, A.ATTACH)
    assert dst.status is not None
    assert dst.status.state is VmState.ACTIVE


def test_live_migration_of_a_stopped_server_is_cold() -> None:
    spec = replace(SPEC, host="h1", desired=Desired.STOPPED)
    d = run(Server(spec=spec, status=status(VmState.STOPPED)), seen(Power.STOPPED, channel=None))
    assert d.actions == (A.STOP, A.DETACH)
    assert "cold" in d.sentence


def test_no_hand_over_to_a_dead_target() -> None:
    server = Server(spec=replace(SPEC, host="h1"), status=status(VmState.ACTIVE))
    d = run(server, seen(Power.RUNNING), alive=("h0",))
    assert d.idle
    assert "not running" in d.sentence


def test_delete_by_the_owner_then_forget() -> None:
    server = Server(spec=replace(SPEC, desired=Desired.DELETED), status=status(VmState.ACTIVE))
    d = run(server, seen(Power.RUNNING))
    assert d.actions == (A.DELETE, A.FORGET)
    assert d.status is not None
    assert d.status.state is VmState.DELETED
    assert run(server, seen(Power.RUNNING), me="h1").idle


def test_delete_while_moving_is_done_by_the_owner() -> None:
    server = Server(
        spec=replace(SPEC, desired=Desired.DELETED, host="h1"), status=status(VmState.ACTIVE)
    )
    assert run(server, seen(Power.RUNNING)).actions == (A.DELETE, A.FORGET)
    assert run(server, seen(Power.RUNNING), me="h1").idle


def test_other_hosts_servers_are_not_touched() -> None:
    server = Server(spec=replace(SPEC, host="h2"), status=status(VmState.ACTIVE, host="h2"))
    assert not involves(server, "h0")
    assert run(server, seen(Power.RUNNING, channel=Path("/ch/h2"))).idle
    assert run(server, seen(Power.ABSENT), me="h0").idle


def test_a_link_left_in_our_channel_dir_is_removed() -> None:
    # A host back after its servers were evacuated: the link must not stay ours.
    server = Server(spec=replace(SPEC, host="h2"), status=status(VmState.ACTIVE, host="h2"))
    d = run(server, seen(Power.RUNNING, channel=CH0))
    assert d.actions == (A.DETACH,)
    assert d.status is None


def test_a_copy_of_a_server_owned_elsewhere_is_deleted() -> None:
    server = Server(spec=replace(SPEC, host="h2"), status=status(VmState.ACTIVE, host="h2"))
    for power in (Power.RUNNING, Power.FROZEN, Power.STOPPED):
        d = decide(
            server,
            seen(power),
            me="h0",
            channel_dir=CH0,
            host_alive=lambda h: True,
            now_iso=NOW,
            move_style=MoveStyle.COPY,
        )
        assert d.actions == (A.DELETE,)
        assert d.status is None
    absent = decide(
        server,
        seen(Power.ABSENT),
        me="h0",
        channel_dir=CH0,
        host_alive=lambda h: True,
        now_iso=NOW,
        move_style=MoveStyle.COPY,
    )
    assert absent.idle


@pytest.mark.parametrize("power", [Power.RUNNING, Power.FROZEN])
def test_a_rebuilt_server_ends_what_ran_and_starts_afresh(power: Power) -> None:
    rebuilding = status(VmState.BUILDING, host="h0", task_state="rebuilding")
    server = Server(spec=SPEC, status=rebuilding)
    d = run(server, seen(power, channel=Path("/ch/h9")))
    assert d.actions == (A.STOP, A.START, A.ATTACH)
    assert d.status is not None
    assert (d.status.host, d.status.state, d.status.task_state) == ("h0", VmState.ACTIVE, None)
    assert "rebuilt" in d.sentence
    fresh = run(server, seen(Power.ABSENT))
    assert fresh.actions == (A.CREATE, A.START, A.ATTACH)
    assert fresh.status is not None
    assert fresh.status.task_state is None


def test_failed_keeps_the_owner_and_says_why() -> None:
    server = Server(spec=SPEC, status=status(VmState.ACTIVE))
    st = failed(server, me="h0", reason="the guest agent exited", now_iso=NOW)
    assert (st.host, st.state, st.error) == ("h0", VmState.ERROR, "the guest agent exited")
    assert not Server(spec=SPEC, status=st).settled()
    fresh = failed(Server(spec=SPEC), me="h0", reason="x", now_iso=NOW)
    assert fresh.state is VmState.ERROR


def test_decisions_converge() -> None:
    """Applying a decision's status and the expected observation gives no further action."""
    observed_after = {
        VmState.ACTIVE: seen(Power.RUNNING),
        VmState.PAUSED: seen(Power.FROZEN),
        VmState.STOPPED: seen(Power.STOPPED, channel=None),
    }
    for desired in (Desired.ACTIVE, Desired.PAUSED, Desired.STOPPED):
        for power in Power:
            spec = replace(SPEC, desired=desired)
            d = run(Server(spec=spec, status=status(VmState.ACTIVE)), seen(power))
            st = d.status or status(VmState.ACTIVE)
            after = run(Server(spec=spec, status=st), observed_after[st.state])
            assert after.idle, (desired, power, after.sentence)


# --- live migration by copying (qemu) ---------------------------------------------------

URI = "tcp:198.18.0.3:40000"


def run_copy(server: Server, observed: Observed, *, me: str) -> Decision:
    return decide(
        server,
        observed,
        me=me,
        channel_dir=CH0 if me == "h0" else CH1,
        host_alive=lambda h: h in ("h0", "h1"),
        now_iso=NOW,
        move_style=MoveStyle.COPY,
    )


def waiting_copy(uri: str | None = URI) -> Observed:
    return Observed(power=Power.INCOMING, pids=(20,), guest_pid=20, incoming_uri=uri)


def test_copy_move_target_receives_then_waits_for_the_stream() -> None:
    moving = Server(spec=replace(SPEC, host="h1"), status=status(VmState.ACTIVE))
    # The target starts a copy first; the owner waits for it.
    assert run_copy(moving, seen(Power.ABSENT), me="h1").actions == (A.RECEIVE,)
    owner_waits = run_copy(moving, seen(Power.RUNNING), me="h0")
    assert owner_waits.idle
    assert "ready to receive" in owner_waits.sentence
    # The copy waits and says where: the owner sends the server there, then hands over.
    ready = replace(moving, incoming=IncomingRecord(name="vm1", host="h1", uri=URI))
    assert run_copy(ready, waiting_copy(), me="h1").idle
    d = run_copy(ready, seen(Power.RUNNING), me="h0")
    assert d.actions == (A.MIGRATE,)
    assert d.status is not None
    assert (d.status.host, d.status.state, d.status.migrated_to) == ("h1", VmState.MIGRATING, URI)
    # The new owner waits while its copy still receives that stream...
    handed = replace(ready, status=d.status)
    assert run_copy(handed, waiting_copy(), me="h1").idle
    # ...and once it runs, reports it and drops the incoming record.
    done = run_copy(handed, replace(seen(Power.RUNNING), channel_dir=CH1), me="h1")
    assert done.actions == (A.DROP_INCOMING,)
    assert done.status is not None
    assert (done.status.state, done.status.migrated_to, done.status.task_state) == (
        VmState.ACTIVE,
        None,
        None,
    )


def test_copy_move_of_a_copy_nobody_sends_to_is_ended() -> None:
    # A cold hand-over (nothing migrated to the copy): stop it, then boot as usual.
    cold = Server(
        spec=replace(SPEC, host="h1"),
        status=status(VmState.MIGRATING, host="h1", task_state="migrating"),
        incoming=IncomingRecord(name="vm1", host="h1", uri=URI),
    )
    d = run_copy(cold, waiting_copy(), me="h1")
    assert d.actions[:3] == (A.STOP, A.START, A.ATTACH)
    assert A.DROP_INCOMING in d.actions


def test_copy_move_target_of_a_stopped_server_does_not_receive() -> None:
    stopped = Server(spec=replace(SPEC, host="h1"), status=status(VmState.STOPPED))
    assert run_copy(stopped, seen(Power.ABSENT), me="h1").idle


def test_copy_target_removes_its_copy_when_the_server_is_deleted() -> None:
    gone = Server(
        spec=replace(SPEC, host="h1", desired=Desired.DELETED), status=status(VmState.ACTIVE)
    )
    assert run_copy(gone, waiting_copy(), me="h1").actions == (A.DELETE,)
    assert run_copy(gone, seen(Power.ABSENT), me="h1").idle


def test_a_crash_is_cleaned_up_and_reported() -> None:
    server = Server(spec=SPEC, status=status(VmState.ACTIVE))
    crashed = Observed(power=Power.STOPPED, crashed="QEMU was killed by signal 9")
    d = run(server, crashed)
    assert d.actions == (A.STOP,)
    assert d.status is not None
    assert d.status.state is VmState.ERROR
    assert d.status.error == "server vm1 crashed: QEMU was killed by signal 9"
    # Once cleaned up (no crash seen any more), it is started again.
    again = run(replace(server, status=d.status), seen(Power.STOPPED, channel=None))
    assert again.actions == (A.START, A.ATTACH)


def test_copy_move_target_never_restarts_a_copy_the_stream_has_arrived_in() -> None:
    # The stream has arrived (the copy runs) before the owner's hand-over is in the
    # store: the target waits; it must not start another copy (ending this one).
    moving = Server(
        spec=replace(SPEC, host="h1"),
        status=status(VmState.ACTIVE),
        incoming=IncomingRecord(name="vm1", host="h1", uri=URI),
    )
    arrived = replace(seen(Power.RUNNING), channel_dir=CH1, incoming_uri=URI)
    d = run_copy(moving, arrived, me="h1")
    assert d.idle
    assert "arrived" in d.sentence
    # A running copy of another stream is not taken for it.
    other = replace(arrived, incoming_uri="tcp:198.18.0.3:1")
    assert run_copy(moving, other, me="h1").actions == (A.RECEIVE,)


# -- seed 003's behaviour table: the online vCPUs a status keeps ---------------------------


def _scaled_down(**kw: object) -> ServerStatus:
    return status(VmState.ACTIVE, online_cpus=(0, 1), **kw)


def test_a_scaled_down_server_stays_scaled_down_across_a_reboot() -> None:
    spec = replace(SPEC, reboot_count=1)
    d = run(Server(spec=spec, status=_scaled_down()), seen(Power.RUNNING))
    assert A.REBOOT in d.actions
    assert d.status is not None
    assert d.status.online_cpus == (0, 1)


def test_a_scaled_down_server_stays_scaled_down_across_stop_and_start() -> None:
    stopped = run(
        Server(spec=replace(SPEC, desired=Desired.STOPPED), status=_scaled_down()),
        seen(Power.RUNNING),
    )
    assert stopped.status is not None
    assert stopped.status.online_cpus == (0, 1)
    started = run(Server(spec=SPEC, status=stopped.status), seen(Power.STOPPED, channel=None))
    assert A.START in started.actions
    assert started.status is not None
    assert started.status.online_cpus == (0, 1)


def test_a_scaled_down_server_stays_scaled_down_across_a_crash_restart() -> None:
    observed = replace(seen(Power.STOPPED), crashed="its guest agent was killed")
    crashed = run(Server(spec=SPEC, status=_scaled_down()), observed)
    assert crashed.status is not None
    assert (crashed.status.state, crashed.status.online_cpus) == (VmState.ERROR, (0, 1))
    again = run(Server(spec=SPEC, status=crashed.status), seen(Power.STOPPED, channel=None))
    assert A.START in again.actions
    assert again.status is not None
    assert again.status.online_cpus == (0, 1)


def test_a_scaled_down_server_stays_scaled_down_across_a_live_migration() -> None:
    spec = replace(SPEC, host="h1")
    src = run(Server(spec=spec, status=_scaled_down()), seen(Power.RUNNING))
    assert src.status is not None
    assert src.status.online_cpus == (0, 1)
    dst = run(Server(spec=spec, status=src.status), seen(Power.RUNNING, channel=None), me="h1")
    assert dst.status is not None
    assert dst.status.online_cpus == (0, 1)


def test_a_scaled_down_server_reverts_to_every_vcpu_on_a_cold_migration() -> None:
    spec = replace(SPEC, host="h1", live_migration=False)
    src = run(Server(spec=spec, status=_scaled_down()), seen(Power.RUNNING))
    assert src.status is not None
    assert src.status.online_cpus == (0, 1, 2)
    dst = run(Server(spec=spec, status=src.status), seen(Power.STOPPED, channel=None), me="h1")
    assert dst.status is not None
    assert dst.status.online_cpus == (0, 1, 2)


def test_a_resized_server_comes_back_with_every_vcpu_of_its_new_flavor() -> None:
    spec = replace(SPEC, vcpus=4, reboot_count=1)
    d = run(Server(spec=spec, status=_scaled_down()), seen(Power.RUNNING))
    assert d.actions == (A.STOP, A.START, A.ATTACH)
    assert "resized to 4 vCPU(s)" in d.sentence
    assert d.status is not None
    assert (d.status.online_cpus, d.status.vcpus) == ((0, 1, 2, 3), 4)


def test_a_record_that_makes_no_sense_is_every_vcpu() -> None:
    for online in [(1, 2), (0, 7), ()]:
        d = run(
            Server(spec=SPEC, status=status(VmState.ACTIVE, online_cpus=online)),
            seen(Power.RUNNING),
        )
        assert d.status is not None
        assert d.status.online_cpus == ((0,) if online == (0, 7) else (0, 1, 2))


def test_a_rebuild_makes_the_server_again_and_keeps_it_scaled_down() -> None:
    spec = replace(SPEC, rebuild_count=1)
    d = run(Server(spec=spec, status=_scaled_down()), seen(Power.RUNNING))
    assert d.actions == (A.DELETE, A.CREATE, A.START, A.ATTACH)
    assert d.status is not None
    assert (d.status.online_cpus, d.status.rebuild_count) == ((0, 1), 1)
    assert "rebuild 1 asked" in d.sentence
    assert Server(spec=spec, status=d.status).settled()
    assert not Server(spec=spec, status=_scaled_down()).settled()
