"""Transfer records (pure): keys, codecs, the join readers see, stale receivers, pacing."""

from __future__ import annotations

import dataclasses

import pytest

from servergroup.transfers import record as rec
from servergroup.transfers.record import TransferState


def sender(**changes: object) -> rec.SenderRecord:
    base: dict[str, object] = dict(
        transfer_id="ab",
        host="h1",
        address="198.18.0.2",
        port=18383,
        group="239.192.83.71",
        mtu=1500,
        expected_clients=2,
        state=TransferState.RUNNING,
        started_at=100.0,
        updated_at=100.0,
    )
    base.update(changes)
    return rec.SenderRecord(**base)  # type: ignore[arg-type]


def receiver(name: str, state: TransferState = TransferState.RUNNING) -> rec.ReceiverRecord:
    return rec.ReceiverRecord(
        name=name, host="h", address=name, state=state, started_at=101.0, updated_at=101.0
    )


def test_keys_round_trip_and_foreign_keys_are_none() -> None:
    ep = rec.endpoint("198.18.0.2", 18383)
    assert rec.parse_key(rec.sender_key(ep)) == (ep, None)
    assert rec.parse_key(rec.receiver_key(ep, "198.18.0.3")) == (ep, "198.18.0.3")
    for foreign in ("registry/x", "transfers/", "transfers/a/b", f"{rec.receivers_prefix(ep)}"):
        assert rec.parse_key(foreign) is None


def test_codecs_round_trip_and_refuse_garbage() -> None:
    s = sender(clients=(rec.ClientRow(name="c", address="a:1", status="finished"),))
    assert rec.decode_sender(rec.encode_sender(s)) == s
    r = receiver("x", TransferState.FINISHED)
    assert rec.decode_receiver(rec.encode_receiver(r)) == r
    for garbage in (b"", b"[]", b'{"state": "nope"}', b'{"state": "running"}', b"\xff"):
        with pytest.raises(rec.RecordError):
            rec.decode_sender(garbage)
        with pytest.raises(rec.RecordError):
            rec.decode_receiver(garbage)
    with pytest.raises(rec.RecordError):
        rec.decode_sender(rec.encode_sender(s).replace(b'"rate":0.0', b'"rate":"x"'))


def test_join_groups_by_endpoint_newest_first_and_names_bad_records() -> None:
    old, new = rec.endpoint("10.0.0.1", 1), rec.endpoint("10.0.0.2", 1)
    items = [
        (rec.sender_key(old), rec.encode_sender(sender(started_at=50.0))),
        (rec.receiver_key(old, "b"), rec.encode_receiver(receiver("b"))),
        (rec.receiver_key(old, "a"), rec.encode_receiver(receiver("a"))),
        (rec.receiver_key(old, "bad"), b"{"),
        (rec.receiver_key(new, "z"), rec.encode_receiver(receiver("z"))),  # no sender record
        ("transfers/garbage/key/x", b"{}"),
    ]
    got = rec.join(items)
    assert [t.endpoint for t in got] == [new, old]
    assert got[0].sender is None
    assert [r.name for r in got[0].receivers] == ["z"]
    assert [r.name for r in got[1].receivers] == ["a", "b"]
    assert len(got[1].problems) == 1
    assert "bad" in got[1].problems[0]


def test_a_running_sender_not_written_for_a_while_is_stale() -> None:
    t = rec.Transfer(endpoint="e", sender=sender(updated_at=100.0))
    assert not t.stale(100.0 + rec.STALE_AFTER)
    assert t.stale(100.1 + rec.STALE_AFTER)
    done = rec.Transfer(endpoint="e", sender=sender(state=TransferState.FINISHED))
    assert not done.stale(1e9)


def test_stale_receivers_are_final_and_ended_before_the_sender_or_not_its_clients() -> None:
    ep = "10.0.0.1:1"

    def item(name: str, state: TransferState, ended_at: float | None) -> tuple[str, bytes]:
        r = dataclasses.replace(receiver(name, state), ended_at=ended_at)
        return rec.receiver_key(ep, name), rec.encode_receiver(r)

    items = [
        item("old", TransferState.FINISHED, 50.0),  # ended long before the new sender
        item("joining", TransferState.RUNNING, None),
        item("fast", TransferState.FINISHED, 99.5),  # within the clock slack: kept at the start
        item("failed-old", TransferState.FAILED, 10.0),
        (rec.receiver_key(ep, "junk"), b"junk"),
        (
            rec.receiver_key("10.0.0.9:1", "other"),
            rec.encode_receiver(receiver("o", TransferState.FINISHED)),
        ),
    ]
    assert rec.stale_receivers(items, ep, started_at=100.0) == [
        rec.receiver_key(ep, "old"),
        rec.receiver_key(ep, "failed-old"),
        rec.receiver_key(ep, "junk"),
    ]
    # At the end, the sender's report names its clients: the others go.
    assert rec.stale_receivers(items, ep, clients={"fast", "joining"}) == [
        rec.receiver_key(ep, "old"),
        rec.receiver_key(ep, "failed-old"),
        rec.receiver_key(ep, "junk"),
    ]
    assert rec.stale_receivers(items, ep, clients={"old"}) == [
        rec.receiver_key(ep, "fast"),
        rec.receiver_key(ep, "failed-old"),
        rec.receiver_key(ep, "junk"),
    ]


def test_the_pacer_writes_news_at_most_every_interval_and_beats_without_news() -> None:
    p = rec.WritePacer(interval=0.5, heartbeat_interval=10.0)
    assert p.due(0.0)  # the first record at once
    p.wrote(0.0)
    p.changed()
    assert not p.due(0.3)
    assert p.next_timer() == 0.5
    assert p.due(0.5)
    p.wrote(0.5)
    assert not p.due(5.0)  # no news
    assert p.next_timer() == 10.5
    assert p.due(10.5)  # the heartbeat
    # Many changes in one interval give one write.
    p.wrote(11.0)
    for _ in range(100):
        p.changed()
    writes = 0
    now = 11.0
    while now < 12.0:
        if p.due(now):
            p.wrote(now)
            writes += 1
        now += 0.01
    assert writes == 1  # at 11.5: one write carries all of them
