"""`servergroup guest` as a real process in its own network namespace (spec sections 2-3)."""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import threading
import tty

from servergroup.guestcomm.protocol import (
    MAX_APP_DATAGRAM,
    Envelope,
    JsonObject,
    encode_host_frame,
)
from tests.integration.guestcomm.conftest import (
    CLI,
    GuestUnderTest,
    final_counters,
    log_count,
    wait_log_count,
    wait_until,
)

INSTANCE = "instance-0000000a"
GOOD: JsonObject = {"version": 2, "msg_type": "broadcast", "data": "still alive"}


def to_app(data: JsonObject, dest: str = "cgcs.server_grp") -> bytes:
    return encode_host_frame(
        Envelope(
            dest_addr=dest,
            source_addr="cgcs.server_grp",
            source_instance=INSTANCE,
            data=data,
        )
    )


def test_an_app_message_reaches_the_host_byte_for_byte(guest: GuestUnderTest) -> None:
    host = guest.host()
    app = guest.app("cgcs.server_grp")
    app.send_raw(
        b'{"version": 2, "dest_addr": "cgcs.server_grp", '
        b'"data": {"version": 2, "msg_type": "broadcast", "data": "hello"}}'
    )
    expected = (
        b'\n{"version":2,"dest_addr":"cgcs.server_grp","source_addr":"cgcs.server_grp",'
        b'"data":{"version":2,"msg_type":"broadcast","data":"hello"}}\n'
    )
    assert host.read_raw(len(expected)) == expected


def test_the_source_addr_is_the_senders_own_name_not_what_it_claims(guest: GuestUnderTest) -> None:
    host = guest.host()
    app = guest.app("my.app")
    app.send({"x": 1}, source_addr="cgcs.scale", source_instance="instance-99999999")
    [env] = host.read()
    assert env == Envelope(dest_addr="cgcs.server_grp", source_addr="my.app", data={"x": 1})


def test_a_host_message_reaches_the_app_byte_for_byte(guest: GuestUnderTest) -> None:
    host = guest.host()
    app = guest.app("cgcs.server_grp")
    host.send(
        b'{"version":2,"dest_addr":"cgcs.server_grp","source_addr":"cgcs.server_grp",'
        b'"source_instance":"instance-0000000b",'
        b'"data":{"version":2,"msg_type":"broadcast","data":"hi","source_instance":"instance-0000000b"}}\n'
    )
    assert app.receive() == (
        b'{"version":2,"source_addr":"cgcs.server_grp","source_instance":"instance-0000000b",'
        b'"data":{"version":2,"msg_type":"broadcast","data":"hi","source_instance":"instance-0000000b"}}'
    )
    # Without source_instance, as the original host sent it to the guest.
    host.send(b'{"version":2,"dest_addr":"cgcs.server_grp","source_addr":"x","data":{}}\n')
    assert app.receive() == b'{"version":2,"source_addr":"x","data":{}}'


def test_several_messages_per_read_and_one_split_across_reads(guest: GuestUnderTest) -> None:
    host = guest.host()
    app = guest.app("cgcs.server_grp")
    stream = b"".join(to_app({"n": n}) for n in range(5))
    host.send(stream[:30])
    app.expect_nothing(0.2)
    host.send(stream[30:])
    got = [json.loads(app.receive())["data"]["n"] for _ in range(5)]
    assert got == [0, 1, 2, 3, 4]


def test_unknown_msg_type_passes_untouched_both_ways(guest: GuestUnderTest) -> None:
    host = guest.host()
    app = guest.app("cgcs.server_grp")
    odd: JsonObject = {
        "version": 7,
        "msg_type": "no_such_type",
        "weird": [None, {"deep": [1.5, True]}],
    }
    app.send(odd)
    [env] = host.read()
    assert env.data == odd
    host.send(to_app(odd))
    assert json.loads(app.receive())["data"] == odd


def test_bad_datagrams_are_dropped_and_a_good_one_still_goes_through(
    guest: GuestUnderTest,
) -> None:
    host = guest.host()
    app = guest.app("cgcs.server_grp")
    bad = [
        b"",
        b"garbage",
        b"\xff\xfe\x00",
        b'{"version": 2, "dest_addr": "cgcs.server_grp", "data": {"trunc',
        b'{"version": 1, "dest_addr": "cgcs.server_grp", "data": {}}',
        b'{"version": "2", "dest_addr": "cgcs.server_grp", "data": {}}',
        b'{"version": 2, "data": {}}',
        b'{"version": 2, "dest_addr": "cgcs.server_grp"}',
        b'{"version": 2, "dest_addr": "cgcs.server_grp", "data": "not an object"}',
        b'{"version": 2, "dest_addr": "0123456789abcdefg", "data": {}}',
        b"[1, 2, 3]",
        b'{"version": 2, "dest_addr": "cgcs.server_grp", "data": {"n": NaN}}',
    ]
    for raw in bad:
        app.send_raw(raw)
    # One byte over the limit on what apps may send, and 64 KiB.
    padding = b" " * (
        MAX_APP_DATAGRAM + 1 - len(b'{"version":2,"dest_addr":"cgcs.server_grp","data":{}}')
    )
    app.send_raw(b'{"version":2,"dest_addr":"cgcs.server_grp","data":{}}' + padding)
    app.send_raw(
        b'{"version":2,"dest_addr":"cgcs.server_grp","data":{"s":"' + b"a" * 65500 + b'"}}'
    )
    # Senders without an abstract name: unbound, and bound to a path.
    unbound = guest.app(None)
    unbound.send(GOOD)
    path_bound = guest.netns.socket_in(guest.ns, socket.AF_UNIX, socket.SOCK_DGRAM)
    path_bound.bind(str(guest.channel.parent / "app.sock"))
    path_bound.sendto(
        json.dumps({"version": 2, "dest_addr": "x", "data": {}}).encode(), b"\0cgcs.messaging"
    )

    app.send(GOOD)
    [env] = host.read()
    assert env.data == GOOD
    host.expect_nothing()
    assert guest.daemon.running
    counters = final_counters(guest.daemon)
    assert counters["dropped"] == {
        "bad message": 11,
        "no dest_addr": 1,
        "datagram too big": 2,
        "sender not abstract": 2,
    }
    assert counters["to_channel"] == 1


def test_a_burst_of_10000_bad_datagrams_logs_a_few_lines(guest: GuestUnderTest) -> None:
    host = guest.host()
    app = guest.app("cgcs.server_grp")
    for n in range(10_000):
        app.send_raw(b"not json %d" % n)
    app.send(GOOD)
    [env] = host.read()
    assert env.data == GOOD
    assert log_count(guest.daemon, "bad message") <= 10
    guest.daemon.send_signal(signal.SIGTERM)
    assert guest.daemon.wait() == 0
    # The summary of what was held back is logged at the latest on exit.
    assert log_count(guest.daemon, r"bad message: \d+ more not logged") >= 1


def test_a_burst_of_10000_good_datagrams_arrives_in_order(guest: GuestUnderTest) -> None:
    host = guest.host()
    app = guest.app("cgcs.server_grp")
    got: list[int] = []
    reader = threading.Thread(target=lambda: got.extend(e.data["n"] for e in host.read(10_000)))  # type: ignore[misc]
    reader.start()
    for n in range(10_000):
        app.send({"n": n})
    reader.join(60)
    assert got == list(range(10_000))


def test_bad_channel_input_is_dropped_and_a_good_message_still_goes_through(
    guest: GuestUnderTest,
) -> None:
    host = guest.host()
    app = guest.app("cgcs.server_grp")
    host.send(b"garbage\n\n\n")
    host.send(b'{"version":2,"dest_addr":"cgcs.server_grp","data":{"trunc\n')
    host.send(b'{"version":3,"dest_addr":"cgcs.server_grp","data":{}}\n')
    host.send(b'{"version":2,"source_addr":"x","data":{}}\n')  # no dest_addr
    host.send(b"\xff" * 200_000 + b"\n")  # over MAX_LINE
    host.send(to_app({"s": "a" * 5000}))  # would be a datagram over 4095 bytes
    host.send(to_app(GOOD, dest="nobody.here"))  # nothing bound there: dropped quietly
    host.send(to_app(GOOD))
    assert json.loads(app.receive())["data"] == GOOD
    app.expect_nothing()
    # The connection survived all of it: the host can still send.
    host.send(to_app({"after": True}))
    assert json.loads(app.receive())["data"] == {"after": True}
    counters = final_counters(guest.daemon)
    assert counters["dropped"] == {
        "garbage": 2,
        "bad envelope": 1,
        "no dest_addr": 1,
        "line too long": 1,
        "datagram too big": 1,
        "app not bound": 1,
    }
    assert counters["to_apps"] == 2


def test_the_host_going_away_and_coming_back(guest: GuestUnderTest) -> None:
    app = guest.app("cgcs.server_grp")
    # While no host is connected the agent answers the server-group service's part.
    app.send(GOOD)
    assert json.loads(app.receive())["data"]["msg_type"] == "nack"
    host = guest.host()
    host.close()
    wait_log_count(guest.daemon, "host disconnected", 1)
    app.send(GOOD)
    assert json.loads(app.receive())["data"]["msg_type"] == "nack"
    host = guest.host()
    app.send({"back": 1})
    [env] = host.read()
    assert env.data == {"back": 1}
    host.send(to_app({"reply": 1}))
    assert json.loads(app.receive())["data"] == {"reply": 1}


def test_the_newest_host_connection_wins(guest: GuestUnderTest) -> None:
    app = guest.app("cgcs.server_grp")
    old = guest.host()
    new = guest.host()
    assert old.closed_by_peer()
    app.send({"to": "new"})
    [env] = new.read()
    assert env.data == {"to": "new"}
    new.send(to_app({"from": "new"}))
    assert json.loads(app.receive())["data"] == {"from": "new"}


def test_a_partial_line_of_the_old_host_does_not_spoil_the_new_one(guest: GuestUnderTest) -> None:
    app = guest.app("cgcs.server_grp")
    old = guest.host()
    old.send(b'{"version":2,"dest_addr":"cgcs.serv')
    new = guest.host()
    new.send(to_app({"clean": 1}))
    assert json.loads(app.receive())["data"] == {"clean": 1}
    old.close()


def test_sigterm_stops_cleanly_and_a_restart_serves_again(guest: GuestUnderTest) -> None:
    host = guest.host()
    guest.daemon.send_signal(signal.SIGTERM)
    assert guest.daemon.wait() == 0
    assert host.closed_by_peer()
    assert not guest.channel.exists()
    guest.start()
    host = guest.host()
    app = guest.app("cgcs.server_grp")
    app.send({"again": 1})
    assert host.read()[0].data == {"again": 1}


def test_after_kill_9_a_new_agent_replaces_the_stale_socket(guest: GuestUnderTest) -> None:
    guest.daemon.kill()
    assert guest.channel.is_socket()  # left behind
    guest.start()
    host = guest.host()
    app = guest.app("cgcs.server_grp")
    app.send({"again": 2})
    assert host.read()[0].data == {"again": 2}


def test_a_second_agent_in_the_same_namespace_is_refused(guest: GuestUnderTest) -> None:
    other = guest.start_daemon(
        guest.netns.command(
            guest.ns,
            [*CLI, "guest", "--channel-listen", str(guest.channel.parent / "other.sock")],
        ),
        name="second",
    )
    assert other.wait(10) != 0
    text = other.log_text()
    assert "already bound" in text
    assert "Traceback" not in text
    wait_until(lambda: guest.daemon.running, "the first agent to keep running")


def test_host_is_a_pty_device_channel(guest: GuestUnderTest) -> None:
    """--channel on a character device: a pty stands in for the virtio-serial port."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    device = os.ttyname(slave)
    os.close(slave)
    guest.daemon.stop()
    agent = guest.start_daemon(
        guest.netns.command(guest.ns, [*CLI, "guest", "--channel", device, *guest.scale]),
        name="device-guest",
        ready="host connected",
    )
    app = guest.app("cgcs.server_grp")
    app.send({"via": "device"})
    expected = (
        b'\n{"version":2,"dest_addr":"cgcs.server_grp","source_addr":"cgcs.server_grp",'
        b'"data":{"via":"device"}}\n'
    )
    got = b""
    while len(got) < len(expected):
        got += os.read(master, 4096)
    assert got == expected
    os.write(master, to_app({"to": "app"}))
    assert json.loads(app.receive())["data"] == {"to": "app"}
    os.close(master)  # the host side goes away: the agent waits, it does not exit
    wait_log_count(agent, "host disconnected", 1)
    assert agent.running
    app.send({"nobody": "there"})
    wait_log_count(agent, "host not connected", 1)
