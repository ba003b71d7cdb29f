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
from collections.abc import Callable, Coroutine, Iterable
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


class Background:
    """The background tasks of one daemon: kept while they run, a failure reported once.

    asyncio keeps only weak references to tasks, so a daemon that starts tasks
    and forgets them may lose them; `spawn` keeps each until it ends. A task
    that ends with an exception calls `on_failure(exc)` (the daemon logs it and
    stops); a cancelled one does not. `adopt` keeps a task started elsewhere,
    with its own `on_done` instead. `cancel` ends them all (`cancel_and_wait`).
    """

    def __init__(self, on_failure: Callable[[BaseException], None]) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_failure = on_failure

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Start `coro` as a task and keep it until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def adopt(self, task: asyncio.Task[Any], on_done: Callable[[asyncio.Task[Any]], None]) -> None:
        """Keep `task` until it ends, then call `on_done(task)` (not `on_failure`)."""
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            on_done(t)

        task.add_done_callback(done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._on_failure(exc)

    async def cancel(self) -> None:
        """Cancel every task kept, then wait for each to end."""
        await cancel_and_wait(list(self._tasks))


__all__ = ["Background", "Component", "ComponentHealth", "HealthState", "cancel_and_wait"]
