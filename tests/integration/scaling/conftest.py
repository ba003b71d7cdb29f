"""Scaling tests: every scale agent a test started is stopped after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.scaling.agent import STARTED


@pytest.fixture(autouse=True)
def scale_agents() -> Iterator[None]:
    yield
    while STARTED:
        STARTED.pop().stop()
