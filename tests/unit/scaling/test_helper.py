"""The helper conventions with real helper scripts, through the agent's `serve` on a lab tree.

Each case is a real executable run as the original's `app_scale_helper`:
missing, exit 0, a valid CPU, an offline CPU, 255, one that hangs past the
request's timeout (killed with its process group), one that prints garbage.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from servergroup.scaling.agent import ScaleAgent, ScaleAgentConfig
from servergroup.scaling.choice import HelperEnd
from servergroup.scaling.helper import run_helper
from servergroup.scaling.protocol import Direction, Result, ScaleReply, ScaleRequest
from servergroup.scaling.sysfs import LabCpuSysfs, make_lab_tree


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> LabCpuSysfs:
    return make_lab_tree(tmp_path / "root", 4)


def agent_with(helper: Path, tree: LabCpuSysfs) -> ScaleAgent:
    return ScaleAgent(ScaleAgentConfig(sysfs_root=tree.root, helper=helper), sysfs=tree)


def down(agent: ScaleAgent, timeout_ms: int = 5000) -> ScaleReply:
    return agent.serve(
        ScaleRequest(direction=Direction.DOWN, timeout_ms=timeout_ms), time.monotonic()
    )


def up(agent: ScaleAgent, cpu: int, timeout_ms: int = 5000) -> ScaleReply:
    return agent.serve(
        ScaleRequest(direction=Direction.UP, online_cpu=cpu, timeout_ms=timeout_ms),
        time.monotonic(),
    )


def test_missing_helper_takes_the_highest(tree: LabCpuSysfs, tmp_path: Path) -> None:
    reply = down(agent_with(tmp_path / "absent", tree))
    assert (reply.result, reply.cpu, reply.online_cpus) == (Result.SUCCESS, 3, (0, 1, 2))
    assert tree.online() == (0, 1, 2)


@pytest.mark.parametrize(
    ("body", "cpu"),
    [
        ("exit 0", 3),  # no preference
        ("exit 2", 2),  # a valid online CPU
        ("exit 255", 3),  # exit(-1): not CPU 255
        ("exit 200", 3),
        ("exit 7", 3),  # no such CPU
        ("kill -9 $$", 3),  # killed by a signal
        ("head -c 3000 /dev/urandom; echo '{[garbage'; exit 1", 1),  # prints garbage
    ],
)
def test_the_exit_status_names_the_cpu(
    body: str, cpu: int, tree: LabCpuSysfs, tmp_path: Path
) -> None:
    reply = down(agent_with(script(tmp_path / "helper", body), tree))
    assert reply.result is Result.SUCCESS, reply.err_msg
    assert reply.cpu == cpu
    assert cpu not in tree.online()
    assert reply.online_cpus == tree.online()


def test_an_offline_cpu_named_falls_back(tree: LabCpuSysfs, tmp_path: Path) -> None:
    tree.set_online(2, False)
    reply = down(agent_with(script(tmp_path / "helper", "exit 2"), tree))
    assert (reply.result, reply.cpu, reply.online_cpus) == (Result.SUCCESS, 3, (0, 1))


def test_the_helper_gets_cpu_del(tree: LabCpuSysfs, tmp_path: Path) -> None:
    args = tmp_path / "args"
    helper = script(tmp_path / "helper", f'echo "$@" > {args}; exit 1')
    down(agent_with(helper, tree))
    assert args.read_text() == "--cpu_del\n"


def test_a_non_executable_helper_falls_back(tree: LabCpuSysfs, tmp_path: Path) -> None:
    helper = script(tmp_path / "helper", "exit 1")
    helper.chmod(0o644)
    if os.geteuid() == 0:
        helper.chmod(0o600)  # root may run anything with an x bit: take them all away
    reply = down(agent_with(helper, tree))
    assert (reply.result, reply.cpu) == (Result.SUCCESS, 3)


def test_never_cpu_0(tree: LabCpuSysfs, tmp_path: Path) -> None:
    agent = agent_with(script(tmp_path / "helper", "exit 0"), tree)
    assert [down(agent).cpu for _ in range(3)] == [3, 2, 1]
    refused = down(agent)
    assert refused.result is Result.FAIL
    assert refused.err_msg is not None
    assert "only CPU 0 is online" in refused.err_msg
    assert tree.online() == (0,)


def test_a_helper_that_hangs_is_killed_with_its_children(tree: LabCpuSysfs, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    helper = script(tmp_path / "helper", f"sleep 60 & echo $! > {pids}; echo $$ >> {pids}; wait")
    reply = down(agent_with(helper, tree), timeout_ms=300)
    assert reply.result is Result.FAIL
    assert reply.err_msg is not None
    assert "300 ms" in reply.err_msg
    assert "killed" in reply.err_msg
    assert tree.online() == (0, 1, 2, 3)  # nothing changed
    for pid in map(int, pids.read_text().split()):
        assert not _alive(pid), f"process {pid} of the helper's group outlived it"


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return status not in ("Z", "X")


def test_up_runs_the_helper_with_the_online_list(tree: LabCpuSysfs, tmp_path: Path) -> None:
    args = tmp_path / "args"
    helper = script(tmp_path / "helper", f'echo "$@" > {args}; exit 1')
    agent = agent_with(helper, tree)
    tree.set_online(2, False)
    tree.set_online(3, False)
    reply = up(agent, 2)
    # A failing helper is logged only: the CPU stays online.
    assert (reply.result, reply.cpu, reply.online_cpus) == (Result.SUCCESS, 2, (0, 1, 2))
    assert args.read_text() == "--cpu_add 2 [0,1,2]\n"


def test_up_of_an_online_cpu_changes_nothing(tree: LabCpuSysfs, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    helper = script(tmp_path / "helper", f"echo x >> {calls}")
    reply = up(agent_with(helper, tree), 1)
    assert (reply.result, reply.cpu, reply.online_cpus) == (Result.SUCCESS, 1, (0, 1, 2, 3))
    assert not calls.exists()


def test_up_of_a_cpu_the_guest_lacks_fails(tree: LabCpuSysfs, tmp_path: Path) -> None:
    reply = up(agent_with(tmp_path / "absent", tree), 9)
    assert reply.result is Result.FAIL
    assert reply.err_msg is not None
    assert "no CPU 9" in reply.err_msg


def test_up_whose_helper_hangs_is_undone(tree: LabCpuSysfs, tmp_path: Path) -> None:
    tree.set_online(3, False)
    reply = up(agent_with(script(tmp_path / "helper", "sleep 60"), tree), 3, timeout_ms=200)
    assert reply.result is Result.FAIL
    assert reply.err_msg is not None
    assert "taken offline again" in reply.err_msg
    assert tree.online() == (0, 1, 2)


def test_run_helper_outcomes(tmp_path: Path) -> None:
    far = time.monotonic() + 10
    assert run_helper(tmp_path / "absent", [], far).end is HelperEnd.MISSING
    printed = run_helper(script(tmp_path / "a", "echo hello; exit 4"), [], far)
    assert (printed.end, printed.status, printed.output) == (HelperEnd.EXITED, 4, "hello\n")
    signalled = run_helper(script(tmp_path / "b", "kill -TERM $$"), [], far)
    assert (signalled.end, signalled.status) == (HelperEnd.SIGNALLED, 15)
    late = run_helper(script(tmp_path / "c", "sleep 5"), [], time.monotonic() + 0.1)
    assert late.end is HelperEnd.TIMED_OUT
