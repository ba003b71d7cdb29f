"""The history checks of the concurrent-operations workload catch what they are meant to.

Pure: histories written by hand, each with one fault (a policy broken, a reboot
lost, a deleted server back, a success that the history does not show).
"""

from __future__ import annotations

from dataclasses import replace

from servergroup.coordination import EventKind, WatchEvent
from servergroup.servers.model import (
    Desired,
    ServerSpec,
    ServerStatus,
    VmState,
    encode_record,
)
from servergroup.servers.registry import spec_key, status_key
from tests.integration.servers.workload import Kind, OpRecord, check_history, two_groups

LAYOUT = two_groups(["a1", "a2", "n1", "n2"], ["h1", "h2"])


def spec(name: str, host: str, **changes: object) -> ServerSpec:
    group = LAYOUT.servers[name]
    base = ServerSpec(
        name=name, instance="instance-00000001", uuid=f"u-{name}", group=group, host=host
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def status(
    name: str, host: str, state: VmState = VmState.ACTIVE, **changes: object
) -> ServerStatus:
    return replace(ServerStatus(name=name, host=host, state=state), **changes)  # type: ignore[arg-type]


def put(revision: int, record: ServerSpec | ServerStatus) -> WatchEvent:
    key = spec_key(record.name) if isinstance(record, ServerSpec) else status_key(record.name)
    return WatchEvent(
        kind=EventKind.PUT,
        key=key,
        value=encode_record(record),
        revision=revision,
        create_revision=revision,
    )


def gone(revision: int, name: str) -> list[WatchEvent]:
    return [
        WatchEvent(kind=EventKind.DELETE, key=k, value=b"", revision=revision, create_revision=0)
        for k in (spec_key(name), status_key(name))
    ]


def op(kind: Kind, name: str, written: ServerSpec | None, at: int, done: int) -> OpRecord:
    return OpRecord(
        client=0,
        seq=0,
        kind=kind,
        server=name,
        target=None,
        began_at=0.0,
        ended_at=1.0,
        begin_revision=at - 1,
        done_revision=done,
        outcome="ok",
        message="",
        written_revision=at if written is not None else 0,
        written=written,
        reported_revision=0,
        conflicts=0,
    )


def test_a_clean_history_passes() -> None:
    first = spec("n1", "h1")
    rebooted = replace(first, reboot_count=1)
    events = [
        put(2, first),
        put(3, status("n1", "h1")),
        put(4, rebooted),
        put(5, status("n1", "h1", reboot_count=1)),
    ]
    records = [op(Kind.CREATE, "n1", first, 2, 3), op(Kind.REBOOT, "n1", rebooted, 4, 5)]
    problems, _ = check_history(LAYOUT, events, records)
    assert problems == []


def test_anti_affinity_broken_at_one_revision_is_found() -> None:
    events = [put(2, spec("n1", "h1")), put(3, spec("n2", "h1")), put(4, spec("n2", "h2"))]
    problems, _ = check_history(LAYOUT, events, [])
    assert problems == ["revision 3: anti-affinity group anti broken: n1 on h1, n2 on h1"]


def test_affinity_broken_is_found_and_deleted_members_do_not_count() -> None:
    events = [
        put(2, spec("a1", "h1")),
        put(3, spec("a2", "h1", desired=Desired.DELETED)),
        put(4, spec("a2", "h2", desired=Desired.DELETED)),
        put(5, spec("a1", "h2")),
        put(6, spec("a2", "h1", uuid="u-a2-new")),
    ]
    problems, _ = check_history(LAYOUT, events, [])
    assert problems == ["revision 6: affinity group aff broken: a1 on h2, a2 on h1"]


def test_a_lost_reboot_is_found() -> None:
    first = spec("n1", "h1")
    one = replace(first, reboot_count=1)
    events = [put(2, first), put(3, one), put(4, one)]  # two reboots wrote count 1 each
    records = [op(Kind.REBOOT, "n1", one, 3, 3), op(Kind.REBOOT, "n1", one, 4, 4)]
    records = [
        replace(r, outcome="OperationTimeout", reported_revision=r.written_revision)
        for r in records
    ]
    problems, _ = check_history(LAYOUT, events, records)
    assert "server n1 (u-n1): its spec counts 1 reboots, 2 reboot requests were written" in problems


def test_a_deleted_server_that_comes_back_is_found() -> None:
    first = spec("n1", "h1")
    events = [
        put(2, first),
        put(3, replace(first, desired=Desired.DELETED)),
        put(4, replace(first, desired=Desired.PAUSED)),
        *gone(5, "n1"),
        put(6, first),
    ]
    problems, _ = check_history(LAYOUT, events, [])
    assert problems == [
        "revision 4: server n1 (u-n1) was asked to be deleted, then its spec asked for "
        "paused again",
        "revision 6: server n1 (u-n1) came back after its records were removed",
        "revision 6: server n1 (u-n1) was asked to be deleted, then its spec asked for "
        "active again",
    ]


def test_a_success_the_history_does_not_show_is_found() -> None:
    first = spec("n1", "h1")
    paused = replace(first, desired=Desired.PAUSED)
    events = [put(2, first), put(3, status("n1", "h1")), put(4, paused)]
    records = [op(Kind.PAUSE, "n1", paused, 4, 4), op(Kind.DELETE, "n1", None, 4, 4)]
    problems, _ = check_history(LAYOUT, events, records)
    assert problems == [
        "pause n1 (client 0, #0) succeeded, but no status settled its spec (written at revision 4)",
        "delete n1 (client 0, #0) succeeded, but its records were not removed before it returned",
    ]
