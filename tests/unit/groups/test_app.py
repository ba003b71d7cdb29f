"""The sample app's lines: nacks with the broadcast's id, and the counters at exit."""

from __future__ import annotations

from servergroup.groups.app import event_json, format_event, format_stats
from servergroup.groups.client import BroadcastStats, BroadcastUnconfirmed, NackReceived


def test_a_nack_shows_the_refused_broadcasts_id_when_it_has_one() -> None:
    plain = NackReceived(orig_msg_type="status_query", reason="busy")
    refused = NackReceived(orig_msg_type="broadcast", reason="busy: try later", id=7)
    assert format_event(plain) == "nack: status_query: busy"
    assert format_event(refused) == "nack: broadcast 7: busy: try later"
    assert event_json(plain) == {"kind": "nack", "orig_msg_type": "status_query", "reason": "busy"}
    assert event_json(refused) == {
        "kind": "nack",
        "orig_msg_type": "broadcast",
        "reason": "busy: try later",
        "id": 7,
    }
    unconfirmed = BroadcastUnconfirmed(orig_msg_type="broadcast", reason="not confirmed", id=3)
    assert format_event(unconfirmed) == "nack: broadcast 3: not confirmed"


def test_the_counters_line() -> None:
    stats = BroadcastStats(sent=5, acknowledged=3, refused=1, unconfirmed=0, missed=2, pending=1)
    assert format_stats(stats) == (
        "app: broadcasts sent 5, acknowledged 3, refused 1, unconfirmed 0, missed 2, pending 1"
    )
