"""One short QMP conversation with a QEMU process, over QEMU's own client (`qemu.qmp`).

Theory of operation. A QEMU monitor socket serves one client at a time, so
every conversation is short: connect, run a few commands, disconnect. The
driver serializes its own conversations per VM (`Monitor` holds a lock);
another process (the CLI) simply waits its turn, bounded by `timeout`.
Every failure becomes a `DriverError` with one sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, QMPClient, QMPError
from qemu.qmp.message import Message
from qemu.qmp.protocol import ConnectError
from qemu.qmp.qmp_client import GreetingError, NegotiationError

from servergroup.servers.drivers.base import DriverError

#: How long one conversation (connect and commands) may take.
QMP_TIMEOUT = 10.0
#: The pause before a failed QMP handshake is tried again (see `Monitor._connect`).
HANDSHAKE_RETRY_INTERVAL = 0.1
#: How long one attempt at the handshake may take before it is tried again.
ATTEMPT_TIMEOUT = 3.0

# qemu.qmp logs every connection at INFO and every failure with a traceback.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


class Monitor:
    """The QMP socket of one QEMU process."""

    def __init__(self, socket_path: Path, *, label: str, timeout: float = QMP_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.label = label
        self.timeout = timeout
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[QMPClient]:
        """A connected client for a few commands; disconnected afterwards."""
        async with self._lock:
            client = await self._connect()
            try:
                yield client
            finally:
                with contextlib.suppress(Exception):
                    await client.disconnect()

    async def _connect(self) -> QMPClient:
        """A client past the greeting and `qmp_capabilities`, within `timeout`.

        A handshake that fails or hangs (not a refused connection) is tried
        again until the timeout: QEMU can answer the capabilities negotiation
        with something else than its reply while an incoming migration
        completes, which the client library takes for a failed negotiation.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            client = QMPClient(self.label)
            try:
                # One attempt may hang after a failed negotiation (the client library
                # waits on the peer): bound it, and try again while time is left.
                async with asyncio.timeout_at(min(deadline, loop.time() + ATTEMPT_TIMEOUT)):
                    await client.connect(str(self.socket_path))
                return client
            except (OSError, EOFError, QMPError, TimeoutError) as exc:
                with contextlib.suppress(Exception):
                    await client.disconnect()
                # Connected, then the greeting or negotiation failed: worth another try;
                # no socket, or nobody listening: QEMU is not there, say so at once.
                cause = exc.exc if isinstance(exc, ConnectError) else exc
                handshake = isinstance(
                    cause, (GreetingError, NegotiationError, EOFError, TimeoutError)
                )
                if not handshake or loop.time() + HANDSHAKE_RETRY_INTERVAL >= deadline:
                    raise DriverError(
                        f"cannot talk to the QEMU monitor of {self.label} at "
                        f"{self.socket_path}: {_why(exc)}"
                    ) from None
            await asyncio.sleep(HANDSHAKE_RETRY_INTERVAL)

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        """Run one command; its `return` value."""
        async with self.session() as client:
            return await run(client, command, arguments, label=self.label, timeout=self.timeout)

    async def wait_for_event(
        self,
        name: str,
        match: Callable[[Mapping[str, Any]], bool],
        *,
        give_up: Callable[[], str | None],
        check_every: float = 0.2,
    ) -> None:
        """Wait for event `name` whose `data` matches, holding the monitor meanwhile.

        Every `check_every` seconds `give_up()` is asked; a sentence from it
        ends the wait as a `DriverError`. Events sent before the call are not
        seen: call it before what causes the event can happen.
        """

        def wanted(message: Message) -> bool:
            data = message.get("data")
            return isinstance(data, Mapping) and match(data)

        listener = EventListener(name, event_filter=wanted)
        async with self.session() as client:
            with client.listen(listener):
                while True:
                    try:
                        async with asyncio.timeout(check_every):
                            await listener.get()
                        return
                    except TimeoutError:
                        pass
                    why = give_up()
                    if why is not None:
                        raise DriverError(why)


async def run(
    client: QMPClient,
    command: str,
    arguments: Mapping[str, object] | None = None,
    *,
    label: str,
    timeout: float = QMP_TIMEOUT,
) -> Any:
    """Run one command on a connected client; a refusal or a hang is a `DriverError`."""
    try:
        async with asyncio.timeout(timeout):
            return await client.execute(command, dict(arguments) if arguments else None)
    except (OSError, QMPError, TimeoutError) as exc:
        raise DriverError(f"QEMU of {label} refused {command}: {_why(exc)}") from None


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = str(exc).strip()
    return text or type(exc).__name__


__all__ = ["QMP_TIMEOUT", "Monitor", "run"]
