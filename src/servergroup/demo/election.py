"""Demo part: three contenders, one owner, kill -9, takeover with a larger fencing token."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from servergroup.config import Config
from servergroup.coordination.connect import connect
from servergroup.coordination.contender import (
    OWNER_PREFIX,
    WORK_PREFIX,
    ContenderProcess,
    first_event,
)
from servergroup.coordination.errors import FencingError
from servergroup.coordination.types import Guard

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class ElectionResult:
    """What the election demo measured."""

    first_owner: str
    first_token: int
    second_owner: str
    second_token: int
    takeover_seconds: float
    stale_write_refused: bool


async def run_election_demo(
    config: Config, endpoints: Sequence[Any], say: Say, *, key: str = "demo-service"
) -> ElectionResult:
    """Run the ownership part of the demo against `endpoints`; narrate with `say`."""
    say(
        f"Starting 3 contenders for '{key}', each with a {config.coordination.lease_ttl} s "
        "lease renewed every "
        f"{config.coordination.renew_interval:g} s."
    )
    contenders: list[ContenderProcess] = []
    try:
        for i in (1, 2, 3):
            contenders.append(
                await ContenderProcess.spawn(
                    key, f"contender-{i}", endpoints=endpoints, config=config.coordination
                )
            )
        owner, acquired = await first_event(contenders, "acquired", timeout=15.0)
        first_token = int(acquired["token"])
        say(
            f"{owner.name} (pid {owner.proc.pid}) owns '{key}' with fencing token "
            f"{first_token}; the others watch the key."
        )
        await asyncio.sleep(1.0)
        say(f"Killing {owner.name} with SIGKILL: it cannot resign, its lease must expire.")
        # Both sides read CLOCK_MONOTONIC, so the contender's `mono` stamp compares.
        killed_mono = time.monotonic()
        await owner.kill()
        rest = [c for c in contenders if c is not owner]
        new_owner, acquired2 = await first_event(rest, "acquired", timeout=15.0)
        second_token = int(acquired2["token"])
        took = max(float(acquired2["mono"]) - killed_mono, 0.0)
        say(
            f"{new_owner.name} took over with token {second_token} "
            f"(> {first_token}) {took:.2f} s after the kill."
        )
        say(f"A write still carrying the dead owner's token {first_token} is refused by the store:")
        async with connect(config, endpoints=endpoints) as coord:
            try:
                await coord.put(
                    WORK_PREFIX + key,
                    b"stale write",
                    guard=Guard(key=OWNER_PREFIX + key, create_revision=first_token),
                )
                refused = False
            except FencingError as exc:
                refused = True
                say(f"  refused: {exc}")
        return ElectionResult(
            first_owner=owner.name,
            first_token=first_token,
            second_owner=new_owner.name,
            second_token=second_token,
            takeover_seconds=took,
            stale_write_refused=refused,
        )
    finally:
        for c in contenders:
            await c.stop()
