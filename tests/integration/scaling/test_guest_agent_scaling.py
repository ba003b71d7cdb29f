"""The scale agent inside the real guest agent, on a lab CPU tree; the test is the host.

Requests arrive over the channel as a host sends them; replies come back on
the channel to the requester's address. The CPU tree is the lab server's
own (never this machine's CPUs).
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading

from servergroup.guestcomm.protocol import JsonObject
from servergroup.scaling.protocol import (
    Direction,
    Result,
    ScaleNack,
    ScaleReply,
    ScaleRequest,
    encode_message,
)
from tests.fixtures.netns import NetnsFactory
from tests.integration.guestcomm.conftest import CLI, log_count, wait_log_count
from tests.integration.scaling.conftest import HOST_ADDR, ScaledGuest, wait_until

NO_SYNC = ("--scale-sync-timeout", "0")


def test_down_down_refused_at_cpu_0_then_up(scaled: ScaledGuest) -> None:
    scaled.start(*NO_SYNC, "--scale-helper", str(scaled.dir / "none"), cpus=3)
    host = scaled.host()
    first = host.down()
    assert (first.result, first.cpu, first.online_cpus) == (Result.SUCCESS, 2, (0, 1))
    assert scaled.online_file() == "0-1\n"
    second = host.down()
    assert (second.result, second.cpu, second.online_cpus) == (Result.SUCCESS, 1, (0,))
    refused = host.down()
    assert refused.result is Result.FAIL
    assert refused.err_msg is not None
    assert "only CPU 0 is online" in refused.err_msg
    assert scaled.online_file() == "0\n"
    again = host.up(1)
    assert (again.result, again.cpu, again.online_cpus) == (Result.SUCCESS, 1, (0, 1))
    assert scaled.online_file() == "0-1\n"
    assert (scaled.root / "sys/devices/system/cpu/offline").read_text() == "2\n"


def test_the_helper_names_the_cpu_and_hears_of_the_scale_up(scaled: ScaledGuest) -> None:
    heard = scaled.dir / "heard"
    helper = scaled.helper(
        f'echo "$@" >> {heard}; [ "$1" = --cpu_del ] && exit 1; echo garbage; exit 255'
    )
    scaled.start(*NO_SYNC, "--scale-helper", str(helper))
    host = scaled.host()
    down = host.down()
    assert (down.cpu, down.online_cpus) == (1, (0, 2, 3))
    up = host.up(1)
    assert (up.result, up.online_cpus) == (Result.SUCCESS, (0, 1, 2, 3))
    assert heard.read_text().splitlines() == ["--cpu_del", "--cpu_add 1 [0,1,2,3]"]


def test_a_helper_past_the_timeout_is_killed_and_the_request_fails(scaled: ScaledGuest) -> None:
    helper = scaled.helper("sleep 30")
    scaled.start(*NO_SYNC, "--scale-helper", str(helper))
    host = scaled.host()
    reply = host.down(timeout_ms=400)
    assert reply.result is Result.FAIL
    assert reply.err_msg is not None
    assert "400 ms" in reply.err_msg
    assert scaled.online_file() == "0-3\n"
    # The agent serves on: the next request is answered.
    host.send(ScaleRequest(direction=Direction.UP, online_cpu=3, timeout_ms=5000, id=9))
    answer = host.reply()
    assert isinstance(answer, ScaleReply)
    assert (answer.result, answer.id) == (Result.SUCCESS, 9)


def test_boot_sync_takes_the_recorded_cpus_offline_before_ready(scaled: ScaledGuest) -> None:
    ready = scaled.dir / "scale.ready"
    scaled.start("--scale-sync-timeout", "30", "--scale-ready-file", str(ready), cpus=4)
    host = scaled.host()
    host.sync_request()  # asked again and again until the host answers
    assert not ready.exists()
    host.send(
        {"version": 2, "msg_type": "scale_sync", "resource": "cpu", "offline_cpus": [0, 1, 3]},
        source="cgcs.scale",
    )
    wait_until(ready.exists, "the scale agent's ready file after the boot sync")
    assert scaled.online_file() == "0,2\n"  # CPU 0 is never taken offline
    wait_log_count(scaled.guest.daemon, "CPU 0 is never taken offline", 1)


def test_boot_sync_gives_up_when_no_host_answers(scaled: ScaledGuest) -> None:
    ready = scaled.dir / "scale.ready"
    scaled.start("--scale-sync-timeout", "1", "--scale-ready-file", str(ready), cpus=2)
    wait_until(ready.exists, "the ready file once the boot sync gave up")
    assert log_count(scaled.guest.daemon, "no host answered within 1 s") == 1
    assert scaled.online_file() == "0-1\n"
    host = scaled.host()  # and it serves
    assert host.down().cpu == 1


def test_malformed_requests_get_a_nack_and_the_agent_serves_on(scaled: ScaledGuest) -> None:
    scaled.start(*NO_SYNC, "--scale-helper", str(scaled.dir / "none"))
    host = scaled.host()
    base: JsonObject = {
        "version": 2,
        "msg_type": "scale_request",
        "resource": "cpu",
        "direction": "down",
    }
    cases: list[tuple[JsonObject, str]] = [
        ({**base, "direction": "sideways"}, "direction 'sideways'"),
        ({**base, "resource": "memory"}, "resource 'memory'"),
        ({**base, "version": 1}, "version 1"),
        ({**base, "timeout_ms": -5}, "timeout_ms"),
        ({**base, "direction": "up"}, "online_cpu"),
        ({"version": 2, "msg_type": "scale_sync_request", "resource": "cpu"}, "no sync"),
    ]
    for bad, words in cases:
        host.send(bad)
        nack = host.reply()
        assert isinstance(nack, ScaleNack), nack
        assert words in nack.log_msg
        assert nack.log_msg.endswith(".")
    # Not from the guest agent: dropped without a word (a local program cannot scale).
    app = scaled.guest.app("intruder")
    app.send_raw(
        json.dumps({"version": 2, "source_addr": HOST_ADDR, "data": base}).encode(),
        to="cgcs.scale",
    )
    wait_log_count(scaled.guest.daemon, "takes requests only from the guest agent", 1)
    host.host.expect_nothing()
    assert scaled.online_file() == "0-3\n"
    assert host.down().cpu == 3
    assert scaled.guest.daemon.running


def test_concurrent_requests_never_pick_the_same_cpu(scaled: ScaledGuest) -> None:
    """Two requests in flight: served one after the other, each on what the other left."""
    helper = scaled.helper("sleep 0.3; exit 0")  # no preference: the highest online
    scaled.start(*NO_SYNC, "--scale-helper", str(helper), cpus=4)
    host = scaled.host()
    frames = b"".join(
        json.dumps(
            {
                "version": 2,
                "source_addr": HOST_ADDR,
                "dest_addr": "cgcs.scale",
                "data": encode_message(
                    ScaleRequest(direction=Direction.DOWN, timeout_ms=5000, id=i)
                ),
            }
        ).encode()
        + b"\n"
        for i in range(3)
    )
    host.host.send(frames)  # all three in one write: all in flight at once
    replies = [host.reply() for _ in range(3)]
    assert all(isinstance(r, ScaleReply) and r.result is Result.SUCCESS for r in replies)
    by_id = {r.id: r for r in replies if isinstance(r, ScaleReply)}
    assert [by_id[i].cpu for i in range(3)] == [3, 2, 1]
    assert [by_id[i].online_cpus for i in range(3)] == [(0, 1, 2), (0, 1), (0,)]
    assert scaled.online_file() == "0\n"


def test_a_request_racing_a_boot_sync(scaled: ScaledGuest) -> None:
    """A scale-down arriving while the boot sync is still waiting is served; the sync then
    makes the guest match the host's record."""
    scaled.start("--scale-sync-timeout", "30", "--scale-helper", str(scaled.dir / "none"))
    host = scaled.host()
    host.sync_request()
    host.send(ScaleRequest(direction=Direction.DOWN, timeout_ms=5000))
    envelope = host.read()
    while envelope.dest_addr != HOST_ADDR:  # a repeated sync request may come first
        envelope = host.read()
    assert envelope.data["offline_cpu"] == 3
    host.send(
        {"version": 2, "msg_type": "scale_sync", "resource": "cpu", "offline_cpus": [2, 3]},
        source="cgcs.scale",
    )
    wait_until(lambda: scaled.online_file() == "0-1\n", "the boot sync's CPUs offline")


def test_the_scale_agent_alone(scaled: ScaledGuest) -> None:
    """`servergroup scale-agent` beside a guest agent started with --no-scale-agent."""
    scaled.guest.scale = ("--no-scale-agent",)
    scaled.guest.start()
    root = scaled.root
    scaled.guest.start_daemon(
        scaled.guest.netns.command(
            scaled.guest.ns,
            [
                *CLI,
                "scale-agent",
                "--sysfs-root",
                str(root),
                "--lab-cpus",
                "2",
                "--sync-timeout",
                "0",
                "--helper",
                str(scaled.dir / "none"),
            ],
        ),
        name="scale-agent",
        ready="scale agent ready",
    )
    wait_until(lambda: (root / "sys/devices/system/cpu/online").exists(), "the lab tree")
    host = scaled.host()
    assert host.down().online_cpus == (0,)
    assert host.up(1).online_cpus == (0, 1)


class _Metadata(http.server.BaseHTTPRequestHandler):
    """The original's metadata server: `offline_cpuset` in an OpenStack meta_data.json."""

    def do_GET(self) -> None:
        body = b'{"uuid": "x", "meta": {"offline_cpuset": "set([1, 3])"}}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_boot_sync_from_the_original_metadata(scaled: ScaledGuest) -> None:
    """With --metadata-url the boot sync reads `offline_cpuset` over HTTP, not the channel.

    The server listens inside the guest's namespace (its loopback brought up for it).
    """
    ns = scaled.guest.ns
    subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
    listener = NetnsFactory.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Metadata, bind_and_activate=False)
    httpd.socket.close()
    httpd.socket = listener
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        ready = scaled.dir / "scale.ready"
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/openstack/latest/meta_data.json"
        scaled.start(
            "--metadata-url",
            url,
            "--scale-sync-timeout",
            "20",
            "--scale-ready-file",
            str(ready),
            cpus=4,
        )
        wait_until(ready.exists, "the ready file after the metadata boot sync")
        assert scaled.online_file() == "0,2\n"
        host = scaled.host()
        host.host.expect_nothing()  # nothing asked over the channel
    finally:
        httpd.shutdown()
        httpd.server_close()
