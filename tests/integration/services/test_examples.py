"""The shipped examples (`examples/services/*.toml`) load and fit their real agents."""

from __future__ import annotations

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
