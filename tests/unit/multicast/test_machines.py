"""The sender and receiver machines together, in memory, with scripted time and loss."""

from __future__ import annotations

import random
from ipaddress import IPv4Address

import pytest

from servergroup.multicast import receiving as rx
from servergroup.multicast import sending as tx
from servergroup.multicast.protocol import Auth, Kind, Welcome
from tests.unit.multicast.sim import SESSION, Sim

IMAGE = random.Random(1).randbytes(100 * 16 * 3 + 37)  # three buffers and a bit


def outputs_match(sim: Sim, image: bytes) -> None:
    for c in sim.clients.values():
        assert c.report is not None
        assert c.report.ok, (c.id, c.report)
        assert bytes(c.output) == image


def test_without_loss_one_pass_per_buffer_and_no_repairs() -> None:
    sim = Sim(IMAGE, clients=3)
    sim.start()
    report = sim.run()
    assert report.ok, report
    outputs_match(sim, IMAGE)
    assert [m.pass_number for m in sim.multicasts] == [0, 0, 0, 0]
    assert sim.repairs == []
    assert report.total_bytes == len(IMAGE)
    assert report.buffers == 5  # four with data, then the empty one
    assert all(row.status is tx.ClientStatus.FINISHED for row in report.clients)
    assert all(row.counters.multicast == 49 for row in report.clients)


def test_a_packet_one_client_lost_is_repaired_over_its_connection_only() -> None:
    sim = Sim(IMAGE, clients=3, loss=lambda c, b, i, p: (c, b, i) == (1, 2, 5))
    sim.start()
    assert sim.run().ok
    outputs_match(sim, IMAGE)
    assert [(r.client, r.buffer_id, r.indices) for r in sim.repairs] == [(1, 2, (5,))]
    assert all(m.pass_number == 0 for m in sim.multicasts)


def test_packets_several_clients_lost_are_multicast_once_more() -> None:
    sim = Sim(IMAGE, clients=3, loss=lambda c, b, i, p: p == 0 and b == 1 and i in (3, 4) and c > 0)
    sim.start()
    assert sim.run().ok
    outputs_match(sim, IMAGE)
    again = [m for m in sim.multicasts if m.pass_number > 0]
    assert [(m.buffer_id, m.pass_number, m.indices) for m in again] == [(1, 1, (3, 4))]
    assert sim.repairs == []


def test_repeated_shared_loss_falls_back_to_repairs_after_the_last_pass() -> None:
    sim = Sim(IMAGE, clients=2, repair_passes=2, loss=lambda c, b, i, p: b == 0 and i == 7)
    sim.start()
    assert sim.run().ok
    outputs_match(sim, IMAGE)
    assert [m.pass_number for m in sim.multicasts if m.buffer_id == 0] == [0, 1, 2]
    assert sorted((r.client, r.indices) for r in sim.repairs) == [(0, (7,)), (1, (7,))]


def test_the_next_buffer_is_multicast_while_one_is_repaired() -> None:
    # Client 2 loses packet 5 of buffer 0: buffer 0 waits for its repair over
    # TCP while buffer 1, announced early, is multicast (overlapping rounds).
    # (The sim serves clients in order: the last one's repair comes last.)
    sim = Sim(IMAGE, clients=3, loss=lambda c, b, i, p: (c, b, i, p) == (2, 0, 5, 0))
    sim.start()
    assert sim.run().ok
    outputs_match(sim, IMAGE)  # in order, although buffer 1 was whole first at client 1
    first = [
        (m.buffer_id, done) for m, done in zip(sim.multicasts, sim.completed_before, strict=True)
    ]
    assert first[1] == (1, [])  # buffer 1's pass began before buffer 0 was done everywhere
    assert [(r.client, r.buffer_id, r.indices) for r in sim.repairs] == [(2, 0, (5,))]
    assert [m.pass_number for m in sim.multicasts] == [0, 0, 0, 0]


def test_without_overlap_a_buffer_is_multicast_only_after_the_one_before_is_done() -> None:
    sim = Sim(IMAGE, clients=3, overlap=False, loss=lambda c, b, i, p: (c, b, i) == (2, 0, 5))
    sim.start()
    assert sim.run().ok
    outputs_match(sim, IMAGE)
    assert sim.completed_before[1:] == [[0], [0, 1], [0, 1, 2]]


def test_a_shared_resend_waits_for_the_next_buffers_pass_and_repairs_still_come() -> None:
    # Two of three clients lose packets 3 and 4 of buffer 0 in every pass:
    # re-sends of buffer 0 go after buffer 1's pass, then TCP repairs.
    sim = Sim(IMAGE, clients=3, loss=lambda c, b, i, p: b == 0 and i in (3, 4) and c > 0)
    sim.start()
    assert sim.run().ok
    outputs_match(sim, IMAGE)
    assert [m.pass_number for m in sim.multicasts if m.buffer_id == 0] == [0, 1, 2]
    assert sorted((r.client, r.indices) for r in sim.repairs) == [(1, (3, 4)), (2, (3, 4))]


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("percent", [2, 10, 40])
def test_random_loss_still_delivers_every_byte(percent: int, overlap: bool) -> None:
    rng = random.Random(percent)
    sim = Sim(
        IMAGE, clients=4, overlap=overlap, loss=lambda c, b, i, p: rng.random() < percent / 100
    )
    sim.start()
    report = sim.run()
    assert report.ok
    outputs_match(sim, IMAGE)
    if percent >= 10:
        assert sim.repairs or any(m.pass_number for m in sim.multicasts)


def test_an_empty_image_is_a_single_empty_buffer() -> None:
    sim = Sim(b"", clients=2)
    sim.start()
    report = sim.run()
    assert report.ok
    assert report.total_bytes == 0
    assert sim.multicasts == []
    outputs_match(sim, b"")


def test_a_client_that_gets_no_multicast_is_served_over_tcp() -> None:
    sim = Sim(IMAGE, clients=3, loss=lambda c, b, i, p: c == 2)
    sim.start()
    report = sim.run()
    assert report.ok
    outputs_match(sim, IMAGE)
    rows = {row.name: row for row in report.clients}
    assert rows["c2"].tcp_only
    assert rows["c2"].counters.multicast == 0
    assert rows["c2"].counters.repaired == 49
    assert not rows["c0"].tcp_only
    # The blocked client's loss neither slowed the others nor caused extra multicast.
    assert all(m.pass_number == 0 for m in sim.multicasts)
    assert sim.sender.rate >= 1e8


def test_a_killed_client_is_dropped_and_the_others_finish() -> None:
    sim = Sim(IMAGE, clients=3)
    sim.start()
    while sim.drain() and not sim.multicasts:
        pass
    sim.kill(1)
    report = sim.run()
    assert not report.ok
    rows = {row.name: row for row in report.clients}
    assert rows["c1"].status is tx.ClientStatus.DROPPED
    assert "connection closed" in rows["c1"].reason
    for i in (0, 2):
        assert rows[f"c{i}"].status is tx.ClientStatus.FINISHED
        assert bytes(sim.clients[i].output) == IMAGE


def test_a_silent_client_is_dropped_after_the_timeout() -> None:
    sim = Sim(IMAGE, clients=3, timeout=5.0)
    sim.start()
    while sim.drain() and not sim.multicasts:
        pass
    sim.mute.add(2)
    sim.clients[2].frozen = True  # hangs: reads nothing, says nothing
    started = sim.now
    report = sim.run()
    rows = {row.name: row for row in report.clients}
    assert rows["c2"].status is tx.ClientStatus.DROPPED
    assert "silent for 5 s" in rows["c2"].reason
    assert rows["c0"].status is rows["c1"].status is tx.ClientStatus.FINISHED
    assert sim.now - started < 5.0 + 1.0


def test_an_expected_client_that_never_comes_is_reported_missing() -> None:
    sim = Sim(IMAGE, clients=3, expected=4, join_timeout=20.0)
    sim.start()
    report = sim.run()
    assert not report.ok
    statuses = sorted(row.status.value for row in report.clients)
    assert statuses == ["finished", "finished", "finished", "missing"]
    outputs_match(sim, IMAGE)
    assert sim.now >= 120.0


def test_no_client_at_all_ends_with_a_reason() -> None:
    sim = Sim(IMAGE, clients=1, join_timeout=3.0)
    sim.start(connect=[])
    report = sim.run()
    assert not report.ok
    assert "no client connected" in report.reason


def test_a_client_beyond_the_expected_number_is_turned_away() -> None:
    sim = Sim(IMAGE, clients=3, expected=2)
    sim.start()
    report = sim.run()
    assert report.ok
    assert len(report.clients) == 2
    turned_away = [c for c in sim.clients.values() if not c.report or not c.report.ok]
    assert len(turned_away) == 1
    assert turned_away[0].report is not None
    assert "already" in turned_away[0].report.reason


def test_corrupt_and_foreign_datagrams_are_counted_and_repaired() -> None:
    def mangle(client: int, packet: bytes) -> bytes:
        if client != 0 or packet[15] % 4:
            return packet
        if packet[15] % 8 == 0:
            return packet[:30] + bytes([packet[30] ^ 0x40]) + packet[31:]  # a flipped bit
        # the same packet, but of another session (re-signed, so only the session is wrong)
        from servergroup.multicast.protocol import DataPacket, decode_data, encode_data

        p = decode_data(packet)
        return encode_data(
            DataPacket(session=SESSION + 1, buffer_id=p.buffer_id, index=p.index, payload=p.payload)
        )

    sim = Sim(IMAGE, clients=2)
    sim.on_datagram = mangle
    sim.start()
    assert sim.run().ok
    outputs_match(sim, IMAGE)
    counters = sim.clients[0].report.counters  # type: ignore[union-attr]
    assert counters.corrupt > 0
    assert counters.foreign > 0
    assert counters.repaired == counters.corrupt + counters.foreign


def test_with_a_key_forged_datagrams_are_dropped_and_counted() -> None:
    auth = Auth(b"secret")

    def forge(client: int, packet: bytes) -> bytes:
        if packet[15] % 3:
            return packet
        return packet[:-16] + bytes(16)  # right crc, wrong tag

    sim = Sim(IMAGE, clients=2, auth=auth)
    sim.on_datagram = forge
    sim.start()
    assert sim.run().ok
    outputs_match(sim, IMAGE)
    for c in sim.clients.values():
        assert c.report is not None
        assert c.report.counters.forged > 0


def test_the_sender_going_away_ends_every_receiver_with_failure() -> None:
    sim = Sim(IMAGE, clients=2)
    sim.start()
    while sim.drain() and not sim.multicasts:
        pass
    for c in sim.clients.values():
        c.inbox.append(b"")  # the sender's connections close (process killed)
    while sim.drain():
        pass
    for c in sim.clients.values():
        assert c.report is not None
        assert not c.report.ok
        assert "closed the connection" in c.report.reason


def welcome(*, keepalive_interval: float) -> Welcome:
    """A sender's welcome, for a receiver machine driven by hand."""
    return Welcome(
        group=IPv4Address("239.192.83.71"),
        port=18383,
        payload_size=1400,
        buffer_packets=16,
        keepalive_interval=keepalive_interval,
    )


def test_a_silent_sender_ends_the_receiver_after_its_timeout() -> None:
    machine = rx.ReceiverMachine(rx.ReceiverSettings(name="r", timeout=4.0))
    machine.connected(10.0)
    assert machine.next_timer() == 14.0
    assert machine.handle_timer(13.9) == []
    (close,) = [a for a in machine.handle_timer(14.0) if isinstance(a, rx.Close)]
    assert not close.report.ok
    assert close.report.reason == "the sender sent no welcome within 4 s"

    # Welcomed, then nothing more: the reason says so (it read "sent anything").
    machine = rx.ReceiverMachine(rx.ReceiverSettings(name="r", timeout=4.0))
    machine.connected(10.0)
    machine.message_received(SESSION, welcome(keepalive_interval=1.0), 11.0)
    assert machine.handle_timer(14.9) == []
    (close,) = [a for a in machine.handle_timer(15.0) if isinstance(a, rx.Close)]
    assert close.report.reason == "the sender sent nothing for 4 s"


def test_a_receiver_with_a_short_timeout_waits_for_two_of_the_senders_keepalives() -> None:
    """--timeout 2 at a receiver, the sender's default 10 s (a keepalive each 2.5 s).

    While the sender waits for its other clients it only keeps alive: a
    receiver that gave up after its own 2 s failed a transfer that was fine.
    """
    machine = rx.ReceiverMachine(rx.ReceiverSettings(name="r", timeout=2.0))
    machine.connected(10.0)
    assert machine.next_timer() == 12.0  # before the welcome: its own timeout
    machine.message_received(SESSION, welcome(keepalive_interval=2.5), 11.0)
    assert machine.next_timer() == 16.0
    assert machine.handle_timer(13.5) == []  # a keepalive is due at 13.5, not missed yet
    (close,) = [a for a in machine.handle_timer(16.0) if isinstance(a, rx.Close)]
    assert close.report.reason == "the sender sent nothing for 5 s"


def test_a_receiver_that_cannot_write_fails_and_tells_the_sender() -> None:
    sim = Sim(IMAGE, clients=2)
    sim.start()
    while sim.drain() and not sim.pending_writes:
        pass
    i, _, _ = sim.pending_writes.popleft()
    sim._client(i, sim.clients[i].machine.delivery_failed("disk full writing out.img", sim.now))
    report = sim.run()
    rows = {row.name: row for row in report.clients}
    failed = rows[f"c{i}"]
    assert failed.status is tx.ClientStatus.FAILED
    assert "disk full" in failed.reason
    assert rows[f"c{1 - i}"].status is tx.ClientStatus.FINISHED


def test_a_wrong_digest_fails_the_receiver() -> None:
    sim = Sim(IMAGE, clients=1)
    sim.start()
    original = sim._load

    def load(buffer_id: int) -> None:
        original(buffer_id)

    sim.hasher.update(b"x")  # the sender's digest now differs from the data
    sim._load = load  # type: ignore[method-assign]
    report = sim.run()
    assert not report.ok
    assert sim.clients[0].report is not None
    assert not sim.clients[0].report.ok


def test_a_receiver_writes_at_most_two_buffers_behind() -> None:
    sim = Sim(IMAGE, clients=1)
    sim.start()
    held: list[tuple[int, int, int]] = []
    for _ in range(10_000):
        while sim.pending_writes:
            held.append(sim.pending_writes.popleft())
        if not sim.drain():
            break
    assert len(held) == 2  # the third buffer's Ready waits for a write
    assert sim.report is None
    sim.pending_writes.extend(held)
    assert sim.run().ok


def test_a_misbehaving_client_is_dropped() -> None:
    sim = Sim(IMAGE, clients=2)
    sim.start()
    while sim.drain() and not sim.multicasts:
        pass
    sim.to_sender.append((1, b"GET / HTTP/1.0\r\n\r\n"))
    report = sim.run()
    rows = {row.name: row for row in report.clients}
    assert rows["c1"].status is tx.ClientStatus.DROPPED
    assert "garbage" in rows["c1"].reason
    assert rows["c0"].status is tx.ClientStatus.FINISHED


def test_a_connection_that_never_says_hello_does_not_count() -> None:
    sim = Sim(IMAGE, clients=2)
    sim.start()
    outputs = sim.sender.client_connected(99, "10.9.9.9", sim.now)
    assert outputs == []
    report = sim.run()
    assert report.ok
    assert len(report.clients) == 2
    assert Kind.HELLO  # the silent connection was closed without a client row


def test_without_loss_the_rate_grows_round_by_round() -> None:
    sim = Sim(IMAGE, clients=2)
    sim.start()
    assert sim.run().ok
    rates = [m.rate for m in sim.multicasts]
    assert rates == sorted(rates)
    assert rates[-1] > rates[0]


def test_a_written_buffers_memory_is_filled_again_never_one_still_being_written() -> None:
    from ipaddress import IPv4Address

    from servergroup.multicast.protocol import BufferInfo, DataPacket, Welcome, encode_data

    size, count = 16, 4
    session = 0x1234
    machine = rx.ReceiverMachine(rx.ReceiverSettings(name="r"))
    machine.connected(0.0)
    welcome = Welcome(
        group=IPv4Address("239.1.1.1"),
        port=9,
        payload_size=size,
        buffer_packets=count,
        keepalive_interval=1.0,
    )
    machine.message_received(session, welcome, 0.0)

    def fill(buffer_id: int, last: int) -> rx.Deliver:
        info = BufferInfo(buffer_id=buffer_id, packet_count=count, byte_length=size * 3 + last)
        machine.message_received(session, info, 0.0)
        outputs: list[rx.Output] = []
        for i in range(count):
            payload = bytes([buffer_id]) * (size if i < count - 1 else last)
            packet = DataPacket(session=session, buffer_id=buffer_id, index=i, payload=payload)
            outputs += machine.datagram_received(memoryview(encode_data(packet)), 0.0)
        (deliver,) = [o for o in outputs if isinstance(o, rx.Deliver)]
        return deliver

    first = fill(0, size)
    second = fill(1, 5)  # the first is not written yet: fresh memory
    assert second.data.obj is not first.data.obj
    machine.delivered(0, len(first.data), 0.0)
    third = fill(2, size)  # the first's memory, now free
    assert third.data.obj is first.data.obj
    assert bytes(third.data) == bytes([2]) * (size * 4)
    assert bytes(second.data) == bytes([1]) * (size * 3 + 5)  # untouched meanwhile
