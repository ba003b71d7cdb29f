"""The client library and `servergroup app` against a real guest agent in a namespace.

The test plays the host end of the guest's channel, so every byte the
library sends through the agent, and every byte it gets back, is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from servergroup.groups.client import (
    AgentUnavailable,
    AsyncServerGroupClient,
    BroadcastReceived,
    GroupMessagingError,
    InvalidBroadcast,
    NackError,
    NackReceived,
    NotificationReceived,
    ServerGroupClient,
    StatusReceived,
    init,
)
from servergroup.groups.protocol import (
    Broadcast,
    BroadcastAck,
    GroupMessage,
    Nack,
    Notification,
    StatusQuery,
    StatusResponse,
    StatusResponseDone,
    Subscribe,
    Unsubscribe,
    decode_group_message,
    encode_group_message,
)
from servergroup.guestcomm.protocol import SERVER_GROUP_ADDR, Envelope, JsonObject
from tests.integration.groups.conftest import CLI, WAIT, Guest, GuestFactory, HostEnd

SERVER_A: JsonObject = {"instance_name": "instance-0000000a", "name": "a", "vm_state": "active"}
SERVER_B: JsonObject = {"instance_name": "instance-0000000b", "name": "b", "vm_state": "paused"}


def to_app(
    msg: GroupMessage, *, dest: str = SERVER_GROUP_ADDR, source: str = SERVER_GROUP_ADDR
) -> Envelope:
    return Envelope(data=encode_group_message(msg), dest_addr=dest, source_addr=source)


def pump(client: ServerGroupClient, done: Callable[[], bool], timeout: float = WAIT) -> None:
    """Call `process()` whenever the client's socket is readable, until `done()`."""
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail("the client did not get what was expected in time")
        ready, _, _ = select.select([client.fileno()], [], [], min(left, 0.2))
        if ready:
            client.process()


def connected(guest: Guest) -> HostEnd:
    host = HostEnd(guest.channel)
    # The agent logs the host's arrival; before that, what apps send is dropped.
    assert guest.agent is not None
    guest.agent.wait_for_log("host connected", WAIT)
    return host


def test_broadcast_and_status_bytes(guest: GuestFactory) -> None:
    g = guest()
    host = connected(g)
    statuses: list[list[JsonObject]] = []
    with g.call(lambda: init(status_cb=statuses.append)) as client:
        client.broadcast("this is a test")
        assert host.read_bytes() == (
            b'\n{"version":2,"dest_addr":"cgcs.server_grp","source_addr":"cgcs.server_grp",'
            b'"data":{"version":2,"msg_type":"broadcast","data":"this is a test","id":1}}\n'
        )
        seq = client.request_status()
        query = host.receive()
        assert query.source_addr == SERVER_GROUP_ADDR
        assert decode_group_message(query.data) == StatusQuery(seq=seq)

        # A response to an older query is dropped; the rest is joined on done.
        host.send(to_app(StatusResponse(seq=seq - 1, server=SERVER_B)))
        host.send(to_app(StatusResponse(seq=seq, server=SERVER_A)))
        host.send(to_app(StatusResponse(seq=seq, server=SERVER_B)))
        host.send(to_app(StatusResponseDone(seq=seq - 1)))
        host.send(to_app(StatusResponseDone(seq=seq)))
        pump(client, lambda: bool(statuses))
        assert statuses == [[SERVER_A, SERVER_B]]
        assert client.dropped == 2


def test_callbacks_and_what_is_dropped(guest: GuestFactory) -> None:
    g = guest()
    host = connected(g)
    got: list[object] = []
    client = g.call(
        lambda: init(
            lambda text, source: got.append(("broadcast", text, source)),
            lambda event: got.append(("notification", event)),
        )
    )
    with client:
        event: JsonObject = {"event_type": "compute.instance.pause.end", "payload": SERVER_B}
        # Not from cgcs.server_grp, an inner wrong version, garbage: all dropped.
        host.send(to_app(Broadcast(text="spoof"), source="cgcs.scale"))
        host.send(
            Envelope(
                data={"version": "version", "msg_type": "broadcast", "data": "x"},
                dest_addr=SERVER_GROUP_ADDR,
                source_addr=SERVER_GROUP_ADDR,
            )
        )
        host.send(
            Envelope(data={"hello": 1}, dest_addr=SERVER_GROUP_ADDR, source_addr=SERVER_GROUP_ADDR)
        )
        host.send(to_app(Broadcast(text="hi", source_instance="instance-0000000b", seq=4)))
        host.send(to_app(Notification(event=event)))
        pump(client, lambda: len(got) == 2)
        assert got == [("broadcast", "hi", "instance-0000000b"), ("notification", event)]
        assert client.dropped == 3


def test_nack_raises_or_calls_back(guest: GuestFactory) -> None:
    g = guest()
    host = connected(g)
    with g.call(init) as client:
        host.send(
            to_app(
                Nack(orig_msg_type="broadcast", log_msg="vm-1 is not a member of any server group")
            )
        )
        with pytest.raises(NackError) as info:
            pump(client, lambda: False)
        assert info.value.orig_msg_type == "broadcast"
        assert str(info.value) == (
            "the host refused the broadcast: vm-1 is not a member of any server group"
        )
        nacks: list[tuple[str, str, int | None]] = []
        client.nack_cb = lambda orig, reason, ident: nacks.append((orig, reason, ident))
        host.send(to_app(Nack(orig_msg_type="status_query", log_msg="later")))
        host.send(to_app(Nack(orig_msg_type="broadcast", log_msg="busy", id=7)))
        pump(client, lambda: len(nacks) == 2)
        assert nacks == [("status_query", "later", None), ("broadcast", "busy", 7)]


@pytest.mark.parametrize(
    ("text", "words"),
    [("x" * 3051, "3051 bytes"), ("a\x00b", "NUL"), ("two\nlines", "newline")],
)
def test_invalid_broadcast_is_refused_before_sending(
    guest: GuestFactory, text: str, words: str
) -> None:
    g = guest()
    host = connected(g)
    with g.call(init) as client:
        with pytest.raises(InvalidBroadcast, match=words):
            client.broadcast(text)
        assert client.broadcast("x" * 3050) == 1  # the limit itself is fine
        sent = decode_group_message(host.receive().data)
        assert sent == Broadcast(text="x" * 3050, id=1)


def test_second_app_subscribes_and_gets_group_traffic(guest: GuestFactory) -> None:
    g = guest()
    host = connected(g)
    got: list[tuple[str, str | None]] = []
    first = g.call(init)
    second = g.call(lambda: init(lambda t, s: got.append((t, s)), address="app2"))
    try:
        subscribe = host.receive()
        assert subscribe.source_addr == "app2"
        assert decode_group_message(subscribe.data) == Subscribe()
        host.send(
            to_app(
                Broadcast(text="to both", source_instance="instance-0000000c", seq=1), dest="app2"
            )
        )
        pump(second, lambda: bool(got))
        assert got == [("to both", "instance-0000000c")]
        second.request_status()  # renews the subscription first
        assert decode_group_message(host.receive().data) == Subscribe()
        assert isinstance(decode_group_message(host.receive().data), StatusQuery)
    finally:
        second.close()
        first.close()
    assert decode_group_message(host.receive().data) == Unsubscribe()


def test_no_agent_is_one_clear_error(guest: GuestFactory) -> None:
    g = guest(agent=False)
    with g.call(init) as client, pytest.raises(AgentUnavailable) as info:
        client.request_status()
    assert str(info.value) == (
        "no guest agent at cgcs.messaging in this network namespace: start `servergroup guest`"
    )
    with pytest.raises(AgentUnavailable):
        g.call(lambda: init(address="app2"))  # subscribing needs the agent at once


def test_address_in_use(guest: GuestFactory) -> None:
    g = guest(agent=False)
    with g.call(init), pytest.raises(GroupMessagingError, match="already bound"):
        g.call(init)


async def test_async_client_events(guest: GuestFactory) -> None:
    g = guest()
    host = connected(g)
    client = AsyncServerGroupClient(address="async1")
    g.call(client.bind)  # the socket lives in the guest's namespace
    async with client:
        assert decode_group_message(host.receive().data) == Subscribe()
        assert await client.broadcast("hello") == 1
        assert decode_group_message(host.receive().data) == Broadcast(text="hello", id=1)
        seq = await client.request_status()
        host.receive()  # the renewed subscription
        assert decode_group_message(host.receive().data) == StatusQuery(seq=seq)
        event: JsonObject = {"event_type": "compute.instance.lost", "payload": SERVER_A}
        for msg in (
            Broadcast(text="b1", source_instance="instance-0000000b", seq=9),
            Notification(event=event),
            StatusResponse(seq=seq, server=SERVER_A),
            StatusResponseDone(seq=seq),
            Nack(orig_msg_type="broadcast", log_msg="no"),
        ):
            host.send(to_app(msg, dest="async1"))
        events = []
        async with asyncio.timeout(WAIT):
            async for e in client.events():
                events.append(e)
                if len(events) == 4:
                    break
        assert events == [
            BroadcastReceived(text="b1", source_instance="instance-0000000b", seq=9),
            NotificationReceived(event=event),
            StatusReceived(seq=seq, servers=(SERVER_A,)),
            NackReceived(orig_msg_type="broadcast", reason="no"),
        ]
        with pytest.raises(InvalidBroadcast):
            await client.broadcast("a\nb")
    assert decode_group_message(host.receive().data) == Unsubscribe()


def run_app_in(g: Guest, *args: str, timeout: float = 30.0) -> subprocess.Popen[str]:
    argv = ["ip", "netns", "exec", g.ns, *CLI, "app", *args]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )


@contextlib.contextmanager
def app_in(g: Guest, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`servergroup app ARGS` in the guest's namespace; killed at the end if still running."""
    proc = run_app_in(g, *args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


#: The app's counters line after a run that sent nothing.
SENT_NOTHING = (
    "app: broadcasts sent 0, acknowledged 0, refused 0, unconfirmed 0, missed 0, pending 0"
)


def test_app_command_prints_status_and_exits(guest: GuestFactory) -> None:
    g = guest()
    host = connected(g)
    with app_in(g, "this is a test", "--count", "2", "--timeout", "20") as proc:
        assert decode_group_message(host.receive().data) == Broadcast(text="this is a test", id=1)
        query = decode_group_message(host.receive().data)
        assert isinstance(query, StatusQuery)
        host.send(to_app(BroadcastAck(id=1, seq=1)))
        host.send(to_app(StatusResponse(seq=query.seq, server=SERVER_A)))
        host.send(to_app(StatusResponseDone(seq=query.seq)))
        host.send(to_app(Broadcast(text="final test", source_instance="instance-0000000b", seq=2)))
        out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert out.splitlines() == [
        "status: 1 servers: instance-0000000a (a, active on ?)",
        "broadcast from instance-0000000b: final test",
    ]
    # Its counters, at exit, on stderr: the ack came before what it printed.
    assert err.splitlines()[-1] == (
        "app: broadcasts sent 1, acknowledged 1, refused 0, unconfirmed 0, missed 0, pending 0"
    )


def test_app_command_json_lines_and_timeout(guest: GuestFactory) -> None:
    g = guest()
    host = connected(g)
    with app_in(g, "--json", "--timeout", "1.5", "--address", "app-json") as proc:
        assert decode_group_message(host.receive().data) == Subscribe()
        host.receive()  # renewed with the status query
        query = decode_group_message(host.receive().data)
        assert isinstance(query, StatusQuery)
        host.send(to_app(Nack(orig_msg_type="status_query", log_msg="busy"), dest="app-json"))
        started = time.monotonic()
        out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 3.0
    assert [json.loads(line) for line in out.splitlines()] == [
        {"kind": "nack", "orig_msg_type": "status_query", "reason": "busy"}
    ]
    assert err.splitlines()[-1] == SENT_NOTHING


def test_app_command_ends_on_sigterm_as_on_ctrl_c(guest: GuestFactory) -> None:
    """Under a supervisor or `timeout`: what it printed, then its counters, status 0."""
    g = guest()
    host = connected(g)
    with app_in(g, "--address", "app-term") as proc:
        assert decode_group_message(host.receive().data) == Subscribe()
        host.receive()  # renewed with the status query
        query = decode_group_message(host.receive().data)
        assert isinstance(query, StatusQuery)
        host.send(to_app(StatusResponseDone(seq=query.seq), dest="app-term"))
        assert proc.stdout is not None
        assert proc.stdout.readline() == "status: 0 servers: \n"  # it runs its loop now
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert out == ""
    assert err.splitlines()[-1] == SENT_NOTHING


def test_app_command_without_agent(guest: GuestFactory) -> None:
    g = guest(agent=False)
    proc = run_app_in(g, "hello")
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode != 0
    assert out == ""
    assert err.strip() == (
        "servergroup: no guest agent at cgcs.messaging in this network namespace: "
        "start `servergroup guest`."
    )


def test_app_command_refuses_a_bad_message(guest: GuestFactory) -> None:
    g = guest()
    proc = run_app_in(g, "x" * 3051)
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 2
    assert "3051 bytes of UTF-8; the limit is 3050" in err
    assert "Traceback" not in err


def test_app_asks_again_when_its_first_status_query_was_lost(guest: GuestFactory) -> None:
    """Right after a boot the host's relay may not be connected yet (it retries
    every second): the first query is dropped by the agent; the app asks again."""
    g = guest()
    with app_in(g, "--json", "--count", "1", "--timeout", "20") as proc:
        time.sleep(1.3)  # the first query went while no host was connected
        host = connected(g)
        while not isinstance(query := decode_group_message(host.receive().data), StatusQuery):
            pass
        host.send(to_app(StatusResponse(seq=query.seq, server=SERVER_A)))
        host.send(to_app(StatusResponseDone(seq=query.seq)))
        out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    [line] = [json.loads(text) for text in out.splitlines()]
    assert line["kind"] == "status"
    assert [s["name"] for s in line["servers"]] == ["a"]
