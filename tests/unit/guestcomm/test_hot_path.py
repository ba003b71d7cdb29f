"""The helpers of the per-message path: `protocol.record_builder`, `sockets.BurstReader`."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass

import pytest

from servergroup.common.errors import UsageError
from servergroup.groups.client import BroadcastReceived
from servergroup.guestcomm import sockets
from servergroup.guestcomm.protocol import Envelope, record_builder
from servergroup.guestcomm.sockets import Datagram


def test_built_records_are_the_classes_own() -> None:
    build = record_builder(Datagram)
    made = build(b"x", "app", False)
    own = Datagram(data=b"x", sender="app", truncated=False)
    assert made == own
    assert hash(made) == hash(own)
    assert type(made) is Datagram
    assert repr(made) == repr(own)
    with pytest.raises(FrozenInstanceError):
        made.sender = "other"  # type: ignore[misc]
    received = record_builder(BroadcastReceived)("text", "instance-1", 7)
    assert received == BroadcastReceived(text="text", source_instance="instance-1", seq=7)
    envelope = record_builder(Envelope)({"a": 1}, "d", "s", None, "i")
    assert envelope == Envelope(data={"a": 1}, dest_addr="d", source_addr="s", source_instance="i")


def test_only_slotted_records_of_three_or_five_fields_without_post_init() -> None:
    @dataclass(frozen=True, slots=True)
    class Two:
        a: int
        b: int

    @dataclass(frozen=True)
    class NoSlots:
        a: int
        b: int
        c: int

    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int
        b: int
        c: int

        def __post_init__(self) -> None:
            raise ValueError

    for cls in (Two, NoSlots, Checked):
        with pytest.raises(UsageError):
            record_builder(cls)


def test_a_burst_reader_yields_only_on_a_wake_up_close_after_the_previous() -> None:
    clock = [100.0]
    yields: list[float] = []
    reader = sockets.BurstReader(lambda: clock[0], lambda: yields.append(clock[0]))
    reader.woken()  # the first: a lone message
    clock[0] += sockets.BURST_WAKE_INTERVAL / 2
    reader.woken()  # close after it: a busy stream
    clock[0] += sockets.BURST_WAKE_INTERVAL * 2
    reader.woken()  # far after: a lone message again
    assert yields == [100.0 + sockets.BURST_WAKE_INTERVAL / 2]
    assert reader.yields == 1
