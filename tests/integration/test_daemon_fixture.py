"""The `daemon` fixture itself: lifecycle, logs on failure, and BUG lines failing a test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from servergroup.common.process import process_state
from tests.fixtures.daemons import (
    Daemon,
    DaemonFactory,
    bug_lines,
    check_no_bugs,
    python_daemon,
)

REPO = Path(__file__).resolve().parents[2]

# A daemon that says it is ready, then exits 0 on SIGTERM.
WELL_BEHAVED = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready on port 1234", flush=True)
while True:
    time.sleep(0.05)
"""


def test_daemon_starts_logs_freezes_and_stops(daemon: DaemonFactory) -> None:
    d = daemon(python_daemon(WELL_BEHAVED), name="echo", ready=r"ready on port (\d+)")
    assert d.running
    assert d.pid > 0
    assert d.name == "echo"
    assert d.wait_for_log(r"port (\d+)").group(1) == "1234"
    assert "ready on port 1234" in d.log_text()
    d.freeze()
    assert process_state(d.pid) == "T"
    d.thaw()
    assert d.stop() == 0
    assert d.returncode == 0
    assert not d.running


def test_daemon_names_are_unique_and_env_is_passed(daemon: DaemonFactory) -> None:
    code = "import os; print('value=' + os.environ['SG_TEST_VALUE'], flush=True)"
    a = daemon(python_daemon(code), name="same", env={"SG_TEST_VALUE": "a"}, ready="value=a")
    b = daemon(python_daemon(code), name="same", env={"SG_TEST_VALUE": "b"}, ready="value=b")
    assert (a.name, b.name) == ("same", "same-2")
    assert a.log_path != b.log_path


def test_ready_predicate_and_kill(daemon: DaemonFactory, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    code = f"import pathlib, time; pathlib.Path({str(flag)!r}).touch(); time.sleep(60)"
    d = daemon(python_daemon(code), ready=lambda _: flag.exists())
    d.kill()
    assert d.returncode == -signal.SIGKILL


def test_ready_fails_when_the_daemon_exits_first(daemon: DaemonFactory) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"exited with 3 before logging"):
        daemon(python_daemon("print('bye'); raise SystemExit(3)"), ready="never", timeout=5.0)


def test_bug_lines_match_the_word_only() -> None:
    log = "\n".join(
        [
            '{"level": "ERROR", "message": "BUG: unexpected error in relay loop"}',
            "DEBUG all fine",
            "a debugger attached",
            "BUGS are words too",
            "found a BUG.",
        ]
    )
    assert bug_lines(log) == [
        '{"level": "ERROR", "message": "BUG: unexpected error in relay loop"}',
        "found a BUG.",
    ]


def test_check_no_bugs_fails_on_a_bug_line(tmp_path: Path) -> None:
    log = tmp_path / "d.log"
    log.write_text("starting\nERROR BUG: unexpected error in loop\n")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    d = Daemon("buggy", ["x"], log, proc)
    with pytest.raises(pytest.fail.Exception, match=r"marked BUG:\n  buggy: ERROR BUG"):
        check_no_bugs([d])
    log.write_text("starting\nDEBUG fine\n")
    check_no_bugs([d])  # no BUG word: passes


PLUGIN_TESTS = """
import sys
from tests.fixtures.daemons import python_daemon

def test_clean(daemon):
    daemon(python_daemon("print('clean-daemon-line', flush=True)"), name="clean",
           ready="clean-daemon-line")

def test_bug(daemon):
    d = daemon(python_daemon("import sys; print('x BUG: boom in loop', file=sys.stderr)"),
               name="buggy", ready="BUG")
    d.wait()

def test_fails(daemon):
    daemon(python_daemon("print('failing-daemon-line', flush=True)"), name="witness",
           ready="failing-daemon-line")
    assert 1 == 2
"""


def test_plugin_reports_logs_and_bug_lines_through_pytest(tmp_path: Path) -> None:
    """Run pytest on a small suite using the plugin: BUG fails a test, logs show on failure."""
    (tmp_path / "test_plugin_use.py").write_text(textwrap.dedent(PLUGIN_TESTS))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.fixtures.daemons",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            "-rA",
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_plugin_use.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "PASSED test_plugin_use.py::test_clean" in out
    # The BUG line turns a passing test into an error at teardown.
    assert "ERROR test_plugin_use.py::test_bug" in out
    assert "1 log line(s) marked BUG" in out
    assert "FAILED test_plugin_use.py::test_fails" in out
    # Failing tests carry their daemons' logs; the passing one does not.
    assert "log of daemon witness" in out
    assert "failing-daemon-line" in out
    assert "log of daemon buggy" in out
    assert "log of daemon clean" not in out
