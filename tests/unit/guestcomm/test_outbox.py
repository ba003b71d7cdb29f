"""The guest agent's outbox toward the host: frames queued in one round go out in one
`writev`, in order, whole, across partial writes (a real socket pair)."""

from __future__ import annotations

import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from servergroup.guestcomm.guest import WriteResult, _Loop, _Outbox


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for end in (a, b):
        end.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return a, b


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_push_asks_for_one_flush_per_idle_period() -> None:
    box = _Outbox(1 << 20)
    asked: list[int] = []
    for i in range(5):
        assert box.push(b"x%d\n" % i, lambda: asked.append(1)) is WriteResult.QUEUED
    assert asked == [1]  # only the first push found it idle
    a, b = _pair()
    with a, b:
        assert box.write(a.fileno())
        assert _read_all(b) == b"x0\nx1\nx2\nx3\nx4\n"
        assert box.queued == 0
        box.push(b"y\n", lambda: asked.append(2))
        assert asked == [1, 2]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=40))
def test_every_byte_goes_out_once_in_order_across_partial_writes(frames: list[bytes]) -> None:
    box = _Outbox(1 << 22)
    for f in frames:
        box.push(f, lambda: None)
    a, b = _pair()
    got = b""
    with a, b:
        while not box.write(a.fileno()):
            assert 0 < box.queued <= sum(map(len, frames))
            got += _read_all(b)  # the reader makes room; the rest is written next time
        got += _read_all(b)
    assert got == b"".join(frames)
    assert box.queued == 0


def test_a_full_outbox_refuses_and_clear_counts_frames_left() -> None:
    box = _Outbox(10)
    assert box.push(b"12345", lambda: None) is WriteResult.QUEUED
    assert box.push(b"123456", lambda: None) is WriteResult.QUEUE_FULL
    assert box.push(b"12345", lambda: None) is WriteResult.QUEUED
    assert box.clear() == 2
    assert box.queued == 0


def test_call_soon_runs_after_the_round_and_before_the_next_select() -> None:
    loop = _Loop()
    order: list[str] = []

    def first() -> None:
        order.append("timer")
        loop.call_soon(lambda: order.append("soon"))
        loop.call_soon(loop.stop)

    loop.call_later(0.0, first)
    try:
        loop.run()
    finally:
        loop.close()
    assert order == ["timer", "soon"]
