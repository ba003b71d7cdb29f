"""The shipped examples (`examples/services/*.toml`) load and fit their real agents."""

from __future__ import annotations

from pathlib import Path

import pytest

from servergroup.services.model import parse_definitions, resolve
from servergroup.services.ocf import OcfAgent

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
