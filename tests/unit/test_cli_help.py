"""`servergroup --help` names only capabilities this installation has.

A capability is there for a user once its command is: a package that holds
only the foundation of one (the service manager's, today) is not named.
"""

from __future__ import annotations

import importlib.util

import click
import pytest
from click.testing import CliRunner

from servergroup.cli.main import cli

#: The command of each capability, by the package that provides it.
COMMANDS = {
    "servergroup.scaling": "scale",
    "servergroup.services": "service",
    "servergroup.replication": "replication",
    "servergroup.api": "api",
    "servergroup.groups": "app",
    "servergroup.multicast": "image",
}
#: Words the top help would use for each capability, by the package that provides it.
CAPABILITIES = {
    "servergroup.scaling": ("scaling", "scale"),
    "servergroup.services": ("HA service", "service manager", "failover"),
    "servergroup.replication": ("replication", "checkpoint"),
    "servergroup.api": ("HTTP", "API", "dashboard"),
    "servergroup.groups": ("messaging",),
    "servergroup.multicast": ("image distribution",),
}


@pytest.mark.parametrize("package", sorted(CAPABILITIES))
def test_the_top_help_names_a_capability_only_if_it_exists(package: str) -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    named = [w for w in CAPABILITIES[package] if w.lower() in result.output.lower()]
    commands = cli.list_commands(click.Context(cli))
    if importlib.util.find_spec(package) is None or COMMANDS[package] not in commands:
        assert not named, f"--help names {named}, but {package} has no command"
    else:
        assert named, f"--help does not name {package}"
