"""Flow control of the real guest agent (issue 12), in its own network namespace.

- applications -> channel: while the host does not read, the agent stops
  reading its applications, whose non-blocking sends then fail with EAGAIN;
  once the host reads again every message arrives, in order, none dropped;
- no host: a message to `cgcs.server_grp` is answered with a nack in the
  original's format;
- channel -> applications: a slow application gets a burst in order; one
  that does not read gets at most the agent's bound plus its kernel queue,
  in order, without repeats, the rest counted as dropped, and it never holds
  up another application of the same server;
- receivers first: while an application that reads is far behind, the
  agent takes no sends from its applications (the host gets nothing new)
  until it has caught up; then every send arrives, in order, none dropped.
  An application that does not read at all holds no sends back for long;
- `net.unix.max_dgram_qlen`: the agent warns when it is low; a lab server's
  namespace has it raised, the machine's own setting untouched.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servergroup.guestcomm.guest import (
    APP_ANSWER_ALLOWANCE,
    DEFAULT_APP_BEHIND_HIGH,
    DEFAULT_APP_QUEUE_LIMIT,
    DEFAULT_APP_STALL_AFTER,
)
from servergroup.guestcomm.protocol import Envelope, JsonObject, encode_host_frame
from servergroup.guestcomm.sockets import DGRAM_QLEN_PATH, GUEST_DGRAM_QLEN, NO_HOST_LOG_MSG
from servergroup.servers.drivers.lab import LabDriver
from tests.fixtures.daemons import DaemonFactory
from tests.fixtures.netns import NetnsFactory
from tests.integration.guestcomm.conftest import (
    WAIT,
    App,
    GuestUnderTest,
    final_counters,
    log_count,
    wait_log_count,
)

#: The agent's bound for one application in the tests that reach it (`--app-queue-limit`):
#: below the default, so that a few thousand datagrams overflow it.
APP_QUEUE_LIMIT = 4096
assert APP_QUEUE_LIMIT < DEFAULT_APP_QUEUE_LIMIT

LOW_QLEN_WARNING = "applications will be slowed: raise net.unix.max_dgram_qlen"
PAUSED = "backpressure: .* applications are not read"
YIELDED = "receivers first: 'behind.app' is behind on reading"


def frame_to(dest: str, data: JsonObject) -> bytes:
    return encode_host_frame(Envelope(dest_addr=dest, source_addr="cgcs.server_grp", data=data))


def app_message(n: int, dest: str = "cgcs.server_grp") -> bytes:
    """What an application sends: an envelope of about 1 KB for `dest`."""
    data = {"version": 2, "msg_type": "broadcast", "n": n, "data": "p" * 1000}
    return json.dumps({"version": 2, "dest_addr": dest, "data": data}).encode()


def netns_qlen(ns: str) -> int:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", str(DGRAM_QLEN_PATH)],
        capture_output=True,
        text=True,
        check=True,
        timeout=WAIT,
    )
    return int(done.stdout)


def set_qlen(ns: str, qlen: int) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"net.unix.max_dgram_qlen={qlen}"],
        check=True,
        timeout=WAIT,
    )


def root_qlen() -> int:
    return int(DGRAM_QLEN_PATH.read_text())


def connected_app(guest: GuestUnderTest, name: str) -> App:
    """An application bound at `name` and connected to the agent, as the client library is."""
    app = guest.app(name)
    app.sock.connect(b"\0cgcs.messaging")
    return app


def receive_all(app: App, quiet: float = 0.5) -> list[int]:
    """The `n` of every datagram `app` receives until none came for `quiet` seconds."""
    got: list[int] = []
    app.sock.settimeout(quiet)
    try:
        while True:
            got.append(json.loads(app.receive())["data"]["n"])
    except TimeoutError:
        pass
    finally:
        app.sock.settimeout(WAIT)
    return got


# -- applications -> channel: backpressure ---------------------------------------------------


def test_a_flooding_app_is_slowed_while_the_host_does_not_read_and_nothing_is_lost(
    guest: GuestUnderTest,
) -> None:
    host = guest.host()
    app = connected_app(guest, "cgcs.server_grp")
    total = 6000  # about 6 MB: far more than the channel's buffers and the agent's marks
    app.sock.setblocking(False)
    sent = 0
    # The host reads nothing: the agent stops reading once the channel's buffer is full...
    while log_count(guest.daemon, PAUSED) == 0:
        try:
            app.sock.send(app_message(sent))
        except BlockingIOError:
            time.sleep(0.01)
            continue
        sent += 1
        assert sent < total, "the agent took every message although the host read none"
    # ... and the sends fail once its socket's queue is full too, and keep failing.
    while True:
        try:
            app.sock.send(app_message(sent))
        except BlockingIOError:
            break
        sent += 1
        assert sent < total, "the agent took every message although the host read none"
    for _ in range(20):
        time.sleep(0.01)
        with pytest.raises(BlockingIOError):
            app.sock.send(app_message(sent))
    assert sent > 0
    # The host reads again: every message arrives, in order, and the rest can be sent.
    got: list[int] = []
    reader = threading.Thread(
        target=lambda: got.extend(int(e.data["n"]) for e in host.read(total))  # type: ignore[arg-type]
    )
    reader.start()
    app.sock.settimeout(WAIT)  # blocking sends: each waits for room in the agent's queue
    for n in range(sent, total):
        app.sock.send(app_message(n))
    reader.join(60)
    assert got == list(range(total))
    counters = final_counters(guest.daemon)
    assert counters["dropped"] == {}
    assert counters["to_channel"] == total
    assert counters["apps_paused"] >= 1


# -- no host: a nack ------------------------------------------------------------------------


def test_without_a_host_a_server_group_message_is_answered_with_a_nack(
    guest: GuestUnderTest,
) -> None:
    app = guest.app("cgcs.server_grp")
    other = guest.app("my.app")
    log_msg = json.dumps(NO_HOST_LOG_MSG)
    app.send_raw(
        b'{"version": 2, "dest_addr": "cgcs.server_grp", '
        b'"data": {"version": 2, "msg_type": "broadcast", "data": "hello", "id": 7}}'
    )
    assert app.receive() == (
        b'{"version":2,"source_addr":"cgcs.server_grp","data":{"version":2,"msg_type":"nack",'
        b'"orig_msg_type":"broadcast","log_msg":' + log_msg.encode() + b',"id":7}}'
    )
    # The original's request without an id, from another address: the nack goes there.
    other.send({"version": 2, "msg_type": "status_query", "seq": 3})
    assert other.receive() == (
        b'{"version":2,"source_addr":"cgcs.server_grp","data":{"version":2,"msg_type":"nack",'
        b'"orig_msg_type":"status_query","log_msg":' + log_msg.encode() + b"}}"
    )
    # No msg_type string: "unknown"; an id that is not a non-negative integer is not copied.
    for data in (
        {"msg_type": 5, "id": -1},
        {"id": True},
        {"msg_type": "broadcast", "id": "7"},
        {"msg_type": "broadcast", "id": 1.5},
    ):
        app.send(data)  # type: ignore[arg-type]
        nack = json.loads(app.receive())["data"]
        assert "id" not in nack
        assert (
            nack["orig_msg_type"] == data["msg_type"]
            if isinstance(data.get("msg_type"), str)
            else nack["orig_msg_type"] == "unknown"
        )
    # A nack is never answered with a nack; other destinations are dropped.
    app.send({"version": 2, "msg_type": "nack", "orig_msg_type": "x", "log_msg": "y"})
    app.send({"version": 2, "msg_type": "broadcast", "data": "x"}, dest_addr="cgcs.scale")
    # The agent reads in order: the next answer comes after those two were handled.
    app.send({"version": 2, "msg_type": "status_query", "seq": 4})
    assert json.loads(app.receive())["data"]["orig_msg_type"] == "status_query"
    app.expect_nothing()
    counters = final_counters(guest.daemon)
    assert counters["nacked"] == 7
    assert counters["dropped"] == {"host not connected": 2}
    assert counters["to_apps"] == 7


def test_messages_unread_by_a_host_that_leaves_are_counted(guest: GuestUnderTest) -> None:
    host = guest.host()
    app = connected_app(guest, "my.app")
    app.sock.setblocking(False)
    sent = 0
    while log_count(guest.daemon, PAUSED) == 0:  # until the agent waits for the host
        try:
            app.sock.send(app_message(sent, "host.tool"))
        except BlockingIOError:
            time.sleep(0.01)
            continue
        sent += 1
        assert sent < 100_000, "the agent took every message although the host read none"
    host.close()
    wait_log_count(guest.daemon, "host disconnected", 1)
    # The agent reads its socket in order: once this is answered, it has read everything.
    last = guest.app("last.app")
    last.send({"version": 2, "msg_type": "status_query", "seq": 1})
    assert json.loads(last.receive())["data"]["msg_type"] == "nack"
    counters = final_counters(guest.daemon)
    assert counters["dropped"]["unsent at disconnect"] > 0
    # Every message is accounted for: written to the socket the host closed, lost with
    # it, or read after it left (and dropped: no host, and not for the server group).
    assert counters["from_apps"] == sent + 1
    assert counters["nacked"] == 1
    assert counters["dropped"].get("host not connected", 0) == sent - counters["to_channel"]


# -- channel -> applications: a queue per application -----------------------------------------


def test_a_slow_app_gets_a_burst_of_thousands_in_order(guest: GuestUnderTest) -> None:
    host = guest.host()
    app = guest.app("cgcs.server_grp")
    burst = 4000
    host.send(b"".join(frame_to("cgcs.server_grp", {"n": n}) for n in range(burst)))
    got: list[int] = []
    while len(got) < burst:
        got.append(json.loads(app.receive())["data"]["n"])
        if len(got) % 50 == 0:
            time.sleep(0.005)  # a slow reader: the agent has to wait for it
    assert got == list(range(burst))
    app.expect_nothing()
    counters = final_counters(guest.daemon)
    assert counters["dropped"] == {}
    assert counters["to_apps"] == burst
    assert counters["delivery_queued"] > 0


@pytest.fixture
def long_queue_guest(guest: GuestUnderTest) -> GuestUnderTest:
    """`guest`, restarted in a namespace whose sockets hold 1024 datagrams, as a server's do.

    Its bound per application is `APP_QUEUE_LIMIT` datagrams.
    """
    assert guest.daemon.stop() == 0
    set_qlen(guest.ns, GUEST_DGRAM_QLEN)
    guest.start("--app-queue-limit", str(APP_QUEUE_LIMIT))
    return guest


def test_an_app_that_does_not_read_gets_at_most_the_bound_and_does_not_hold_up_others(
    long_queue_guest: GuestUnderTest,
) -> None:
    guest = long_queue_guest
    host = guest.host()
    stopped = guest.app("stopped.app")
    reader = guest.app("reading.app")
    to_stopped, to_reader = 6000, 3000
    got_by_reader: list[int] = []
    thread = threading.Thread(
        target=lambda: got_by_reader.extend(
            json.loads(reader.receive())["data"]["n"] for _ in range(to_reader + 1)
        )
    )
    thread.start()
    # Interleaved: the stopped app's kernel queue (1025 datagrams) alone would fill the
    # kernel's default send buffer of the agent, and then nobody would get anything.
    stream = b"".join(
        frame_to("stopped.app", {"n": n})
        + (frame_to("reading.app", {"n": n}) if n < to_reader else b"")
        for n in range(to_stopped)
    )
    # The agent handles the channel in order: once the reader has the marker, every
    # message for the stopped app waits in its kernel queue or the agent's, or is dropped.
    host.send(stream + frame_to("reading.app", {"n": -1}))
    thread.join(60)
    assert got_by_reader == [*range(to_reader), -1]  # while the stopped app read nothing
    # The stopped app wakes up: what it gets is the start of the stream, in order, then
    # the newest (held while its queue was full), so that it sees the gap.
    got = receive_all(stopped)
    kernel_queue = GUEST_DGRAM_QLEN + 1  # the kernel lets one more in than its limit
    head = got[:-1]
    assert APP_QUEUE_LIMIT <= len(head) <= APP_QUEUE_LIMIT + kernel_queue
    assert got == [*range(len(head)), to_stopped - 1]
    # It reads from now on: what comes next arrives, after the gap.
    host.send(frame_to("stopped.app", {"n": to_stopped}))
    assert json.loads(stopped.receive())["data"]["n"] == to_stopped
    counters = final_counters(guest.daemon)
    assert counters["dropped"] == {"app not reading": to_stopped - len(got)}
    assert counters["to_apps"] == to_reader + 1 + len(got) + 1


def test_acks_and_nacks_for_an_app_that_does_not_read_pass_its_bound_then_none_goes(
    long_queue_guest: GuestUnderTest,
) -> None:
    """Deliveries stop at the app's bound (it sees the gap); its answers (acks and
    nacks of its broadcasts) do not, since a cumulative ack after a dropped nack would
    acknowledge a refused broadcast. Past their allowance one is lost, and so is every
    later one: its pending broadcasts end unconfirmed, never wrongly acknowledged."""
    guest = long_queue_guest
    host = guest.host()
    stopped = guest.app("stopped.app")
    deliveries, answers = 6000, APP_ANSWER_ALLOWANCE + 900
    host.send(b"".join(frame_to("stopped.app", {"n": n}) for n in range(deliveries)))
    host.send(
        b"".join(
            frame_to(
                "stopped.app",
                {"version": 2, "msg_type": "nack", "log_msg": "busy", "id": i, "n": -1 - i},
            )
            for i in range(answers)
        )
    )
    host.send(frame_to("stopped.app", {"version": 2, "msg_type": "broadcast_ack", "id": answers}))
    got = receive_all(stopped)
    kernel_queue = GUEST_DGRAM_QLEN + 1
    delivered = [n for n in got if n >= 0]
    nacked = [-1 - n for n in got if n < 0]
    head = delivered[:-1]  # the last is the newest delivery, held while the queue was full
    assert APP_QUEUE_LIMIT <= len(head) <= APP_QUEUE_LIMIT + kernel_queue
    assert delivered == [*range(len(head)), deliveries - 1]
    # The deliveries, the held one among them (nothing overtakes it: the first answer
    # takes it along); then every answer the allowance holds, in order; then nothing (not
    # the ack, which would pass the lost nacks).
    assert got == [*delivered, *(-1 - i for i in nacked)]
    assert nacked == list(range(len(nacked)))
    queued_deliveries = len(delivered) - kernel_queue
    assert len(nacked) == APP_QUEUE_LIMIT + APP_ANSWER_ALLOWANCE - queued_deliveries
    counters = final_counters(guest.daemon)
    assert counters["dropped"] == {
        "app not reading": deliveries - len(delivered),
        "answer lost": answers - len(nacked) + 1,
    }


def test_an_app_far_behind_holds_back_the_sends_of_its_server_until_it_catches_up(
    long_queue_guest: GuestUnderTest,
) -> None:
    guest = long_queue_guest
    host = guest.host()
    behind = guest.app("behind.app")
    sender = connected_app(guest, "sender.app")
    burst = GUEST_DGRAM_QLEN + 2 * DEFAULT_APP_BEHIND_HIGH  # the kernel's queue, then the agent's
    host.send(b"".join(frame_to("behind.app", {"n": n}) for n in range(burst)))
    # behind.app reads, but slowly: one datagram every 50 ms, so it stays far behind.
    got: list[int] = []
    catch_up = threading.Event()

    def read() -> None:
        while len(got) < burst:
            got.append(json.loads(behind.receive())["data"]["n"])
            if not catch_up.is_set():
                time.sleep(0.05)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        wait_log_count(guest.daemon, YIELDED, 1)
        # Its server's sends wait: the agent's queue fills, the host gets none of them.
        sender.sock.setblocking(False)
        sent = 0
        with contextlib.suppress(BlockingIOError):
            while sent <= 2 * GUEST_DGRAM_QLEN:
                sender.sock.send(app_message(sent))
                sent += 1
        assert 0 < sent <= GUEST_DGRAM_QLEN + 1, "the agent took sends while behind.app lagged"
        host.expect_nothing(quiet=2 * DEFAULT_APP_STALL_AFTER)
        assert len(got) < burst - DEFAULT_APP_BEHIND_HIGH
    finally:
        catch_up.set()
        thread.join(60)
    # behind.app caught up: everything reached it in order, and the host gets every send.
    assert got == list(range(burst))
    assert [int(e.data["n"]) for e in host.read(sent)] == list(range(sent))  # type: ignore[arg-type]
    counters = final_counters(guest.daemon)
    assert counters["dropped"] == {}
    assert counters["apps_yielded"] >= 1


def test_an_app_that_does_not_read_holds_back_no_sends_for_long(
    long_queue_guest: GuestUnderTest,
) -> None:
    guest = long_queue_guest
    host = guest.host()
    behind = guest.app("behind.app")  # bound, never read
    sender = connected_app(guest, "sender.app")
    burst = GUEST_DGRAM_QLEN + 2 * DEFAULT_APP_BEHIND_HIGH
    host.send(b"".join(frame_to("behind.app", {"n": n}) for n in range(burst)))
    wait_log_count(guest.daemon, YIELDED, 1)
    total = 2 * GUEST_DGRAM_QLEN
    got: list[int] = []
    reader = threading.Thread(
        target=lambda: got.extend(int(e.data["n"]) for e in host.read(total))  # type: ignore[arg-type]
    )
    reader.start()
    # Blocking sends, each waiting for room in the agent's queue: were they held for as
    # long as behind.app does not read, they would time out (WAIT) here.
    try:
        for n in range(total):
            sender.sock.send(app_message(n))
    finally:
        reader.join(60)
    assert got == list(range(total))
    assert behind.sock.fileno() >= 0  # it stayed bound (and unread) all along


def test_what_waits_for_an_app_that_goes_away_is_dropped(guest: GuestUnderTest) -> None:
    host = guest.host()
    leaving = guest.app("leaving.app")
    marker = guest.app("cgcs.server_grp")
    host.send(b"".join(frame_to("leaving.app", {"n": n}) for n in range(500)))
    # The agent handles the channel in order: once the marker is here, the 500 are
    # in the kernel's queue of `leaving` or waiting in the agent.
    host.send(frame_to("cgcs.server_grp", {"n": -1}))
    assert json.loads(marker.receive())["data"]["n"] == -1
    leaving.sock.close()
    wait_log_count(guest.daemon, "waited for 'leaving.app', which has gone away", 1)
    counters = final_counters(guest.daemon)
    taken_by_kernel = counters["to_apps"] - 1
    assert 0 < taken_by_kernel < 500
    assert counters["dropped"] == {"app not bound": 500 - taken_by_kernel}


# -- net.unix.max_dgram_qlen ----------------------------------------------------------------


def test_the_agent_warns_when_the_kernel_queue_is_short(
    netns: NetnsFactory, daemon: DaemonFactory, short_dir: Path
) -> None:
    low = netns()
    high = netns()
    set_qlen(high, GUEST_DGRAM_QLEN)
    before = root_qlen()
    agents = {}
    for ns in (low, high):
        guest = GuestUnderTest(ns, short_dir / ns / "channel.sock", netns, daemon, daemon=None)  # type: ignore[arg-type]
        agents[ns] = guest.start()
    assert netns_qlen(low) == 10
    assert log_count(agents[low], LOW_QLEN_WARNING) == 1
    assert log_count(agents[high], LOW_QLEN_WARNING) == 0
    assert root_qlen() == before


@pytest.fixture
def lab_server() -> Iterator[tuple[LabDriver, str]]:
    """A lab driver with a state directory of its own, and a name whose server it deletes."""
    state = Path(tempfile.mkdtemp(prefix="sgq", dir="/tmp"))  # short: socket paths
    driver = LabDriver(state)
    name = f"q{secrets.token_hex(4)}"
    try:
        yield driver, name
    finally:
        driver.delete_sync(name, f"instance-{name[1:9]}")
        shutil.rmtree(state, ignore_errors=True)


def test_a_lab_server_gets_a_long_kernel_queue_and_the_machine_keeps_its_own(
    lab_server: tuple[LabDriver, str],
) -> None:
    driver, name = lab_server
    before = root_qlen()
    driver.create_sync(name)
    driver.start_sync(name)
    assert netns_qlen(driver.netns(name)) == GUEST_DGRAM_QLEN
    assert root_qlen() == before
    log_text = driver.log_path(name).read_text()
    assert "guest agent ready" in log_text
    assert LOW_QLEN_WARNING not in log_text
    # Creating it again (a restarted host daemon) changes nothing.
    driver.create_sync(name)
    assert netns_qlen(driver.netns(name)) == GUEST_DGRAM_QLEN
    assert root_qlen() == before
