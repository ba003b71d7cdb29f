"""Packaging: the wheel gives a working `servergroup`; the systemd units ship in it.

The wheel test builds the wheel from a copy of the tree (`pip wheel`, as a
packager would), installs it without dependencies into a fresh virtual
environment that borrows the project environment's third-party packages
(a plain path in a `.pth` file, so the project's own editable install is
not seen), and runs the installed console script. It fetches the build
backend through pip, so it is marked slow; the units' tests are quick.
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from servergroup.common.errors import UsageError
from servergroup.daemons.units import UNITS, Role, install_units, unit_names, unit_text

ROOT = Path(__file__).resolve().parents[2]


def test_every_role_unit_is_shipped() -> None:
    shipped = set(unit_names())
    assert {name for names in UNITS.values() for name in names} == shipped
    assert "guest-agent.service" in shipped  # the original's unit name


def test_installed_units_run_this_servergroup(tmp_path: Path) -> None:
    written = install_units(Role.HOST, tmp_path, executable="/opt/sg/bin/servergroup")
    assert [u.path.name for u in written] == list(UNITS[Role.HOST])
    assert all(u.changed for u in written)
    host = (tmp_path / "servergroup-host.service").read_text()
    assert "ExecStart=/opt/sg/bin/servergroup --log-text host\n" in host
    assert "ExecStopPost=/opt/sg/bin/servergroup --log-text host cleanup\n" in host
    again = install_units(Role.HOST, tmp_path, executable="/opt/sg/bin/servergroup")
    assert not any(u.changed for u in again)
    with pytest.raises(UsageError, match=r"no unit 'x\.service' is shipped"):
        unit_text("x.service")


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    for role in Role:
        install_units(role, tmp_path, executable="/bin/true")
    done = subprocess.run(
        ["systemd-analyze", "verify", *(str(p) for p in sorted(tmp_path.glob("*.service")))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Units named in Wants=/After= that this machine lacks are reported, not errors of ours.
    problems = [
        line
        for line in done.stderr.splitlines()
        if line.strip() and "not found" not in line and "Failed to" not in line
    ]
    assert problems == [], done.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_gives_a_working_servergroup(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(ROOT / "pyproject.toml", tree)
    shutil.copy(ROOT / "README.md", tree)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(tree)],
        check=True,
        timeout=500,
    )
    (wheel,) = dist.glob("servergroup-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
        check=True,
        timeout=120,
    )
    target_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(target_site) / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    sg = env_dir / "bin" / "servergroup"
    shown = subprocess.run([str(sg), "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "one control plane for a group of servers" in shown.stdout
    where = subprocess.run(
        [str(python), "-c", "import servergroup; print(servergroup.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(target_site), where  # the wheel's copy, not the source tree
    unit = subprocess.run(
        [str(sg), "host", "install-units", "--print", "servergroup-host.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unit.returncode == 0, unit.stderr
    assert "ExecStart=servergroup --log-text host" in unit.stdout
