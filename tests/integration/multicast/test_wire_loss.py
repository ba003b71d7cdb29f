"""The lab's loss drops datagrams one by one, even when the sender sends them in runs.

A sender that hands the kernel a run of datagrams in one segmented send
(`UDP_SEGMENT`) must lose single datagrams of it on a lossy lab link, as on a
real wire, not the whole run: otherwise loss rows of tools that batch and of
tools that do not are not comparable. The receiver here reads one datagram per
call (no `UDP_GRO`) and counts, per run, how many of its datagrams arrived.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures.lab import LabFactory

pytestmark = pytest.mark.root

GROUP = "239.192.77.7"
PORT = 19877
RUNS = 60
PER_RUN = 40
SIZE = 1000

SENDER = r"""
import socket, struct, sys, time
local, group = sys.argv[1], sys.argv[2]
port, runs, per, size = map(int, sys.argv[3:7])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((local, 0))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
segment = [(17, 103, struct.pack("=H", size))]  # SOL_UDP, UDP_SEGMENT
for run in range(runs):
    data = b"".join(struct.pack("!II", run, i).ljust(size, b"x") for i in range(per))
    s.sendmsg([data], segment, 0, (group, port))
    time.sleep(0.002)
for _ in range(20):  # the end marker, sent one datagram per call
    s.sendto(b"end", (group, port))
    time.sleep(0.01)
"""

RECEIVER = r"""
import json, socket, struct, sys
local, group, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: no drops of our own
s.bind((group, port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton(group) + socket.inet_aton(local))
s.settimeout(20)
print("ready", flush=True)
per_run, sizes = {}, set()
while True:
    data = s.recv(65536)
    if data == b"end":
        break
    sizes.add(len(data))
    run, _ = struct.unpack_from("!II", data)
    per_run[run] = per_run.get(run, 0) + 1
print(json.dumps({"per_run": per_run, "sizes": sorted(sizes)}), flush=True)
"""


@pytest.mark.timeout(120)
def test_loss_drops_single_datagrams_of_a_segmented_send(lab: LabFactory) -> None:
    net = lab(2, loss=30)
    sender_host, receiver_host = net.hosts()
    receiver = net.popen(
        receiver_host.name,
        [sys.executable, "-c", RECEIVER, str(receiver_host.address), GROUP, str(PORT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        sent = net.exec(
            sender_host.name,
            [
                sys.executable,
                "-c",
                SENDER,
                str(sender_host.address),
                GROUP,
                str(PORT),
                str(RUNS),
                str(PER_RUN),
                str(SIZE),
            ],
            timeout=60,
        )
        assert sent.returncode == 0
        out, _ = receiver.communicate(timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait(10)
    result = json.loads(out.strip().splitlines()[-1])
    counts = [result["per_run"].get(str(run), 0) for run in range(RUNS)]
    # Each datagram arrives on its own, never a run glued together.
    assert result["sizes"] == [SIZE]
    # Lost one by one: with 30 % loss per datagram, a run of 40 arrives whole with
    # probability 0.7**40 (~6e-7) and not at all with 0.3**40; lost as whole runs,
    # every run would be either.
    partial = [c for c in counts if 0 < c < PER_RUN]
    assert len(partial) >= RUNS - 2, counts
    received = sum(counts)
    assert 0 < received < RUNS * PER_RUN, counts
