"""The demo's scaling part on lab servers (what `servergroup demo` runs without QEMU).

test_demo.py runs the whole demo with real VMs; this runs the scaling part
alone on a `servergroup up` of its own with the lab driver: the server's own
view of its CPUs (its scale agent's tree, read from inside it) before, after
the scale down and after the scale up, and nothing of the demo left after.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from servergroup.config import Endpoint, load_config
from servergroup.demo.scaling import GROUP, SERVER, run_scaling_demo
from servergroup.servers.model import DriverKind
from tests.fixtures.setup import SetupFactory

pytestmark = pytest.mark.timeout(180)


def test_the_scaling_part_on_a_lab_server(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(1)
    config = load_config(env=setup.env)
    endpoint = Endpoint.parse(
        json.loads((setup.state_dir / "up" / "state.json").read_text())["etcd"]
    )
    said: list[str] = []
    result = asyncio.run(run_scaling_demo(config, endpoint, said.append, driver=DriverKind.LAB))
    assert (result.before, result.after_down, result.after_up) == ((0, 1), (0,), (0, 1))
    text = "\n".join(said)
    assert f"{SERVER} sees CPUs 0-1 online" in text
    assert f"{SERVER} sees CPUs 0 online" in text
    assert f"servergroup scale cpu down {SERVER}: host h1 took vCPU 1 offline" in text
    # The demo's server and group are gone again.
    assert setup.json("server", "list") == []
    assert GROUP not in {g["name"] for g in setup.json("group", "list")}
