"""Counters and rate-limited log lines for the agents' relayed and dropped messages.

A peer that floods an agent with bad input must not flood its log: each
reason gets `burst` lines per `interval`; what is held back is summed up in
one line ("... 9 995 more in the last 10 s") when the interval ends. Every
drop is counted whether it is logged or not.

`Counters` is shared by the agents of both sides; the flow-control counters
(`nacked`, `apps_paused`, `apps_yielded`, `delivery_queued`) move only in the guest agent.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

#: Log lines per reason per interval before lines are only counted.
DEFAULT_BURST = 5
DEFAULT_INTERVAL = 10.0


@dataclass(slots=True)
class Counters:
    """What an agent has done since it started (mutable; read it, do not keep it)."""

    #: Messages received from local applications (datagrams).
    from_apps: int = 0
    #: Messages received from the channel (envelopes decoded).
    from_channel: int = 0
    #: Messages written toward the channel.
    to_channel: int = 0
    #: Messages delivered to local applications or in-process routes.
    to_apps: int = 0
    #: Messages answered with a nack by the agent itself (no host to send them to).
    nacked: int = 0
    #: Times the agent stopped reading its applications: the channel was above its high-water mark.
    apps_paused: int = 0
    #: Times the agent stopped reading its applications: one of them was behind on reading.
    apps_yielded: int = 0
    #: Deliveries to applications that had to wait in the agent's queue (their queue was full).
    delivery_queued: int = 0
    #: Dropped messages by reason.
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def describe(self) -> str:
        """One line for the log: the counters as compact JSON."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"), sort_keys=True)


class Cancellable(Protocol):
    """A scheduled call that can be cancelled (asyncio's `TimerHandle` is one)."""

    def cancel(self) -> None: ...


#: Runs a callback after a delay in seconds: the event loop's `call_later`.
Scheduler = Callable[[float, Callable[[], None]], Cancellable]


@dataclass(slots=True)
class _Window:
    started_at: float
    logged: int = 0
    held: int = 0


class DropLog:
    """Counts drops in `counters` and logs them, at most `burst` lines per reason per interval."""

    def __init__(
        self,
        logger: logging.Logger,
        counters: Counters,
        *,
        burst: int = DEFAULT_BURST,
        interval: float = DEFAULT_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
        schedule: Scheduler | None = None,
    ) -> None:
        """`schedule` runs the summary timer; by default asyncio's running loop does."""
        self._log = logger
        self._counters = counters
        self._burst = burst
        self._interval = interval
        self._monotonic = monotonic
        self._windows: dict[str, _Window] = {}
        self._schedule = schedule
        self._flush_handle: Cancellable | None = None

    def drop(
        self, reason: str, detail: str, *, level: int = logging.WARNING, count: int = 1
    ) -> None:
        """Count `count` messages dropped for `reason`, and log `detail` unless held back."""
        self._counters.drop(reason, count)
        self.note(reason, detail, level=level)

    def note(self, reason: str, detail: str, *, level: int = logging.WARNING) -> None:
        """Log `detail` under `reason`'s rate limit, without counting a drop."""
        now = self._monotonic()
        window = self._windows.get(reason)
        if window is None or now - window.started_at >= self._interval:
            if window is not None:
                self._summarize(reason, window, now)
            window = self._windows[reason] = _Window(started_at=now)
        if window.logged < self._burst:
            window.logged += 1
            self._log.log(level, "%s: %s", reason, detail, extra={"reason": reason})
            return
        window.held += 1
        self._arm()

    def flush(self) -> None:
        """Log the summary line of every window that has ended (the timer calls this)."""
        self._flush_handle = None
        now = self._monotonic()
        for reason, window in list(self._windows.items()):
            if now - window.started_at >= self._interval:
                self._summarize(reason, window, now)
                del self._windows[reason]
        if any(w.held for w in self._windows.values()):
            self._arm()

    def close(self) -> None:
        """Log what is still held back and stop the timer."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        now = self._monotonic()
        for reason, window in self._windows.items():
            self._summarize(reason, window, now)
        self._windows.clear()

    def _summarize(self, reason: str, window: _Window, now: float) -> None:
        if window.held:
            self._log.warning(
                "%s: %d more not logged in the last %.0f s",
                reason,
                window.held,
                now - window.started_at,
                extra={"reason": reason, "held": window.held},
            )
            window.held = 0

    def _arm(self) -> None:
        if self._flush_handle is not None:
            return
        if self._schedule is not None:
            self._flush_handle = self._schedule(self._interval, self.flush)
            return
        # Imported here: the guest agent passes its own loop's scheduler and
        # does not load asyncio at all.
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # used outside a loop (a test): close() reports instead
            return
        self._flush_handle = loop.call_later(self._interval, self.flush)


class Reason(StrEnum):
    """Why an agent dropped a message (besides the channel decoder's `DropReason`s)."""

    TOO_BIG = "datagram too big"
    NOT_ABSTRACT = "sender not abstract"
    BAD_MESSAGE = "bad message"
    NO_DEST_ADDR = "no dest_addr"
    NO_DEST_INSTANCE = "no dest_instance"
    HOST_NOT_CONNECTED = "host not connected"
    #: Written toward a host that went away before it had read them.
    LOST_AT_DISCONNECT = "unsent at disconnect"
    GUEST_NOT_CONNECTED = "guest not connected"
    #: Over the hard bound of the channel's write buffer (the guest agent's safety net:
    #: its high-water mark stops reading applications long before).
    CHANNEL_QUEUE_FULL = "channel queue full"
    #: An answer to an application's own request (an ack or a nack of its broadcasts)
    #: past every bound; later answers to it are dropped too, so that its pending
    #: broadcasts end unconfirmed rather than wrongly acknowledged.
    ANSWER_LOST = "answer lost"
    APP_NOT_BOUND = "app not bound"
    APP_NOT_READING = "app not reading"
    SEND_FAILED = "send failed"
