"""`servergroup status` on a real `up` with two hosts, a crashed host and a real OCF service."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.setup import Setup, SetupFactory
from tests.fixtures.wait import wait_until

pytestmark = pytest.mark.timeout(180)

DUMMY = Path(__file__).parents[3] / "examples" / "services" / "dummy.toml"

wait = functools.partial(wait_until, timeout=30.0, interval=0.2)

LOST = (
    "server d2 is lost: its host h2 is not live "
    "(group db is evacuated by hand: servergroup server evacuate d2)"
)


def status_json(setup: Setup) -> dict[str, Any]:
    shown: dict[str, Any] = setup.json("status")
    return shown


def test_status_shows_the_cluster_and_what_needs_attention(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(2)
    setup.run("group", "create", "db", "--policy", "anti-affinity", "--evacuate", "manual")
    setup.run("server", "create", "d1", "--group", "db", "--host", "h1")
    setup.run("server", "create", "d2", "--group", "db", "--host", "h2")
    setup.run("server", "pause", "d1")

    shown = status_json(setup)
    assert shown["store"].endswith("(the managed local etcd)")
    assert [(h["name"], h["alive"]) for h in shown["hosts"]] == [("h1", True), ("h2", True)]
    assert [(s["name"], s["vm_state"]) for s in shown["servers"]] == [
        ("d1", "paused"),
        ("d2", "active"),
    ]
    assert shown["attention"] == []
    text = setup.run("status").stdout
    assert "hosts: 2 live\n" in text
    assert "servers: 2 (1 active, 1 paused)\n" in text
    assert text.endswith("attention: none\n")

    setup.run("lab", "crash", "h2")
    wait(lambda: not status_json(setup)["servers"][1]["host_alive"], "d2's host seen gone")
    setup.run("service", "add", str(DUMMY))
    wait(
        lambda: [s["summary"]["state"] for s in status_json(setup)["services"]] == ["running"],
        "the dummy service running",
    )

    shown = status_json(setup)
    assert [(h["name"], h["alive"]) for h in shown["hosts"]] == [("h1", True), ("h2", False)]
    assert shown["attention"] == [LOST]
    text = setup.run("status").stdout
    lines = text.splitlines()
    assert "hosts: 1 live, 1 gone" in lines
    assert any(line.split()[:2] == ["h2", "gone"] for line in lines)
    assert "services: 1 (1 running)" in lines
    dummy = next(line for line in lines if line.split()[:1] == ["dummy"])
    assert dummy.split()[1:5] == ["running", "1/1", "running", "on"]
    assert "master h1 at " in dummy
    assert lines[-2:] == ["attention: 1", f"  {LOST}"]

    setup.run("service", "disable", "dummy")
    wait(
        lambda: [s["summary"]["state"] for s in status_json(setup)["services"]] == ["disabled"],
        "the dummy service disabled",
    )
    assert status_json(setup)["attention"] == [LOST]
