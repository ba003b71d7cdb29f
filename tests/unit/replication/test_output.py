"""The output buffer: held per epoch, released at commit in write order, bounded."""

from __future__ import annotations

import pytest

from servergroup.common.errors import UsageError
from servergroup.replication.output import OutputBuffer, OutputOverflow, Send

pytestmark = pytest.mark.timeout(30)


def test_output_waits_for_its_epoch_and_leaves_in_write_order() -> None:
    buffer = OutputBuffer(limit=100)
    assert buffer.write(1, b"a1") == []
    assert buffer.write(2, b"b1") == []
    buffer.seal(1)
    buffer.write(1, b"a2")
    assert buffer.held_epochs == (1, 2)
    assert buffer.release(1) == [Send(conn=1, data=b"a1"), Send(conn=2, data=b"b1")]
    assert buffer.release(1) == []
    buffer.seal(2)
    assert buffer.release(2) == [Send(conn=1, data=b"a2")]
    assert buffer.pending_bytes == 0


def test_output_of_an_unsealed_epoch_may_not_leave() -> None:
    buffer = OutputBuffer(limit=100)
    buffer.write(1, b"x")
    with pytest.raises(UsageError, match="not sealed"):
        buffer.release(1)
    with pytest.raises(UsageError, match="sealing epoch 3"):
        buffer.seal(3)


def test_one_release_covers_every_earlier_epoch() -> None:
    buffer = OutputBuffer(limit=100)
    for epoch in (1, 2, 3):
        buffer.write(7, bytes([epoch]))
        buffer.seal(epoch)
    assert [s.data for s in buffer.release(2)] == [b"\x01", b"\x02"]
    assert buffer.held_epochs == (3,)


def test_at_the_limit_it_says_full_and_keeps_everything() -> None:
    buffer = OutputBuffer(limit=10, hard_limit=25)
    buffer.write(1, b"123456789")
    assert not buffer.full
    buffer.write(2, b"ab")
    assert buffer.full
    buffer.write(2, b"c" * 14)  # past the limit, up to the hard limit: still held
    assert buffer.pending_bytes == 25
    with pytest.raises(OutputOverflow):
        buffer.write(1, b"!")
    assert buffer.drop(2) == 16
    assert not buffer.full
    buffer.seal(1)
    assert buffer.release(1) == [Send(conn=1, data=b"123456789")]


def test_discard_forgets_everything() -> None:
    buffer = OutputBuffer(limit=10)
    buffer.write(1, b"abc")
    assert buffer.discard() == 3
    buffer.seal(1)
    assert buffer.release(1) == []


def test_without_buffering_writes_pass_at_once() -> None:
    buffer = OutputBuffer(limit=1, buffering=False)
    assert buffer.write(4, b"now") == [Send(conn=4, data=b"now")]
    assert buffer.pending_bytes == 0
    assert buffer.write(4, b"") == []


def test_bad_limits_are_refused() -> None:
    with pytest.raises(UsageError):
        OutputBuffer(limit=0)
    with pytest.raises(UsageError):
        OutputBuffer(limit=10, hard_limit=5)
