"""`servergroup image` refuses bad input with one sentence and exit status 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SG = [sys.executable, "-m", "servergroup", "image"]


def run(args: list[str], stdin: bytes = b"x") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SG, *args], input=stdin.decode(), capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["send", "300.1.2.3", "2"], "LOCAL_IP '300.1.2.3' is not an IPv4 address"),
        (["send", "127.0.0.1", "0"], "CLIENTS 0 is out of range"),
        (["send", "127.0.0.1", "2", "--group", "10.0.0.1"], "is not a multicast address"),
        (["send", "127.0.0.1", "2", "--mtu", "20000"], "MTU 20000 is out of range"),
        (["send", "127.0.0.1", "2", "--rate", "fast"], "is not a rate"),
        (["send", "127.0.0.1", "2", "70000"], "port 70000 is out of range"),
        (["send", "127.0.0.1", "2", "--key-file", "/nonexistent/key"], "cannot read the key file"),
        (["send", "198.19.255.7", "1", "--wait", "1"], "not an address of this host"),
        (["receive", "127.0.0.1", "nowhere"], "SERVER_IP 'nowhere' is not an IPv4 address"),
        (
            ["receive", "127.0.0.1", "127.0.0.1", "--output", "/nonexistent/dir/out"],
            "cannot write to /nonexistent/dir",
        ),
    ],
)
def test_bad_input_is_one_sentence_and_status_2(args: list[str], words: str) -> None:
    result = run(args)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_empty_key_file_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("\n")
    result = run(["send", "127.0.0.1", "1", "--key-file", str(key)])
    assert result.returncode == 2
    assert "is empty" in result.stderr


def test_a_receiver_without_a_sender_gives_up_after_its_timeout() -> None:
    result = run(["receive", "127.0.0.1", "127.0.0.1", "1", "--timeout", "1"])
    assert result.returncode != 0
    assert "cannot reach the sender at 127.0.0.1:1 within 1 s (refused" in result.stderr
    assert "Traceback" not in result.stderr
