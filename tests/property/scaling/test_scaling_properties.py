"""Properties of the scaling codecs and the choice of CPU (hypothesis)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from servergroup.guestcomm.protocol import Json, ProtocolError
from servergroup.scaling.choice import (
    FIRST_ERROR_STATUS,
    Chosen,
    HelperEnd,
    HelperOutcome,
    Refused,
    choose_offline,
)
from servergroup.scaling.cpus import (
    MAX_CPU,
    CpuListError,
    format_cpu_list,
    parse_cpu_list,
    parse_cpuset_repr,
)
from servergroup.scaling.protocol import (
    MAX_TIMEOUT_MS,
    Direction,
    Result,
    ScaleNack,
    ScaleReply,
    ScaleRequest,
    SyncReply,
    SyncRequest,
    decode_reply,
    decode_request,
    encode_message,
)


def _one_sentence(exc: Exception) -> None:
    assert str(exc).endswith(".")
    assert "\n" not in str(exc)


cpu = st.integers(min_value=0, max_value=MAX_CPU)
cpu_sets = st.lists(cpu, max_size=40).map(lambda c: tuple(sorted(set(c))))


@given(cpu_sets)
def test_cpu_lists_round_trip(cpus: tuple[int, ...]) -> None:
    assert parse_cpu_list(format_cpu_list(cpus)) == cpus
    assert parse_cpu_list(format_cpu_list(cpus) + "\n") == cpus


@given(cpu_sets)
def test_the_original_set_repr_round_trips(cpus: tuple[int, ...]) -> None:
    assert parse_cpuset_repr(f"set([{', '.join(map(str, cpus))}])") == cpus


@given(st.text(max_size=30))
def test_any_text_is_a_cpu_list_or_one_sentence(text: str) -> None:
    for parse in (parse_cpu_list, parse_cpuset_repr):
        try:
            cpus = parse(text)
        except CpuListError as exc:
            _one_sentence(exc)
        else:
            assert list(cpus) == sorted(set(cpus))
            assert all(0 <= c <= MAX_CPU for c in cpus)


directions = st.sampled_from(Direction)
ids = st.none() | st.integers(min_value=0, max_value=2**63 - 1)
requests = st.one_of(
    st.builds(
        ScaleRequest,
        direction=st.just(Direction.DOWN),
        timeout_ms=st.integers(min_value=1, max_value=MAX_TIMEOUT_MS),
        id=ids,
    ),
    st.builds(
        ScaleRequest,
        direction=st.just(Direction.UP),
        timeout_ms=st.integers(min_value=1, max_value=MAX_TIMEOUT_MS),
        online_cpu=cpu,
        online_cpus=st.none() | cpu_sets,
        id=ids,
    ),
    st.just(SyncRequest()),
    st.builds(SyncReply, offline_cpus=cpu_sets),
)
replies = st.one_of(
    st.builds(
        ScaleReply,
        direction=directions,
        result=st.just(Result.SUCCESS),
        cpu=cpu,
        online_cpus=cpu_sets,
        id=ids,
    ),
    st.builds(
        ScaleReply, direction=directions, result=st.just(Result.FAIL), err_msg=st.text(), id=ids
    ),
    st.builds(ScaleNack, log_msg=st.text()),
)


@given(requests)
def test_requests_round_trip_through_json(msg: ScaleRequest | SyncRequest | SyncReply) -> None:
    assert decode_request(json.loads(json.dumps(encode_message(msg)))) == msg


@given(replies)
def test_replies_round_trip_through_json(msg: ScaleReply | ScaleNack) -> None:
    assert decode_reply(json.loads(json.dumps(encode_message(msg)))) == msg


_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=10)
_values: st.SearchStrategy[Json] = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_keys = st.sampled_from(
    [
        "version",
        "msg_type",
        "resource",
        "direction",
        "timeout_ms",
        "online_cpu",
        "online_cpus",
        "offline_cpus",
        "result",
        "offline_cpu",
        "err_msg",
        "id",
        "log_msg",
    ]
)
_near_messages = st.dictionaries(
    _keys,
    _values
    | st.sampled_from(
        [2, "cpu", "down", "up", "scale_request", "scale_sync", "success", "fail", [0, 1], 3]
    ),
)


@given(_near_messages | _values)
def test_any_json_decodes_or_is_one_protocol_error(obj: Json) -> None:
    for decode in (decode_request, decode_reply):
        try:
            decode(obj)
        except ProtocolError as exc:
            _one_sentence(exc)


outcomes = st.one_of(
    st.builds(HelperOutcome, end=st.just(HelperEnd.EXITED), status=st.integers(0, 255)),
    st.builds(HelperOutcome, end=st.sampled_from([HelperEnd.MISSING, HelperEnd.NOT_STARTED])),
    st.builds(HelperOutcome, end=st.just(HelperEnd.SIGNALLED), status=st.integers(1, 64)),
)


@given(outcomes, st.lists(st.integers(0, 300), max_size=12))
def test_the_choice_is_online_never_0_and_named_when_usable(
    outcome: HelperOutcome, online: list[int]
) -> None:
    choice = choose_offline(outcome, online)
    candidates = set(online) - {0}
    if not candidates:
        assert isinstance(choice, Refused)
        return
    assert isinstance(choice, Chosen)
    assert choice.cpu in candidates
    status = outcome.status if outcome.end is HelperEnd.EXITED else None
    if status is not None and 0 < status < FIRST_ERROR_STATUS and status in candidates:
        assert choice.cpu == status
    else:
        assert choice.cpu == max(candidates)
