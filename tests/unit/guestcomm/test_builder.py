"""`sockets.builder3`: the fast maker of the frozen records made once per message."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass

import pytest

from servergroup.common.errors import UsageError
from servergroup.groups.client import BroadcastReceived
from servergroup.guestcomm.sockets import Datagram, builder3


def test_built_records_are_the_classes_own() -> None:
    build = builder3(Datagram)
    made = build(b"x", "app", False)
    own = Datagram(data=b"x", sender="app", truncated=False)
    assert made == own
    assert hash(made) == hash(own)
    assert type(made) is Datagram
    assert repr(made) == repr(own)
    with pytest.raises(FrozenInstanceError):
        made.sender = "other"  # type: ignore[misc]
    received = builder3(BroadcastReceived)("text", "instance-1", 7)
    assert received == BroadcastReceived(text="text", source_instance="instance-1", seq=7)


def test_only_slotted_records_of_three_fields_without_post_init() -> None:
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
            builder3(cls)
