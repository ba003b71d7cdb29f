"""What a long-running part of a daemon looks like to the daemon that runs it.

Theory of operation: a daemon (`servergroup host`) is a list of components
built from the configuration. It starts them in list order, stops them in
the reverse order, and asks each for its health when someone wants to know
(a signal, the future HTTP API). A component that a later one uses comes
first, so every component starts after and stops before what it uses.

- `start()` returns once the component serves; it may raise, and then the
  daemon stops the components already started and exits.
- `stop()` is idempotent and does not raise for a component that never
  started or already stopped.
- `health()` is cheap, synchronous and never raises: it reads state the
  component already keeps and says it in one sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol


class HealthState(enum.Enum):
    """How a component is doing, in the few states an operator can act on."""

    STARTING = "starting"  # built, not serving yet
    HEALTHY = "healthy"  # serving as configured
    DEGRADED = "degraded"  # serving, but something it needs is failing (it retries)
    STOPPED = "stopped"  # stopped, or never started


@dataclass(frozen=True, slots=True, kw_only=True)
class ComponentHealth:
    """One component's health: its state and one sentence saying why."""

    state: HealthState
    sentence: str


class Component(Protocol):
    """A part of a daemon with a start, a stop and a health view."""

    @property
    def name(self) -> str:
        """Short and unique within the daemon (`relay`, `groups`, `servers`)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def health(self) -> ComponentHealth: ...


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel every one of `tasks`, then wait for each to end (what a component's `stop` does)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


__all__ = ["Component", "ComponentHealth", "HealthState", "cancel_and_wait"]
