"""The environment the exec agent gives commands: its Python environment's bin first on PATH."""

from __future__ import annotations

from servergroup.servers.drivers.qemu.execagent import command_environment


def test_the_bin_directory_comes_first_once() -> None:
    base = {"PATH": "/usr/bin:/venv/bin:/bin", "HOME": "/root"}
    env = command_environment(base, None, bin_dir="/venv/bin")
    assert env == {"PATH": "/venv/bin:/usr/bin:/bin", "HOME": "/root"}
    assert base["PATH"] == "/usr/bin:/venv/bin:/bin"  # not changed in place


def test_the_hosts_env_goes_over_it_and_no_path_means_the_default() -> None:
    env = command_environment({}, {"PATH": "/only", "X": "1"}, bin_dir="/venv/bin")
    assert env == {"PATH": "/only", "X": "1"}
    assert command_environment({}, None, bin_dir="/b")["PATH"].startswith("/b:")
