"""The scale agent's options as a user meets them, in its three entry points."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "servergroup"]


@pytest.mark.parametrize(
    ("argv", "options"),
    [
        ([*CLI, "scale-agent"], ["--sysfs-root", "--lab-cpus", "--helper", "--metadata-url",
                                 "--sync-timeout", "--ready-file", "cgcs.scale"]),
        ([*CLI, "guest"], ["--scale-agent / --no-scale-agent", "--sysfs-root", "--lab-cpus",
                           "--scale-helper", "--metadata-url", "--scale-sync-timeout",
                           "--scale-ready-file"]),
        ([sys.executable, "-m", "servergroup.guestcomm"],
         ["--no-scale-agent", "--sysfs-root", "--lab-cpus", "--scale-helper", "--metadata-url",
          "--scale-sync-timeout", "--scale-ready-file"]),
    ],
)  # fmt: skip
def test_help_names_the_scale_options(argv: list[str], options: list[str]) -> None:
    done = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for option in options:
        assert option in text


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--lab-cpus", "2", "--sysfs-root", "{machine}"], "is not a lab CPU tree"),
        (["--metadata-url", "ftp://x/"], "must be http:// or https://"),
    ],
)
@pytest.mark.parametrize("entry", ["scale-agent", "module"])
def test_mistakes_are_one_sentence(args: list[str], says: str, entry: str) -> None:
    args = [a.replace("{machine}", "/") for a in args]
    if entry == "module":
        argv = [sys.executable, "-m", "servergroup.guestcomm", "--channel-listen",
                str(Path("/nonexistent/never/ch.sock")), *args]  # fmt: skip
    else:
        argv = [*CLI, "scale-agent", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert says in lines[0]
