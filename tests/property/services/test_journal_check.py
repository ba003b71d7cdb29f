"""Properties of the exactly-one checker (hypothesis): clean handovers pass, overlaps are found."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from servergroup.services.journal import (
    JournalError,
    Phase,
    Record,
    check,
    decode_record,
    encode_record,
)

# One handover: which node, how long after the last stop it starts, how long it runs.
handovers = st.lists(
    st.tuples(
        st.sampled_from(("h1", "h2", "h3")),
        st.floats(min_value=0.001, max_value=5),
        st.floats(min_value=0.01, max_value=5),
    ),
    min_size=1,
    max_size=12,
)


def schedule(steps: list[tuple[str, float, float]]) -> list[Record]:
    records, now = [], 0.0
    for token, (node, gap, run) in enumerate(steps, start=1):
        begin, end = now + gap, now + gap + run
        records += [
            Record(
                at=begin, node=node, instance="s:0", action="start", phase=Phase.BEGIN, token=token
            ),
            Record(
                at=end,
                node=node,
                instance="s:0",
                action="stop",
                phase=Phase.END,
                token=token,
                code=0,
            ),
        ]
        now = end
    return records


@given(handovers)
def test_clean_handovers_have_no_violation(steps: list[tuple[str, float, float]]) -> None:
    assert check(schedule(steps)) == []


@given(handovers, st.data())
def test_an_early_start_on_another_node_is_found(
    steps: list[tuple[str, float, float]], data: st.DataObject
) -> None:
    records = schedule(steps)
    stops = [r for r in records if r.action == "stop"]
    first = data.draw(st.sampled_from(stops))
    other = "h9"
    early = Record(
        at=first.at - 0.001 * data.draw(st.integers(min_value=1, max_value=5)),
        node=other,
        instance="s:0",
        action="start",
        phase=Phase.BEGIN,
        token=10_000,
    )
    violations = check([*records, early])
    assert any("h9" in v.sentence and v.seconds > 0 for v in violations)


@given(st.text(max_size=120))
def test_garbage_lines_raise_only_our_error(line: str) -> None:
    with contextlib.suppress(JournalError):
        decode_record(line)


@given(handovers)
def test_records_round_trip(steps: list[tuple[str, float, float]]) -> None:
    for record in schedule(steps):
        assert decode_record(encode_record(record)) == record
