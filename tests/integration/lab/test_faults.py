"""Faults of whole lab hosts on real namespaces and real processes: crash, freeze, cut."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from servergroup.common.errors import UsageError
from servergroup.lab import Lab, Satellite
from servergroup.lab.faults import (
    _wait_frozen,
    find_freezer,
    forget,
    host_pids,
    is_frozen,
    set_frozen,
)
from tests.fixtures.lab import LabFactory
from tests.fixtures.wait import wait_until
from tests.integration.lab.test_lab import ping

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]

#: Prints a number every 20 ms: alive and running as long as numbers come.
TICKER = (
    "import itertools, time\n"
    "for i in itertools.count():\n"
    "    print(i, flush=True)\n"
    "    time.sleep(0.02)\n"
)
#: Forks a child that leaves the session and its parent (as QEMU's -daemonize does), then waits.
DAEMONIZING = (
    "import os, sys, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        print(os.getpid(), flush=True)\n"
    "        time.sleep(300)\n"
    "    os._exit(0)\n"
    "os.wait()\n"
    "time.sleep(300)\n"
)


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; killed (by PID, each one) and reaped at the end.

    Ask for it before `lab`: the lab is taken down first, thawing what a
    failed test left frozen (a frozen process dies only once thawed).
    """
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def start(
    procs: list[subprocess.Popen[str]], lab: Lab | None, host: str, code: str
) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", code]
    proc = (
        lab.popen(host, argv, stdout=subprocess.PIPE, text=True)
        if lab is not None
        else subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    )
    procs.append(proc)
    return proc


def next_line(proc: subprocess.Popen[str], timeout: float) -> str | None:
    """The next line `proc` prints within `timeout`, None if none comes."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else None


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pid: int, timeout: float = 5.0) -> None:
    wait_until(lambda: not alive(pid), f"the end of process {pid}", timeout)


def freezer_state(host_netns: str) -> str:
    cgroup = find_freezer().host_cgroup(host_netns)
    state = cgroup / "freezer.state"
    if state.exists():
        return state.read_text().strip()
    return "FROZEN" if (cgroup / "cgroup.freeze").read_text().strip() == "1" else "THAWED"


# --- crash ----------------------------------------------------------------------------------


def test_crash_kills_exactly_the_hosts_processes(
    started: list[subprocess.Popen[str]], lab: LabFactory
) -> None:
    sg = lab(2)
    ticker = start(started, sg, "h1", TICKER)
    daemonizing = start(started, sg, "h1", DAEMONIZING)
    daemon_line = next_line(daemonizing, 10)
    assert daemon_line is not None
    daemon = int(daemon_line)
    neighbour = start(started, sg, "h2", TICKER)
    outside = start(started, None, "", TICKER)
    for proc in (ticker, neighbour, outside):
        assert next_line(proc, 10) is not None
    on_h1 = set(host_pids(sg.host("h1").netns))
    assert {ticker.pid, daemonizing.pid, daemon} <= on_h1

    killed = sg.crash("h1")

    assert killed == len(on_h1)
    assert ticker.wait(5) == -9
    assert daemonizing.wait(5) == -9
    wait_gone(daemon)  # detached from its parent and session, found by its namespace
    assert host_pids(sg.host("h1").netns) == []
    # Another host's process and one outside the lab run on.
    for proc in (neighbour, outside):
        assert proc.poll() is None
        assert next_line(proc, 5) is not None
    # Crashing a host where nothing runs is no error; the host can run things again.
    assert sg.crash("h1") == 0
    assert ping(sg, "h2", sg.host("h1"), count=1) == 1


# --- freeze and thaw ------------------------------------------------------------------------


def test_freeze_stops_every_process_and_thaw_resumes_them(
    started: list[subprocess.Popen[str]], lab: LabFactory
) -> None:
    sg = lab(2)
    ticker = start(started, sg, "h1", TICKER)
    neighbour = start(started, sg, "h2", TICKER)
    assert next_line(ticker, 10) is not None
    assert next_line(neighbour, 10) is not None
    assert not sg.host("h1").frozen

    assert sg.freeze("h1") == 1
    assert freezer_state(sg.host("h1").netns) == "FROZEN"
    assert sg.host("h1").frozen
    assert not sg.host("h2").frozen
    # Drain what it printed before it froze; then nothing more comes.
    while next_line(ticker, 0.3) is not None:
        pass
    assert next_line(ticker, 0.5) is None
    assert next_line(neighbour, 5) is not None

    # A process started in a frozen host runs until the host is frozen again.
    late = start(started, sg, "h1", TICKER)
    assert next_line(late, 10) is not None
    assert sg.freeze("h1") == 2
    while next_line(late, 0.3) is not None:
        pass
    assert next_line(late, 0.5) is None

    assert sg.thaw("h1")
    assert not sg.host("h1").frozen
    assert next_line(ticker, 5) is not None
    assert next_line(late, 5) is not None
    assert not sg.thaw("h1")  # thawing a running host changes nothing


def test_a_frozen_host_can_be_crashed_and_taken_down(
    started: list[subprocess.Popen[str]], lab: LabFactory, lab_state_dir: Path
) -> None:
    sg = lab(2)
    first = start(started, sg, "h1", TICKER)
    assert next_line(first, 10) is not None
    sg.freeze("h1")
    assert sg.crash("h1") == 1
    assert first.wait(5) == -9
    assert not sg.host("h1").frozen

    second = start(started, sg, "h2", TICKER)
    assert next_line(second, 10) is not None
    sg.freeze("h2")
    netns = sg.host("h2").netns
    assert sg.down()
    assert second.wait(5) in (-15, -9)
    assert not find_freezer().host_cgroup(netns).exists()
    assert not (lab_state_dir / "lab" / "faults" / f"{netns}.json").exists()


# --- cut and heal ---------------------------------------------------------------------------


def test_cut_takes_a_host_off_the_network_and_heal_brings_it_back(lab: LabFactory) -> None:
    sg = lab(3)
    assert not sg.cut("h2").link_up
    assert not sg.host("h2").link_up
    assert ping(sg, "h1", sg.host("h2"), count=2, wait=0.5) == 0
    assert ping(sg, "h2", str(sg.hosts()[0].network.network_address + 1), count=2, wait=0.5) == 0
    assert ping(sg, "h1", sg.host("h3")) == 3
    sg.cut("h2")  # cutting again is no error
    assert sg.heal("h2").link_up
    # Back within seconds: the port and h1's neighbour entry for h2 (failed during the
    # cut) come back on their own time, so one round of pings may be too early.
    deadline = time.monotonic() + 10.0
    while (received := ping(sg, "h1", sg.host("h2"), wait=1.0)) < 3:
        assert time.monotonic() < deadline, f"h2 unreachable 10 s after heal ({received} of 3)"


def test_up_heals_and_thaws(started: list[subprocess.Popen[str]], lab: LabFactory) -> None:
    sg = lab(2)
    ticker = start(started, sg, "h1", TICKER)
    assert next_line(ticker, 10) is not None
    sg.freeze("h1")
    sg.cut("h2")
    while next_line(ticker, 0.3) is not None:  # what it printed before it froze
        pass
    sg.up(2)
    assert [(h.frozen, h.link_up) for h in sg.hosts()] == [(False, True), (False, True)]
    assert next_line(ticker, 5) is not None


def test_faults_of_an_unknown_host_or_lab_are_refused(lab: LabFactory) -> None:
    sg = lab(1)
    for fault in (sg.crash, sg.freeze, sg.thaw, sg.cut, sg.heal):
        with pytest.raises(UsageError, match=r"has no host h7"):
            fault("h7")
    gone = Lab("nolab", state_dir=Path("/nonexistent"))
    with pytest.raises(UsageError, match=r"lab nolab is not up"):
        gone.crash("h1")


def test_a_satellite_thawed_by_someone_else_is_not_waited_for(
    started: list[subprocess.Popen[str]],
) -> None:
    """A lab server's cgroup is named by the server: when its frozen host's server is
    rebuilt on another host, that host's driver thaws it (to end the stale processes)
    while `lab freeze` may still wait for it. The wait ends; it does not time out."""
    with satellite_cgroup(started) as cgroup:
        ticker = start(started, None, "", TICKER)
        (cgroup / "cgroup.procs").write_text(str(ticker.pid))
        set_frozen(cgroup, True)
        set_frozen(cgroup, False)  # the other host's driver, before the lab looks
        began = time.monotonic()
        _wait_frozen([cgroup], True, timeout=5.0)
        assert time.monotonic() - began < 2.0
        assert next_line(ticker, 5) is not None  # left running, as the other host wants
        # Still frozen as asked: waited for, as before.
        set_frozen(cgroup, True)
        _wait_frozen([cgroup], True, timeout=10.0)
        assert is_frozen(cgroup) is True


@contextlib.contextmanager
def satellite_cgroup(started: list[subprocess.Popen[str]]) -> Iterator[Path]:
    """A freezer cgroup of its own, made where the lab makes a host's; at the end it is
    thawed, the `started` processes are ended, and it is removed as the lab's are."""
    name = f"sgtest-{os.getpid()}"
    cgroup = find_freezer().host_cgroup(name)
    cgroup.mkdir(parents=True)
    try:
        yield cgroup
    finally:
        with contextlib.suppress(FileNotFoundError):
            set_frozen(cgroup, False)
        for proc in started:
            proc.kill()
            proc.wait(10)
        forget([name])


@pytest.mark.parametrize("fault", ["thaw", "crash"])
def test_a_satellite_rebuilt_on_another_host_since_the_freeze_is_left_to_that_host(
    started: list[subprocess.Popen[str]], lab: LabFactory, lab_state_dir: Path, fault: str
) -> None:
    """h1 is frozen with its lab server b; b is rebuilt on h3, in the same cgroup (named by
    the server), and paused there. `lab thaw h1` must not unpause it, nor `lab crash h1`
    kill its new process: the cgroup holds a process it did not hold when h1 froze it."""
    sg = lab(1)
    owner = ["h1"]
    with satellite_cgroup(started) as cgroup:

        def finder(host: object, pids: object) -> list[Satellite]:
            return [Satellite(name="lab server b", cgroup=cgroup)] if owner == ["h1"] else []

        faulty = Lab(sg.name, state_dir=lab_state_dir, satellites=finder)
        stale = start(started, None, "", TICKER)
        (cgroup / "cgroup.procs").write_text(str(stale.pid))
        assert next_line(stale, 5) is not None
        faulty.freeze("h1")
        assert is_frozen(cgroup) is True
        # h3's driver rebuilds b: thaws its cgroup, ends the stale process, starts anew.
        owner[0] = "h3"
        set_frozen(cgroup, False)
        stale.kill()
        stale.wait(10)
        rebuilt = start(started, None, "", TICKER)
        (cgroup / "cgroup.procs").write_text(str(rebuilt.pid))
        assert next_line(rebuilt, 5) is not None
        if fault == "thaw":
            set_frozen(cgroup, True)  # b paused on h3
            _wait_frozen([cgroup], True, timeout=10.0)
            assert faulty.thaw("h1")
            assert is_frozen(cgroup) is True
            set_frozen(cgroup, False)
        else:
            faulty.crash("h1")
        time.sleep(0.5)  # a SIGKILL would have ended it by now
        assert rebuilt.poll() is None
        assert next_line(rebuilt, 5)  # running, as h3 wants it (not EOF)
