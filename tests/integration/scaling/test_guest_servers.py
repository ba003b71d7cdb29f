"""The guest side on real servers: a qemu VM's own kernel, and a lab server's own CPU tree.

Everything is real: `servergroup up` (managed etcd, a lab host and its host
daemon with the channel relay), one server created with `servergroup server
create --vcpus 3`, and the host end played the way the original's host-side
helper did it: a datagram to the host's abstract `cgcs.messaging`, from an
address `scale-<hex>` (the instance's hex), naming the guest in
`dest_instance` and `cgcs.scale` in `dest_addr`, sent from the lab host's
network namespace. The relay forwards it over the channel to the guest
agent, whose scale agent answers; the answer comes back to `scale-<hex>`.
The test then reads the server's own view of its CPUs: the VM's
`/sys/devices/system/cpu/online` through `servergroup server exec`, or the
lab server's tree. This machine's own CPUs are never touched.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from servergroup.scaling.protocol import (
    Direction,
    Result,
    ScaleReply,
    ScaleRequest,
    decode_reply,
    encode_message,
)
from servergroup.scaling.sysfs import CPU_DIR
from tests.fixtures.netns import NetnsFactory
from tests.fixtures.setup import Setup, SetupFactory
from tests.integration.test_compat_c import host_netns

pytestmark = pytest.mark.timeout(300)

#: Under TCG a VM's Python is slow: a round trip may take seconds.
REPLY_TIMEOUT = 60.0


class OriginalHostHelper:
    """The original's host-side scaling helper: `scale-<hex>` on the host's cgcs.messaging."""

    def __init__(self, netns: str, instance: str) -> None:
        self.instance = instance
        self.address = "scale-" + instance.rpartition("-")[2]
        self.sock = NetnsFactory.socket_in(netns, socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.address.encode())
        self.sock.settimeout(REPLY_TIMEOUT)

    def ask(self, request: ScaleRequest) -> ScaleReply:
        envelope = {
            "version": 2,
            "dest_addr": "cgcs.scale",
            "dest_instance": self.instance,
            "data": encode_message(request),
        }
        self.sock.sendto(json.dumps(envelope).encode(), b"\0cgcs.messaging")
        data, sender = self.sock.recvfrom(4096)
        assert sender == b"\0cgcs.messaging"
        delivered = json.loads(data)
        assert delivered["source_addr"] == "cgcs.scale", delivered
        assert delivered["source_instance"] == self.instance, delivered
        reply = decode_reply(delivered["data"])
        assert isinstance(reply, ScaleReply), reply
        return reply

    def close(self) -> None:
        self.sock.close()


def guest_online(setup: Setup, name: str, driver: str) -> str:
    """The server's own list of online CPUs."""
    if driver == "qemu":
        path = "/sys/devices/system/cpu/online"
    else:
        path = str(setup.state_dir / "servers" / name / "sysroot" / CPU_DIR / "online")
    return setup.run("server", "exec", name, "--", "cat", path).stdout.strip()


@pytest.mark.parametrize("driver", ["lab", "qemu"])
def test_the_original_host_helper_scales_a_server(
    servergroup_up: SetupFactory, driver: str
) -> None:
    machine_before = Path("/sys/devices/system/cpu/online").read_text()
    setup = servergroup_up(1)
    setup.run("group", "create", "grp")
    setup.run("server", "create", "s1", "--group", "grp", "--driver", driver, "--vcpus", "3")
    instance = str(setup.json("server", "show", "s1")["instance_name"])
    assert guest_online(setup, "s1", driver) == "0-2"
    helper = OriginalHostHelper(host_netns(setup, "h1"), instance)
    try:
        down = helper.ask(ScaleRequest(direction=Direction.DOWN, timeout_ms=30_000))
        assert (down.result, down.cpu, down.online_cpus) == (Result.SUCCESS, 2, (0, 1))
        assert guest_online(setup, "s1", driver) == "0-1"
        down = helper.ask(ScaleRequest(direction=Direction.DOWN, timeout_ms=30_000))
        assert (down.result, down.cpu, down.online_cpus) == (Result.SUCCESS, 1, (0,))
        refused = helper.ask(ScaleRequest(direction=Direction.DOWN, timeout_ms=30_000))
        assert refused.result is Result.FAIL
        assert refused.err_msg is not None
        assert "only CPU 0 is online" in refused.err_msg
        assert guest_online(setup, "s1", driver) == "0"
        up = helper.ask(
            ScaleRequest(
                direction=Direction.UP, online_cpu=1, online_cpus=(0, 1), timeout_ms=30_000
            )
        )
        assert (up.result, up.cpu, up.online_cpus) == (Result.SUCCESS, 1, (0, 1))
        assert guest_online(setup, "s1", driver) == "0-1"
    finally:
        helper.close()
    assert Path("/sys/devices/system/cpu/online").read_text() == machine_before
