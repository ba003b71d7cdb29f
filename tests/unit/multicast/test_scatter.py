"""`ScatterReceiver`: recvmmsg puts each datagram's pieces where the landing says (real sockets)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from servergroup.multicast.transport import ScatterReceiver, scatter_receiver

HEAD = 24
SLOT = 1000


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx.connect(rx.getsockname())
    try:
        yield rx, tx
    finally:
        rx.close()
        tx.close()


def pieces(r: ScatterReceiver, memory: bytearray, slot: int, j: int, n: int) -> bytes:
    """Datagram j as it landed: header, slot, tail put back together."""
    head = bytes(r.headers[j * HEAD : j * HEAD + min(n, HEAD)])
    body = bytes(memory[slot * SLOT : slot * SLOT + min(max(n - HEAD, 0), SLOT)])
    tail = bytes(r.tails[j * r.TAIL : j * r.TAIL + max(n - HEAD - SLOT, 0)])
    return head + body + tail


@pytest.mark.timeout(10)
def test_each_datagram_lands_in_its_three_pieces(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = pair
    r = scatter_receiver(rx, HEAD)
    assert r is not None  # Linux has recvmmsg
    memory = bytearray(5 * SLOT)
    assert r.receive(memory, range(0, 3), SLOT) == []  # nothing waits: no blocking, no error
    sent = [
        os.urandom(HEAD + SLOT + 16),  # header, a whole slot and a tag
        os.urandom(10),  # shorter than a header
        os.urandom(HEAD + 300),  # a short last packet
        os.urandom(HEAD + SLOT + 20_000),  # far longer than a slot: the tail holds the rest
    ]
    for d in sent:
        tx.send(d)
    slots = [3, 0, 4, 1]
    lengths = r.receive(memory, slots, SLOT)
    assert lengths == [len(d) for d in sent]
    for j, (d, slot) in enumerate(zip(sent, slots, strict=True)):
        assert pieces(r, memory, slot, j, len(d)) == d
    assert memory[2 * SLOT : 3 * SLOT] == bytes(SLOT)  # a slot not offered is untouched


@pytest.mark.timeout(10)
def test_it_takes_no_more_than_the_slots_offered(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = pair
    r = scatter_receiver(rx, HEAD)
    assert r is not None
    memory = bytearray(8 * SLOT)
    sent = [os.urandom(HEAD + SLOT) for _ in range(5)]
    for d in sent:
        tx.send(d)
    assert r.receive(memory, range(2, 4), SLOT) == [len(sent[0])] * 2
    assert pieces(r, memory, 2, 0, len(sent[0])) == sent[0]
    assert pieces(r, memory, 3, 1, len(sent[1])) == sent[1]
    # The rest stayed in the socket for the next call, in order.
    assert r.receive(memory, range(5, 8), SLOT) == [len(sent[2])] * 3
    assert [pieces(r, memory, 5 + j, j, len(sent[2 + j])) for j in range(3)] == sent[2:]
