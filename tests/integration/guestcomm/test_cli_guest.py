"""The guest agent's options as a user meets them: help, and one sentence for each mistake.

Both entry points take the same options: `servergroup guest` and `python -m
servergroup.guestcomm` (what a VM's /init starts, without the CLI framework).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from servergroup.guestcomm.guest import DEFAULT_CHANNEL_DEVICE
from tests.fixtures.netns import NetnsFactory
from tests.integration.guestcomm.conftest import CLI

ENTRY_POINTS = {
    "cli": [*CLI, "guest"],
    "module": [sys.executable, "-m", "servergroup.guestcomm", "-v"],
}


@pytest.fixture(params=sorted(ENTRY_POINTS))
def entry(request: pytest.FixtureRequest) -> list[str]:
    return ENTRY_POINTS[request.param]


Runner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run(netns: NetnsFactory, entry: list[str]) -> Runner:
    def run(_netns: NetnsFactory, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            netns.command(ns, [*entry, *args]), capture_output=True, text=True, timeout=30
        )

    return run


def one_sentence(done: subprocess.CompletedProcess[str], status: int) -> str:
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(("servergroup: ", "servergroup guest: ", "Error: ")), lines
    assert done.returncode == status, done.stderr
    return lines[0]


def test_help_names_every_option(entry: list[str]) -> None:
    done = subprocess.run([*entry, "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    for option in ("--channel", "--channel-listen", "--address", "--ready-file", "cgcs.messaging"):
        assert option in done.stdout


def test_ready_file_is_written_once_serving_and_removed_on_sigterm(
    netns: NetnsFactory, entry: list[str], short_dir: Path
) -> None:
    ready = short_dir / "run" / "guest.ready"
    agent = subprocess.Popen(
        netns.command(
            netns(),
            [*entry, "--channel-listen", str(short_dir / "ch.sock"), "--ready-file", str(ready)],
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert agent.poll() is None, agent.communicate()[1]
            assert time.monotonic() < deadline, "no ready file"
            time.sleep(0.02)
        assert (short_dir / "ch.sock").exists()  # serving before it says so
        assert int(ready.read_text()) > 0
        os.kill(agent.pid, signal.SIGTERM)
        _, errors = agent.communicate(timeout=30)
        assert agent.returncode == 0, errors
        assert "Traceback" not in errors
        assert "guest agent stopped" in errors
        assert not ready.exists()
        assert not (short_dir / "ch.sock").exists()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


def test_no_channel_and_no_virtio_port(run: Runner, netns: NetnsFactory) -> None:
    assert not DEFAULT_CHANNEL_DEVICE.exists(), "this test needs a machine without the port"
    line = one_sentence(run(netns, netns()), 2)
    assert str(DEFAULT_CHANNEL_DEVICE) in line
    assert "--channel-listen" in line


def test_both_channels(run: Runner, netns: NetnsFactory, short_dir: Path) -> None:
    line = one_sentence(
        run(netns, netns(), "--channel", "/dev/null", "--channel-listen", str(short_dir / "s")), 2
    )
    assert "not both" in line


def test_a_missing_device(run: Runner, netns: NetnsFactory, short_dir: Path) -> None:
    line = one_sentence(run(netns, netns(), "--channel", str(short_dir / "nope")), 2)
    assert "does not exist" in line


def test_listen_path_that_is_not_a_socket(
    run: Runner, netns: NetnsFactory, short_dir: Path
) -> None:
    regular = short_dir / "file"
    regular.write_text("keep me")
    line = one_sentence(run(netns, netns(), "--channel-listen", str(regular)), 2)
    assert "not a socket" in line
    assert regular.read_text() == "keep me"


def test_an_address_too_long(run: Runner, netns: NetnsFactory, short_dir: Path) -> None:
    line = one_sentence(
        run(netns, netns(), "--channel-listen", str(short_dir / "s"), "--address", "x" * 16), 2
    )
    assert "1 to 15 bytes" in line
