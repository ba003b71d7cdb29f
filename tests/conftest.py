"""Test-wide configuration: fixture plugins and hypothesis profiles."""

from __future__ import annotations

import os

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
