"""Which notification a registry change makes: tables of before/after."""

from __future__ import annotations

from dataclasses import replace

import pytest

from servergroup.groups.notify import host_notifications, notification_for
from servergroup.servers.model import (
    HostRecord,
    RegistrySnapshot,
    Server,
    ServerSpec,
    ServerStatus,
    VmState,
    server_info,
)

NOW = "2026-11-21T15:00:00Z"
SPEC = ServerSpec(
    name="vm-1", instance="instance-0000000a", uuid="0000000a-0000", group="g", host="h1"
)


def server(
    state: VmState | None,
    *,
    host: str = "h1",
    reboots: int = 0,
    cpus: tuple[int, ...] = (0,),
    vcpus: int = 1,
    live: bool = True,
) -> Server:
    spec = replace(SPEC, vcpus=vcpus, live_migration=live)
    if state is None:
        return Server(spec=spec)
    status = ServerStatus(
        name="vm-1", host=host, state=state, reboot_count=reboots, online_cpus=cpus, vcpus=vcpus
    )
    return Server(spec=spec, status=status)


def rebuilding(host: str) -> Server:
    """A server its evacuation handed over to `host`, not yet reported by it."""
    base = server(VmState.BUILDING, host=host)
    assert base.status is not None
    return replace(base, status=replace(base.status, task_state="rebuilding"))


A, P, S = VmState.ACTIVE, VmState.PAUSED, VmState.STOPPED
B, M, E, D = VmState.BUILDING, VmState.MIGRATING, VmState.ERROR, VmState.DELETED

TABLE: list[tuple[str, Server | None, Server | None, str | None]] = [
    ("spec written, not running yet", None, server(None), None),
    ("first status: building", server(None), server(B), None),
    ("first status: active", server(None), server(A), "create.end"),
    ("building -> active", server(B), server(A), "create.end"),
    ("new with status active at once", None, server(A), "create.end"),
    ("active -> paused", server(A), server(P), "pause.end"),
    ("paused -> active", server(P), server(A), "unpause.end"),
    ("active -> stopped", server(A), server(S), "power_off.end"),
    ("paused -> stopped", server(P), server(S), "power_off.end"),
    ("stopped -> active", server(S), server(A), "power_on.end"),
    ("active -> error", server(A), server(E), "error"),
    ("active -> migrating", server(A), server(M), None),
    ("its host died: rebuilding elsewhere", server(A), rebuilding("h2"), None),
    ("rebuilt: active on the new host", rebuilding("h2"), server(A, host="h2"), "evacuate.end"),
    ("rebuilt: paused on the new host", rebuilding("h2"), server(P, host="h2"), "evacuate.end"),
    ("rebuild failed", rebuilding("h2"), server(E, host="h2"), "error"),
    ("migrating -> active elsewhere", server(M), server(A, host="h2"), "live_migration.end"),
    # The source hands over by writing MIGRATING with the target as host already.
    ("handed over -> active", server(M, host="h2"), server(A, host="h2"), "live_migration.end"),
    (
        "cold, handed over -> active",
        server(M, host="h2", live=False),
        server(A, host="h2", live=False),
        "migrate.end",
    ),
    ("cold migration", server(S), server(A, host="h2", live=False), "migrate.end"),
    ("host changed while stopped", server(S), server(S, host="h2"), None),
    ("reboot", server(A), server(A, reboots=1), "reboot.end"),
    ("reboot seen while paused", server(P), server(P, reboots=1), None),
    ("resize", server(A), server(A, vcpus=4, cpus=(0, 1, 2, 3)), "resize.end"),
    (
        "rebuild",
        server(A),
        replace(server(A), status=replace(server(A).status, rebuild_count=1)),  # type: ignore[type-var]
        "rebuild.end",
    ),
    ("resize with its reboot", server(A), server(A, vcpus=4, reboots=1), "resize.end"),
    (
        "resize asked, not done yet",
        server(A),
        replace(server(A), spec=replace(SPEC, vcpus=4)),
        None,
    ),
    ("scale down", server(A, cpus=(0, 1)), server(A, cpus=(0,)), "scale.end"),
    ("scale up", server(A, cpus=(0,)), server(A, cpus=(0, 1)), "scale.end"),
    ("status -> deleted", server(A), server(D), "delete.end"),
    ("records removed", server(A), None, "delete.end"),
    ("deleted, then records removed", server(D), None, None),
    ("never ran, removed", server(None), None, "delete.end"),
    ("spec change only (desired)", server(A), Server(spec=replace(SPEC, host="h2")), None),
    ("status gone, spec kept", server(A), server(None), None),
    ("nothing changed", server(A), server(A), None),
    ("no records at all", None, None, None),
]


@pytest.mark.parametrize(("case", "before", "after", "what"), TABLE, ids=[t[0] for t in TABLE])
def test_notification_table(
    case: str, before: Server | None, after: Server | None, what: str | None
) -> None:
    event = notification_for(before, after, now_iso=NOW)
    if what is None:
        assert event is None
        return
    assert event is not None
    assert event["event_type"] == f"compute.instance.{what}"
    assert event["priority"] == ("ERROR" if what == "error" else "INFO")
    assert event["timestamp"] == NOW
    subject = after if after is not None else before
    assert subject is not None
    assert event["payload"] == server_info(subject)


def test_payload_says_when_the_host_is_dead() -> None:
    event = notification_for(server(A), server(P), now_iso=NOW, host_alive=False)
    assert event is not None
    payload = event["payload"]
    assert isinstance(payload, dict)
    assert payload["host_alive"] is False
    assert payload["task_state"] == "lost"


def snapshot(*, hosts: tuple[str, ...]) -> RegistrySnapshot:
    def rec(name: str) -> HostRecord:
        return HostRecord(name=name, channel_dir="/x", pid=1, started_at=NOW)

    def on(name: str, host: str, state: VmState | None) -> Server:
        spec = replace(SPEC, name=name, instance=f"instance-{name}", host=host)
        if state is None:
            return Server(spec=spec)
        return Server(spec=spec, status=ServerStatus(name=name, host=host, state=state))

    servers = {
        "a": on("a", "h1", A),
        "b": on("b", "h1", P),
        "c": on("c", "h2", A),
        "d": on("d", "h1", D),
        "e": on("e", "h1", None),  # never ran: not on any host yet
    }
    return RegistrySnapshot(revision=5, servers=servers, hosts={h: rec(h) for h in hosts})


HOST_TABLE: list[tuple[str, bool, bool, str | None, list[str]]] = [
    ("host died", True, False, "lost", ["a", "b"]),
    ("host came back", False, True, "recovered", ["a", "b"]),
    ("host record updated", True, True, None, []),
    ("still absent", False, False, None, []),
]


@pytest.mark.parametrize(
    ("case", "alive_before", "alive_after", "what", "names"),
    HOST_TABLE,
    ids=[t[0] for t in HOST_TABLE],
)
def test_host_table(
    case: str, alive_before: bool, alive_after: bool, what: str | None, names: list[str]
) -> None:
    snap = snapshot(hosts=("h1", "h2") if alive_after else ("h2",))
    events = host_notifications(
        "h1", alive_before=alive_before, alive_after=alive_after, snapshot=snap, now_iso=NOW
    )
    assert [e.server.name for e in events] == names
    for e in events:
        assert e.event["event_type"] == f"compute.instance.{what}"
        assert e.event["priority"] == ("ERROR" if what == "lost" else "INFO")
        assert e.event["payload"] == server_info(e.server, host_alive=alive_after)


def test_a_new_server_event_is_its_own_notification() -> None:
    """A `ServerEvent` written by the host (the autoscaler's decision) is
    `compute.instance.<what>`, its sentence and details in the payload; the same one
    again, or one that goes, is no news."""
    from servergroup.servers.model import ServerEvent

    before = server(A, cpus=(0, 1), vcpus=2)
    news = ServerEvent(
        name="vm-1",
        what="autoscale",
        host="h1",
        at="2026-11-21T15:00:01Z",
        sentence="server vm-1 was 0.0% busy ...",
        details={"direction": "down"},
    )
    after = replace(before, event=news)
    event = notification_for(before, after, now_iso=NOW)
    assert event is not None
    assert (event["event_type"], event["priority"]) == ("compute.instance.autoscale", "INFO")
    payload = event["payload"]
    assert isinstance(payload, dict)
    assert payload["details"] == {
        "sentence": "server vm-1 was 0.0% busy ...",
        "host": "h1",
        "at": "2026-11-21T15:00:01Z",
        "direction": "down",
    }
    assert payload["name"] == "vm-1"
    assert notification_for(after, after, now_iso=NOW) is None
    assert notification_for(after, before, now_iso=NOW) is None
    # A later one is news again; a status change beside it is decided by the table.
    later = replace(after, event=replace(news, at="2026-11-21T15:00:09Z"))
    again = notification_for(after, later, now_iso=NOW)
    assert again is not None
    assert again["event_type"] == "compute.instance.autoscale"
    scaled = replace(later, status=replace(before.status, online_cpus=(0,)))  # type: ignore[type-var]
    table = notification_for(after, scaled, now_iso=NOW)
    assert table is not None
    assert table["event_type"] == "compute.instance.scale.end"
