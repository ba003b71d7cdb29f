"""One contract for every `Agent`: the real ClusterLabs agents and `MemoryAgent` answer alike.

Dummy stands for a plain service, Stateful for a promotable one; the memory
agent must give the same exit codes for the same sequence of actions, so
that tests of the node role on it say something about the real agents.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from servergroup.services.memory_agent import MemoryAgent
from servergroup.services.model import AgentRef
from servergroup.services.ocf import Agent, OcfAgent
from servergroup.services.ocf_codes import OcfStatus

pytestmark = pytest.mark.timeout(60)

S = OcfStatus

AgentFactory = Callable[[Path], Agent]


def dummy(tmp_path: Path) -> Agent:
    return OcfAgent(
        AgentRef(provider="heartbeat", type="Dummy"),
        instance="c:0",
        parameters={"state": str(tmp_path / "dummy.state")},
    )


def stateful(tmp_path: Path) -> Agent:
    return OcfAgent(
        AgentRef(provider="pacemaker", type="Stateful"),
        instance="c:0",
        parameters={"state": str(tmp_path / "stateful.state")},
    )


def memory(tmp_path: Path) -> Agent:
    return MemoryAgent()


def memory_promotable(tmp_path: Path) -> Agent:
    return MemoryAgent(promotable=True)


PLAIN = [
    ("monitor", S.NOT_RUNNING),
    ("stop", S.SUCCESS),  # stop on a stopped resource succeeds
    ("start", S.SUCCESS),
    ("start", S.SUCCESS),  # so does start on a started one
    ("monitor", S.SUCCESS),
    ("promote", S.ERR_UNIMPLEMENTED),
    ("monitor", S.SUCCESS),
    ("stop", S.SUCCESS),
    ("monitor", S.NOT_RUNNING),
]

PROMOTABLE = [
    ("monitor", S.NOT_RUNNING),
    ("promote", S.NOT_RUNNING),  # nothing to promote while stopped
    ("start", S.SUCCESS),
    ("monitor", S.SUCCESS),
    ("promote", S.SUCCESS),
    ("monitor", S.RUNNING_MASTER),
    ("demote", S.SUCCESS),
    ("monitor", S.SUCCESS),
    ("promote", S.SUCCESS),
    ("demote", S.SUCCESS),
    ("stop", S.SUCCESS),
    ("monitor", S.NOT_RUNNING),
]


@pytest.mark.parametrize(
    ("make", "steps"),
    [
        pytest.param(dummy, PLAIN, id="Dummy"),
        pytest.param(memory, PLAIN, id="memory"),
        pytest.param(stateful, PROMOTABLE, id="Stateful"),
        pytest.param(memory_promotable, PROMOTABLE, id="memory-promotable"),
    ],
)
async def test_the_same_actions_give_the_same_codes(
    make: AgentFactory, steps: list[tuple[str, OcfStatus]], tmp_path: Path
) -> None:
    agent = make(tmp_path)
    for number, (action, expected) in enumerate(steps):
        result = await agent.run(action, timeout=10, fencing_token=number)
        assert result.status is expected, f"step {number}: {result.describe()}"


@pytest.mark.parametrize("make", [dummy, stateful, memory, memory_promotable])
async def test_meta_data_says_what_the_agent_can_do(make: AgentFactory, tmp_path: Path) -> None:
    info = await make(tmp_path).metadata()
    promotable = make in (stateful, memory_promotable)
    assert info.has("start")
    assert info.has("stop")
    assert info.has("monitor")
    assert info.has("promote") is promotable
    assert info.timeout("start") == 20
    assert info.parameter("state") is not None


async def test_the_memory_agent_scripts_failures_and_keeps_a_journal() -> None:
    agent = MemoryAgent()
    agent.fail_next("start", int(S.ERR_INSTALLED))
    agent.fail_next("start", None)
    first = await agent.run("start", timeout=5, fencing_token=3)
    assert first.status is S.ERR_INSTALLED
    second = await agent.run("start", timeout=5, fencing_token=3)
    assert second.timed_out
    assert (await agent.run("monitor", timeout=5)).status is S.NOT_RUNNING  # nothing started
    assert (await agent.run("start", timeout=5, fencing_token=4)).ok
    assert [(e.action, e.code, e.fencing_token) for e in agent.resource.journal] == [
        ("start", 5, 3),
        ("start", None, 3),
        ("monitor", 7, None),
        ("start", 0, 4),
    ]
