"""`servergroup guest` options as a user meets them: help, and one sentence for each mistake."""

from __future__ import annotations

import subprocess
from pathlib import Path

from servergroup.guestcomm.guest import DEFAULT_CHANNEL_DEVICE
from tests.fixtures.netns import NetnsFactory
from tests.integration.guestcomm.conftest import CLI


def run(netns: NetnsFactory, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        netns.command(ns, [*CLI, "guest", *args]), capture_output=True, text=True, timeout=30
    )


def one_sentence(done: subprocess.CompletedProcess[str], status: int) -> str:
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("servergroup: ") or lines[0].startswith("Error: "), lines
    assert done.returncode == status, done.stderr
    return lines[0]


def test_help_names_every_option() -> None:
    done = subprocess.run([*CLI, "guest", "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    for option in ("--channel", "--channel-listen", "--address", "cgcs.messaging"):
        assert option in done.stdout


def test_no_channel_and_no_virtio_port(netns: NetnsFactory) -> None:
    assert not DEFAULT_CHANNEL_DEVICE.exists(), "this test needs a machine without the port"
    line = one_sentence(run(netns, netns()), 2)
    assert str(DEFAULT_CHANNEL_DEVICE) in line
    assert "--channel-listen" in line


def test_both_channels(netns: NetnsFactory, short_dir: Path) -> None:
    line = one_sentence(
        run(netns, netns(), "--channel", "/dev/null", "--channel-listen", str(short_dir / "s")), 2
    )
    assert "not both" in line


def test_a_missing_device(netns: NetnsFactory, short_dir: Path) -> None:
    line = one_sentence(run(netns, netns(), "--channel", str(short_dir / "nope")), 2)
    assert "does not exist" in line


def test_listen_path_that_is_not_a_socket(netns: NetnsFactory, short_dir: Path) -> None:
    regular = short_dir / "file"
    regular.write_text("keep me")
    line = one_sentence(run(netns, netns(), "--channel-listen", str(regular)), 2)
    assert "not a socket" in line
    assert regular.read_text() == "keep me"


def test_an_address_too_long(netns: NetnsFactory, short_dir: Path) -> None:
    line = one_sentence(
        run(netns, netns(), "--channel-listen", str(short_dir / "s"), "--address", "x" * 16), 2
    )
    assert "1 to 15 bytes" in line
