"""`servergroup scale`, `host list|show` and `server resize` as a user reads them."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from servergroup.cli.main import cli
from tests.fixtures.setup import SetupFactory
from tests.integration.scaling.agent import start_scale_agent
from tests.integration.scaling.test_host_scale import POOL, refused

pytestmark = pytest.mark.timeout(180)


def test_help_and_usage_errors_need_no_store() -> None:
    runner = CliRunner()
    shown = runner.invoke(cli, ["scale", "cpu", "--help"])
    assert shown.exit_code == 0
    for words in ("{down|up} SERVER", "--timeout", "--json", "min-vcpus"):
        assert words in shown.output
    for args in (
        ["scale", "cpu", "sideways", "s1"],
        ["scale", "cpu", "down"],
        ["scale", "cpu", "down", "s1", "--timeout", "61"],
        ["scale", "cpu", "down", "s1", "--timeout", "soon"],
        ["server", "resize", "s1"],
        ["server", "resize", "s1", "--vcpus", "0"],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
    for args in (
        ["server", "pause", "s1", "--timeout", "0"],
        ["server", "migrate", "s1", "--to", "h2", "--timeout", "-1"],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Invalid value for '--timeout'" in result.output
    # --window or --cooldown alone would be ignored: refused, not read as "show the policy".
    for args, named in (
        (["--window", "10"], "--window is"),
        (["--off", "--cooldown", "5"], "--cooldown is"),
        (["--window", "10", "--cooldown", "5"], "--window and --cooldown are"),
    ):
        result = runner.invoke(cli, ["scale", "policy", "s1", *args])
        assert result.exit_code == 2, (args, result.output)
        assert f"{named} only used when setting a policy" in result.output
    assert "list" in runner.invoke(cli, ["host", "--help"]).output


def test_what_the_commands_print(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(1, env=POOL)
    setup.run("group", "create", "g")
    setup.run("server", "create", "s1", "--group", "g", "--vcpus", "2")
    start_scale_agent(setup, "s1", 2)
    done = setup.run("scale", "cpu", "down", "s1")
    assert done.stdout.strip() == "server s1: vCPU 1 offline; online vCPUs 0"
    listed = setup.run("host", "list").stdout.splitlines()
    assert listed[0].split() == ["NAME", "DRIVERS", "CPU", "POOL", "USED", "FREE", "PID"]
    assert listed[1].split()[:5] == ["h1", "lab,qemu", "0-1", "0", "1"]
    shown = setup.run("host", "show", "h1").stdout
    assert "s1: vCPU 0 on CPU 0" in shown
    assert "free:         1" in shown
    server = setup.run("server", "show", "s1").stdout
    assert "online_cpus:    0\n" in server
    assert "min_vcpus:      1\n" in server
    assert "'h9' is not running" in refused(setup, "host", "show", "h9")

    assert "min_vcpus <= vcpus" in refused(
        setup, "server", "resize", "s1", "--vcpus", "2", "--min-vcpus", "3"
    )
    setup.run("server", "pause", "s1")
    assert "unpause it before resizing" in refused(setup, "server", "resize", "s1", "--vcpus", "3")
    setup.run("server", "unpause", "s1")
    resized = setup.run("server", "resize", "s1", "--vcpus", "3").stdout.strip()
    assert resized == "server s1 has 3 vCPU(s) (at least 1), 3 online, on h1"
    # A stopped server's status still counts the vCPUs it stopped with: not shown as online.
    setup.run("server", "stop", "s1")
    resized = setup.run("server", "resize", "s1", "--vcpus", "2").stdout.strip()
    assert resized == "server s1 has 2 vCPU(s) (at least 1), stopped on h1"
