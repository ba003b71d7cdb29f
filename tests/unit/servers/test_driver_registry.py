"""The driver registry: one entry per kind, whose settings match the driver it builds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from servergroup.servers.drivers.base import ServerDriver
from servergroup.servers.drivers.registry import (
    DRIVERS,
    DriverContext,
    build_driver,
    build_drivers,
    driver_info,
)
from servergroup.servers.model import DriverKind


def test_every_kind_has_one_entry_named_by_it() -> None:
    assert list(DRIVERS) == list(DriverKind)
    for kind, info in DRIVERS.items():
        assert info.kind is kind
        assert driver_info(kind) is info


@pytest.mark.parametrize("kind", list(DriverKind), ids=lambda k: k.value)
def test_the_built_driver_is_of_its_kind_and_moves_as_registered(
    kind: DriverKind, tmp_path: Path
) -> None:
    driver: ServerDriver = build_driver(
        kind, DriverContext(state_dir=tmp_path, host="h1", channel_dir=tmp_path / "channels")
    )
    assert driver.kind is kind
    assert driver.move_style is driver_info(kind).move_style


def test_build_drivers_builds_each_kind_once_in_order(tmp_path: Path) -> None:
    context = DriverContext(state_dir=tmp_path, host="h1")
    kinds = [DriverKind.QEMU, DriverKind.LAB, DriverKind.QEMU]
    assert [d.kind for d in build_drivers(kinds, context)] == [DriverKind.QEMU, DriverKind.LAB]


def test_reading_settings_loads_no_driver() -> None:
    # `servers.operations` and the CLI read settings; only building loads a driver.
    probe = (
        "import sys; from servergroup.servers.drivers.registry import DriverKind, driver_info; "
        "driver_info(DriverKind.QEMU); "
        "print(sorted(m for m in sys.modules if m.startswith('servergroup.servers.drivers.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == [
        "['servergroup.servers.drivers.base',",
        "'servergroup.servers.drivers.hypervisor',",
        "'servergroup.servers.drivers.registry']",
    ]
