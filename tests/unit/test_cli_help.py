"""`servergroup --help` names only capabilities this installation has."""

from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner

from servergroup.cli.main import cli

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
    if importlib.util.find_spec(package) is None:
        assert not named, f"--help names {named}, but {package} does not exist"
    else:
        assert named, f"--help does not name {package}"
