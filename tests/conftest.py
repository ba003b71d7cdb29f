"""Test-wide configuration: fixture plugins and hypothesis profiles."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = [
    "tests.fixtures.etcd",
    "tests.fixtures.coordinators",
    "tests.fixtures.daemons",
    "tests.fixtures.lab",
    "tests.fixtures.netns",
    "tests.fixtures.setup",
    "tests.fixtures.services",
]

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.register_profile("ci", parent=settings.get_profile("default"), max_examples=500)
settings.load_profile("ci" if os.environ.get("CI") else "default")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the tests that boot QEMU guests (and the demos, which do) on one
    pytest-xdist worker: TCG guests are CPU-bound, and two booting at once on a
    two-core machine only slow each other (`make test` runs `--dist loadgroup`)."""
    for item in items:
        nodeid = item.nodeid.lower()
        if nodeid.startswith("tests/integration/") and ("qemu" in nodeid or "demo" in nodeid):
            item.add_marker(pytest.mark.xdist_group("vm"))
