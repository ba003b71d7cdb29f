"""`servergroup image send|receive` between lab hosts: real processes, real multicast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.lab import LabFactory
from tests.fixtures.wait import wait_until
from tests.integration.multicast.conftest import PORT, SG, Process, TransferFactory

pytestmark = pytest.mark.root

SMALL_BUFFER = ["--buffer-packets", "256"]  # several rounds even for a small image


def wait_for_buffer(sender: Process, buffer: int) -> None:
    """Until the sender logs `buffer N done`: the transfer is under way."""
    line = f"buffer {buffer} done"
    wait_until(lambda: line in sender.stderr(), f"the sender logging {line!r}", timeout=20)


def assert_all_received(t: object, names: list[str], image: bytes) -> None:
    from tests.integration.multicast.conftest import Transfer

    assert isinstance(t, Transfer)
    for name in names:
        assert t.output(name) == image, f"{name}'s output differs"


@pytest.mark.parametrize(
    ("receivers", "mtu", "loss"),
    [(1, 1500, 0), (4, 9000, 2), (8, 1500, 10), (4, 9000, 10), (8, 9000, 0)],
)
def test_every_receiver_gets_the_identical_image(
    transfer: TransferFactory, image: Path, receivers: int, mtu: int, loss: float
) -> None:
    t = transfer(receivers + 1, mtu=mtu, loss=loss)
    # Without --mtu, the sender takes the MTU of the interface with LOCAL_IP.
    given = [] if (receivers, mtu) == (8, 9000) else ["--mtu", str(mtu)]
    sender = t.sender(receivers, image, *given, *SMALL_BUFFER)
    procs = t.receivers()
    assert sender.wait(60) == 0, sender.stderr()
    report = sender.stdout_json()
    assert report["ok"]
    assert report["mtu"] == mtu
    assert report["mtu_from"] == ("eth0's MTU" if not given else "--mtu")
    assert report["bytes"] == image.stat().st_size
    assert len(report["clients"]) == receivers
    for proc in procs.values():
        assert proc.wait(10) == 0, proc.stderr()
        got = proc.stdout_json()
        assert got["ok"]
        assert got["bytes"] == image.stat().st_size
    if loss >= 10:
        # Something was lost and made good: a multicast re-send or TCP repairs.
        packets = -(-image.stat().st_size // (mtu - 28 - 24))
        repaired = sum(row["tcp_packets"] for row in report["clients"])
        assert report["multicast_packets"] > packets or repaired > 0
    assert_all_received(t, list(procs), image.read_bytes())
    assert not list(t.tmp_path.glob(".*.part"))


@pytest.mark.parametrize("counted", [False, True], ids=["no-metrics", "metrics-file"])
def test_the_sender_counts_metrics_only_when_asked(
    transfer: TransferFactory, image: Path, tmp_path: Path, counted: bool
) -> None:
    """Without `--metrics` or `--metrics-file` the sender never loads prometheus_client
    (its start is on every transfer's clock); with `--metrics-file` the file counts
    every byte delivered."""
    t = transfer(2)
    modules, prom = tmp_path / "modules.json", tmp_path / "send.prom"
    args = ["--metrics-file", str(prom)] if counted else []
    sender = t.sender(1, image, *SMALL_BUFFER, *args, modules_to=modules)
    procs = t.receivers()
    assert sender.wait(60) == 0, sender.stderr()
    for proc in procs.values():
        assert proc.wait(10) == 0, proc.stderr()
    assert_all_received(t, list(procs), image.read_bytes())
    loaded = json.loads(modules.read_text())
    assert "servergroup.multicast.sender" in loaded
    assert ("prometheus_client" in loaded) is counted
    if counted:
        (sent,) = [
            float(line.split()[1])
            for line in prom.read_text().splitlines()
            if line.startswith("servergroup_transfer_bytes_total ")
        ]
        assert sent == image.stat().st_size
    else:
        assert not prom.exists()


def test_an_empty_image(transfer: TransferFactory, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    t = transfer(3)
    sender = t.sender(2, empty)
    procs = t.receivers()
    assert sender.wait(30) == 0, sender.stderr()
    for proc in procs.values():
        assert proc.wait(10) == 0, proc.stderr()
    assert_all_received(t, list(procs), b"")


def test_an_image_from_a_pipe_in_short_uneven_writes(
    transfer: TransferFactory, image: Path
) -> None:
    # A producer that writes 1-4 KiB at a time with pauses: the sender sees short reads.
    producer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "data = open(sys.argv[1], 'rb').read()\n"
            "i = 0; n = 0\n"
            "while i < len(data):\n"
            "    step = 1000 + (n * 977) % 3096\n"
            "    sys.stdout.buffer.write(data[i:i+step]); sys.stdout.flush()\n"
            "    i += step; n += 1\n"
            "    if n % 200 == 0: time.sleep(0.01)\n",
            str(image),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        t = transfer(3)
        assert producer.stdout is not None
        sender = t.sender(2, producer.stdout, *SMALL_BUFFER)
        producer.stdout.close()
        procs = t.receivers()
        assert sender.wait(60) == 0, sender.stderr()
        for proc in procs.values():
            assert proc.wait(10) == 0, proc.stderr()
        assert_all_received(t, list(procs), image.read_bytes())
    finally:
        producer.kill()
        producer.wait()


def test_a_receiver_to_stdout(transfer: TransferFactory, image: Path, tmp_path: Path) -> None:
    t = transfer(2)
    sender = t.sender(1, image)
    out = tmp_path / "stdout.img"
    with out.open("wb") as f:
        proc = t.lab.popen(
            "h2",
            [sys.executable, "-m", "servergroup", "image", "receive", t.address("h2"), t.server],
            stdout=f,
            stderr=subprocess.DEVNULL,
        )
    try:
        assert proc.wait(60) == 0
    finally:
        proc.kill()
        proc.wait()
    assert sender.wait(10) == 0
    assert out.read_bytes() == image.read_bytes()


def test_a_killed_receiver_is_reported_and_the_others_finish(
    transfer: TransferFactory, image: Path
) -> None:
    t = transfer(4)
    # 25 Mbit/s: the 3 MiB image takes about a second, so the kill lands mid-transfer.
    sender = t.sender(3, image, "--rate", "25m", *SMALL_BUFFER, "--timeout", "3")
    procs = t.receivers()
    wait_for_buffer(sender, 1)
    procs["h3"].proc.kill()
    assert sender.wait(60) == 3, sender.stderr()
    rows = {row["name"]: row for row in sender.stdout_json()["clients"]}
    assert rows[t.address("h3")]["status"] == "dropped"
    for name in ("h2", "h4"):
        assert rows[t.address(name)]["status"] == "finished"
        assert procs[name].wait(10) == 0
    assert_all_received(t, ["h2", "h4"], image.read_bytes())
    assert not (t.tmp_path / "h3.img").exists()
    # SIGKILL left h3's part file (named for its PID); the next receive to the
    # same output removes it, since that process is gone, and succeeds.
    (stale,) = t.tmp_path.glob(".h3.img.*.part")
    assert f".{procs['h3'].proc.pid}-" in stale.name
    again = t.sender(1, image, *SMALL_BUFFER)
    retry = t.receiver("h3")
    assert again.wait(60) == 0, again.stderr()
    assert retry.wait(10) == 0, retry.stderr()
    assert t.output("h3") == image.read_bytes()
    assert not list(t.tmp_path.glob(".h3.img.*.part"))


def test_a_killed_sender_fails_every_receiver_within_the_timeout(
    transfer: TransferFactory, image: Path
) -> None:
    t = transfer(3)
    sender = t.sender(2, image, "--rate", "20m", *SMALL_BUFFER)
    procs = t.receivers("--timeout", "3")
    wait_for_buffer(sender, 0)
    sender.proc.kill()
    killed_at = time.monotonic()
    for proc in procs.values():
        assert proc.wait(10) == 1
        assert "the image did not arrive" in proc.stderr()
    assert time.monotonic() - killed_at < 3.0 + 1.0
    for name in procs:
        assert not (t.tmp_path / f"{name}.img").exists()
    assert not list(t.tmp_path.glob(".*.part"))


def test_a_frozen_sender_fails_every_receiver_after_the_timeout(
    transfer: TransferFactory, image: Path
) -> None:
    t = transfer(2)
    # The sender's --timeout 2 keeps alive every 0.5 s, so the receiver's own 2 s is what
    # applies (it waits at least two keepalive intervals: 5 s with the sender's default).
    sender = t.sender(1, image, "--rate", "20m", *SMALL_BUFFER, "--timeout", "2")
    proc = t.receiver("h2", "--timeout", "2")
    wait_for_buffer(sender, 0)
    os.kill(sender.proc.pid, signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        assert proc.wait(10) == 1
        assert 1.5 < time.monotonic() - frozen_at < 2.0 + 2.0
        assert "for 2 s" in proc.stderr()
    finally:
        os.kill(sender.proc.pid, signal.SIGCONT)
    assert not (t.tmp_path / "h2.img").exists()


def test_a_silent_receiver_is_dropped_after_the_timeout(
    transfer: TransferFactory, image: Path
) -> None:
    t = transfer(4)
    sender = t.sender(3, image, "--rate", "30m", *SMALL_BUFFER, "--timeout", "2")
    procs = t.receivers("--timeout", "30")
    wait_for_buffer(sender, 0)
    os.kill(procs["h2"].proc.pid, signal.SIGSTOP)
    try:
        assert sender.wait(60) == 3, sender.stderr()
    finally:
        os.kill(procs["h2"].proc.pid, signal.SIGCONT)
    rows = {row["name"]: row for row in sender.stdout_json()["clients"]}
    assert rows[t.address("h2")]["status"] == "dropped"
    assert "silent for 2 s" in rows[t.address("h2")]["reason"]
    for name in ("h3", "h4"):
        assert procs[name].wait(10) == 0
    assert_all_received(t, ["h3", "h4"], image.read_bytes())
    assert procs["h2"].wait(10) == 1


def test_garbage_forged_and_foreign_packets_and_bad_connections_change_nothing(
    transfer: TransferFactory, image: Path, tmp_path: Path
) -> None:
    key = tmp_path / "key"
    key.write_text("correct horse battery staple\n")
    t = transfer(4)
    rogue_tcp = t.rogue("h4", "connections", t.server, str(PORT), "8")
    sender = t.sender(2, image, "--key-file", str(key), "--rate", "40m", *SMALL_BUFFER)
    rogue_udp = t.rogue("h4", "datagrams", "239.192.83.71", str(PORT), "6")
    procs = {name: t.receiver(name, "--key-file", str(key)) for name in ("h2", "h3")}
    assert sender.wait(60) == 0, sender.stderr()
    for proc in procs.values():
        assert proc.wait(10) == 0, proc.stderr()
        counters = proc.stdout_json()["counters"]
        assert counters["forged"] > 0, counters  # unsigned or wrongly signed: all refused
    assert_all_received(t, list(procs), image.read_bytes())
    assert rogue_udp.wait(20) == 0
    rogue_tcp.wait(20)


def test_without_a_key_corrupt_and_foreign_packets_are_counted(
    transfer: TransferFactory, image: Path
) -> None:
    t = transfer(3)
    sender = t.sender(1, image, "--rate", "40m", *SMALL_BUFFER)
    rogue = t.rogue("h3", "datagrams", "239.192.83.71", str(PORT), "4")
    proc = t.receiver("h2")
    assert sender.wait(60) == 0, sender.stderr()
    assert proc.wait(10) == 0, proc.stderr()
    counters = proc.stdout_json()["counters"]
    assert counters["corrupt"] > 0
    assert counters["foreign"] > 0
    assert_all_received(t, ["h2"], image.read_bytes())
    rogue.wait(20)


def test_a_receiver_with_the_wrong_key_fails_clearly(
    transfer: TransferFactory, image: Path, tmp_path: Path
) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.write_text("one")
    theirs.write_text("two")
    t = transfer(2)
    sender = t.sender(1, image, "--key-file", str(ours), "--wait", "5")
    proc = t.receiver("h2", "--key-file", str(theirs))
    assert proc.wait(30) == 1
    assert "key" in proc.stderr()
    assert sender.wait(30) == 1


def test_a_receiver_that_gets_no_multicast_completes_over_tcp(
    transfer: TransferFactory, image: Path
) -> None:
    t = transfer(4)
    block = (
        "table ip mcblock {\n"
        "  chain in {\n"
        "    type filter hook prerouting priority -400;\n"
        "    ip daddr 224.0.0.0/4 drop\n"
        "  }\n"
        "}\n"
    )
    t.lab.exec("h3", ["nft", "-f", "-"], input=block.encode(), check=True)
    sender = t.sender(3, image, *SMALL_BUFFER)
    procs = t.receivers()
    assert sender.wait(60) == 0, sender.stderr()
    rows = {row["name"]: row for row in sender.stdout_json()["clients"]}
    assert rows[t.address("h3")]["tcp_only"] is True
    assert rows[t.address("h3")]["counters"]["multicast"] == 0
    assert rows[t.address("h2")]["tcp_only"] is False
    for proc in procs.values():
        assert proc.wait(10) == 0
    assert_all_received(t, list(procs), image.read_bytes())


def test_a_full_disk_fails_that_receiver_clearly_and_the_others_finish(
    transfer: TransferFactory, image: Path, tmp_path: Path
) -> None:
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)], check=True)
    try:
        t = transfer(3)
        sender = t.sender(2, image, *SMALL_BUFFER)
        small = t.receiver("h2", output=full / "image.img")
        big = t.receiver("h3")
        assert small.wait(60) == 1
        assert f"the image did not arrive: the disk is full writing {full / 'image.img'}.\n" in (
            small.stderr()
        )
        assert "Traceback" not in small.stderr()
        assert sender.wait(60) == 3
        assert big.wait(10) == 0
        assert_all_received(t, ["h3"], image.read_bytes())
        assert list(full.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(full)], check=False)


@pytest.mark.timeout(60)
def test_a_receiver_says_why_it_cannot_reach_the_sender(lab: LabFactory) -> None:
    """Refused, no route and timed out each name themselves (the brackets were empty)."""
    net = lab(2)
    sender, receiver = net.hosts()
    absent = sender.address + 200  # on the lab's subnet, but nobody answers its ARP
    cases = [
        (str(sender.address), "(refused: nothing listens there)"),
        ("198.19.255.9", "(no route: "),  # the lab hosts have no route off their own /24
        (str(absent), "(timed out)"),  # the SYN waits for an ARP answer that never comes
    ]
    for server, words in cases:
        result = net.exec(
            receiver.name,
            [*SG, "image", "receive", str(receiver.address), server, "--timeout", "1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1, result.stderr
        assert f"cannot reach the sender at {server}:18383 within 1 s {words}" in result.stderr
