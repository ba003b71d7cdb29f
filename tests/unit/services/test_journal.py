"""The exactly-one checker (`services.journal`) on hand-written journals."""

from __future__ import annotations

import pytest

from servergroup.services.journal import (
    JournalError,
    Phase,
    Record,
    check,
    decode_record,
    encode_record,
    intervals,
    overlap_seconds,
)

B, E = Phase.BEGIN, Phase.END


def r(at: float, node: str, action: str, phase: Phase, token: int = 1, code: int = 0) -> Record:
    return Record(
        at=at,
        node=node,
        instance="db:0",
        action=action,
        phase=phase,
        token=token,
        code=code if phase is E else None,
    )


def test_a_clean_failover_has_no_violation() -> None:
    journal = [
        r(1, "h1", "start", B, 5),
        r(1.1, "h1", "start", E, 5),
        r(2, "h1", "promote", B, 5),
        r(2.1, "h1", "promote", E, 5),
        r(3, "h1", "stop", B, 5),
        r(3.2, "h1", "stop", E, 5),
        r(3.3, "h2", "start", B, 9),
        r(3.4, "h2", "start", E, 9),
        r(3.5, "h2", "promote", B, 9),
    ]
    assert check(journal) == []
    spans = intervals(journal)
    assert [(s.subject, s.node, s.end_at) for s in spans] == [
        ("db master", "h1", 3.2),
        ("db master", "h2", None),
        ("db:0", "h1", 3.2),
        ("db:0", "h2", None),
    ]


def test_two_owners_at_once_are_found_and_measured() -> None:
    journal = [
        r(1, "h1", "start", B, 5),
        r(2, "h2", "start", B, 9),
        r(3, "h1", "stop", B, 5),
        r(3.5, "h1", "stop", E, 5),
    ]
    violations = check(journal)
    assert len(violations) == 1
    assert "db:0 was held by h1 (token 5) and h2 (token 9) at once from 2.000" in (
        violations[0].sentence
    )
    assert overlap_seconds(violations) == pytest.approx(1.5)


def test_a_failed_stop_keeps_the_owner() -> None:
    journal = [
        r(1, "h1", "start", B, 5),
        r(2, "h1", "stop", B, 5),
        r(3, "h1", "stop", E, 5, code=1),
        r(4, "h2", "start", B, 9),
    ]
    assert len(check(journal)) == 1


def test_two_masters_and_tokens_going_back() -> None:
    masters = [
        r(1, "h1", "start", B, 5),
        r(1, "h2", "start", B, 6),
        r(2, "h1", "promote", B, 5),
        r(3, "h2", "promote", B, 6),
    ]
    assert [v.sentence.split(" was")[0] for v in check(masters)] == ["db master", "db:0"]
    # db:0 of two nodes is one instance held twice; give each its own instance:
    back = [
        r(1, "h1", "start", B, 9),
        r(2, "h1", "stop", E, 9),
        r(3, "h2", "start", B, 7),
        r(4, "h2", "stop", E, 7),
        r(5, "h3", "start", B, 7),
    ]
    sentences = [v.sentence for v in check(back)]
    assert sentences == [
        "db:0 started on h2 with token 7 after token 9 on h1.",
        "db:0 started on h3 with token 7 after token 9 on h1.",
    ]
    same_node = [r(1, "h1", "start", B, 9), r(2, "h1", "start", B, 9)]
    assert check(same_node) == []


def test_the_line_codec() -> None:
    record = r(1.25, "h1", "stop", E, 4, code=7)
    assert decode_record(encode_record(record)) == record
    for bad in ("", "[]", '{"at": 1}', encode_record(record).replace("stop", "dance")):
        with pytest.raises(JournalError):
            decode_record(bad)
