"""The shipped examples (`examples/services/*.toml`) load and fit their real agents."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from servergroup.config import Config, CoordinationConfig
from servergroup.services.model import (
    DefinitionError,
    check_lease_fits,
    parse_definitions,
    resolve,
)
from servergroup.services.ocf import KILL_GRACE, OcfAgent

pytestmark = pytest.mark.timeout(30)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "services"


@pytest.mark.parametrize("name", ["dummy.toml", "promotable.toml"])
async def test_an_example_validates_against_its_agent(name: str) -> None:
    definitions = parse_definitions((EXAMPLES / name).read_text())
    assert definitions.services
    for service in definitions.services:
        agent = OcfAgent(service.agent, instance=f"{service.name}:0")
        resolved = resolve(service, await agent.metadata())
        assert resolved.start_timeout is not None
        assert resolved.monitors


def test_the_examples_say_what_the_readme_promises() -> None:
    dummy = parse_definitions((EXAMPLES / "dummy.toml").read_text())
    lab = dummy.domain("lab")
    assert lab is not None
    assert [m.node for m in lab.members] == ["h1", "h2", "h3"]
    assert lab.ordered
    promotable = parse_definitions((EXAMPLES / "promotable.toml").read_text())
    csnap = promotable.service("csnap")
    assert csnap is not None
    assert csnap.promotable
    assert csnap.instances == 3


@pytest.mark.parametrize("name", ["dummy.toml", "promotable.toml"])
async def test_an_example_fits_the_default_services_lease_not_the_hosts(name: str) -> None:
    """What the comments of the examples say: their stops fit the node roles' default lease
    (1 s renewed every 0.1 s), and not a 1 s lease renewed as the host's is (every 0.2 s)."""
    for service in parse_definitions((EXAMPLES / name).read_text()).services:
        agent = OcfAgent(service.agent, instance=f"{service.name}:0")
        resolved = resolve(service, await agent.metadata())
        check_lease_fits(resolved, Config().services_coordination, kill_grace=KILL_GRACE)
        with pytest.raises(DefinitionError, match="stop_timeout"):
            check_lease_fits(resolved, CoordinationConfig(lease_ttl=1), kill_grace=KILL_GRACE)


@pytest.mark.parametrize("name", ["dummy.toml", "promotable.toml"])
async def test_an_examples_state_file_is_its_own_labs(name: str, tmp_path: Path) -> None:
    """Two labs on one machine (each its own state directory, both with an h1) never share
    an example's state file, and the real agent keeps its state where it is rendered."""
    for service in parse_definitions((EXAMPLES / name).read_text()).services:
        paths = {
            lab: service.render_parameters(
                node="h1", node_ip="198.18.0.11", instance=0, state_dir=str(tmp_path / lab)
            ).parameters["state"]
            for lab in ("a", "b")
        }
        assert paths["a"] != paths["b"]
        assert paths["a"].startswith(f"{tmp_path / 'a'}/")
        # The node role's directory there holds its ledger: it exists before any agent runs.
        Path(paths["a"]).parent.mkdir(parents=True)
        agent = OcfAgent(
            service.agent, instance=f"{service.name}:0", parameters={"state": paths["a"]}
        )
        started = await agent.run("start", timeout=10)
        assert started.ok, started.describe()
        assert await asyncio.to_thread(Path(paths["a"]).exists)
        stopped = await agent.run("stop", timeout=10)
        assert stopped.ok, stopped.describe()
