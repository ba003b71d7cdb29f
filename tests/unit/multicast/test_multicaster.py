"""`Multicaster`: runs of equal datagrams per call (UDP_SEGMENT), and the fallback."""

from __future__ import annotations

import errno
import socket
import struct
import threading
from typing import Any

import pytest

from servergroup.multicast.protocol import Auth, check_data
from servergroup.multicast.transport import (
    SOL_UDP,
    UDP_SEGMENT,
    Multicaster,
    TransferError,
    prepare_buffer,
)

PAYLOAD = 1000
DESTINATION = ("239.1.2.3", 4000)


class FakeSocket:
    """Records every sendmsg; may refuse segmentation or fail in scripted ways."""

    def __init__(self, refuse_segments: int | None = None, fail_first: list[int] | None = None):
        self.sent: list[tuple[bytes, int | None]] = []  # (bytes, segment size or None)
        self.refuse_segments = refuse_segments
        self.fail_first = list(fail_first or [])

    def sendmsg(self, parts: list[Any], ancillary: list[Any], flags: int, address: Any) -> int:
        assert address == DESTINATION
        if self.fail_first:
            raise OSError(self.fail_first.pop(0), "scripted")
        segment = None
        for level, kind, value in ancillary:
            assert (level, kind) == (SOL_UDP, UDP_SEGMENT)
            (segment,) = struct.unpack("=H", value)
            if self.refuse_segments is not None:
                raise OSError(self.refuse_segments, "scripted refusal")
        data = b"".join(bytes(p) for p in parts)
        self.sent.append((data, segment))
        return len(data)

    def datagrams(self) -> list[bytes]:
        out = []
        for data, segment in self.sent:
            step = segment or len(data)
            out += [data[i : i + step] for i in range(0, len(data), step)]
        return out


def _send(
    sock: FakeSocket, packets: int, indices: list[int] | None = None, key: bool = False
) -> Multicaster:
    whole = (bytes(range(256)) * (packets * PAYLOAD // 256 + 1))[: packets * PAYLOAD]
    data = whole + b"x" * 123  # `packets` whole packets, then a short one
    buffer = prepare_buffer(5, 0, data, PAYLOAD, Auth(b"k") if key else None)
    caster = Multicaster(sock, DESTINATION)  # type: ignore[arg-type]
    wanted = range(buffer.packet_count) if indices is None else indices
    caster.send_pass(buffer, wanted, 1e12, threading.Event())
    return caster


def test_equal_datagrams_go_in_runs_and_the_short_last_one_ends_its_run() -> None:
    sock = FakeSocket()
    _send(sock, 200)
    segments = {segment for _, segment in sock.sent}
    assert segments <= {24 + PAYLOAD, None}
    # 64 datagrams per call at most; the short one is last in its run.
    assert max(len(data) // (24 + PAYLOAD) for data, _ in sock.sent) <= 64
    got = [check_data(d)[2] for d in sock.datagrams()]
    assert got == list(range(201))


def test_a_run_never_exceeds_one_send_and_tags_stay_with_their_packets() -> None:
    sock = FakeSocket()
    _send(sock, 200, indices=[3, 4, 5, 90, 91, 200], key=True)
    got = [check_data(d, Auth(b"k"))[2] for d in sock.datagrams()]
    assert got == [3, 4, 5, 90, 91, 200]
    assert all(len(data) <= 65507 for data, _ in sock.sent)


@pytest.mark.parametrize("refusal", [errno.EIO, errno.EINVAL, errno.ENOPROTOOPT])
def test_a_refused_segmented_send_falls_back_to_one_datagram_per_call(refusal: int) -> None:
    sock = FakeSocket(refuse_segments=refusal)
    caster = _send(sock, 100)
    assert not caster.segmenting
    assert all(segment is None for _, segment in sock.sent)
    assert [check_data(d)[2] for d in sock.datagrams()] == list(range(101))


def test_a_full_queue_is_waited_out_and_a_too_large_datagram_is_a_clear_error() -> None:
    sock = FakeSocket(fail_first=[errno.ENOBUFS, errno.EAGAIN])
    _send(sock, 10)
    assert [check_data(d)[2] for d in sock.datagrams()] == list(range(11))
    with pytest.raises(TransferError, match="lower --mtu"):
        _send(FakeSocket(fail_first=[errno.EMSGSIZE]), 10)


def test_segmented_sends_reach_a_real_socket_as_separate_datagrams() -> None:
    """Loopback: the kernel cuts the run apart (or the test is skipped where it cannot)."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(2)
        data = bytes(PAYLOAD * 20 + 7)
        buffer = prepare_buffer(5, 0, data, PAYLOAD, None)
        caster = Multicaster(tx, rx.getsockname())
        caster.send_pass(buffer, range(buffer.packet_count), 1e12, threading.Event())
        got = [check_data(rx.recv(65536))[2] for _ in range(buffer.packet_count)]
        assert got == list(range(21))
    finally:
        rx.close()
        tx.close()
