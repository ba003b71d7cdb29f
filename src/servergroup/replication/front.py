"""The client front: the listening socket a protected service is served on.

Theory of operation. The framework, not the service, owns the socket
(issue 15): a client connects over TCP and sends one request per line; the
front reads lines and hands each to the service's `handle`, and passes the
reply to `on_reply(conn, line)`. The driver decides where the reply goes:
on a protected primary into the output buffer (released when its epoch is
committed, `send`), on an activated backup or an unprotected primary
straight to the client.

Dispatch is gated: `pause()` stops it (the primary's suspend), `resume()`
restarts it. `handle` is synchronous and runs on the event loop, so no
handler is ever half-way through when the gate closes: the gate is checked
and `handle` called with no await in between, and a suspend is a plain
callback on the same loop. Requests that wait at a closed gate stay in the
socket buffers (backpressure on the clients).

Each client is numbered (`conn`); replies to a client that has gone are
dropped (`on_gone(conn)` tells the driver). A request line longer than
`MAX_LINE` is not handed to the service: when the service has a
`too_long(limit)` method, its answer is the reply to that line (in order,
through the gate like any reply) and the client is served on; otherwise
the client is closed.

A client that ends its side (a half-close: `printf '...' | nc -N`, or a
script that shuts down writing after its last request) still gets the
replies to every request it sent: the front stops reading it, and closes
it once the replies it owes have all been passed to `send` (counted in
bytes, so a driver may hold them for their epoch and release them in any
cut). Until then it counts among `clients`.

A client whose requests are already buffered would be served without the
loop ever running anything else (reading a buffered line does not yield):
pipelining clients whose replies come at once (`--no-net-buffer`, or
unprotected) starved the heartbeats and the session's lease renewal until
the primary fenced itself. So each client yields to the loop every
`YIELD_EVERY` requests, between a reply and the next gate check.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Callable

from servergroup.common.errors import UsageError

log = logging.getLogger(__name__)

#: The longest request line accepted.
MAX_LINE = 64 * 1024
#: Requests a client is served in a row before the loop runs other work.
YIELD_EVERY = 16


def parse_address(text: str, *, what: str = "address") -> tuple[str, int]:
    """`HOST:PORT` (or `[V6]:PORT`) as (host, port); a bad one is a one-sentence `UsageError`."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"{what} {text!r} is not HOST:PORT.")
    return host, int(port_text)


async def _skip_line(reader: asyncio.StreamReader) -> None:
    """Read past the end of a line longer than the reader's limit (or to the stream's end)."""
    while True:
        try:
            await reader.readuntil(b"\n")
            return
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)  # what is buffered of it, newline excluded
        except asyncio.IncompleteReadError:
            return


class ClientFront:
    """Accepts clients and dispatches their request lines to `handle` (see the module doc)."""

    def __init__(
        self,
        handle: Callable[[bytes], bytes],
        on_reply: Callable[[int, bytes], None],
        *,
        on_gone: Callable[[int], object] | None = None,
        too_long: Callable[[int], bytes] | None = None,
    ) -> None:
        self._handle = handle
        self._too_long = too_long
        self._on_reply = on_reply
        self._on_gone = on_gone
        self._gate = asyncio.Event()
        self._gate.set()
        self._writers: dict[int, asyncio.StreamWriter] = {}
        #: Bytes of replies handed to `on_reply` but not yet to `send`, per client.
        self._owed: dict[int, int] = {}
        #: Clients that ended their side: closed once they are owed nothing.
        self._finishing: set[int] = set()
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Requests handled so far.
        self.handled = 0

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on `host:port`; returns the address bound. Address in use: `UsageError`."""
        try:
            self._server = await asyncio.start_server(
                self._client, host, port, reuse_address=True, limit=MAX_LINE
            )
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise UsageError(f"cannot serve clients on {host}:{port}: {why.lower()}.") from None
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    def pause(self) -> None:
        """Stop dispatching requests (a handler never runs across this call)."""
        self._gate.clear()

    def resume(self) -> None:
        self._gate.set()

    @property
    def clients(self) -> int:
        return len(self._writers)

    def send(self, conn: int, data: bytes) -> None:
        """Write `data` to client `conn` now (dropped if it has gone)."""
        writer = self._writers.get(conn)
        if writer is not None and not writer.is_closing():
            writer.write(data)
        owed = self._owed.get(conn)
        if owed is not None:
            self._owed[conn] = owed = owed - len(data)
            if owed <= 0 and conn in self._finishing:
                self.close_client(conn)  # its last reply is out (close flushes it)

    def close_client(self, conn: int) -> None:
        self._owed.pop(conn, None)
        self._finishing.discard(conn)
        writer = self._writers.pop(conn, None)
        if writer is not None:
            writer.close()
            if self._on_gone is not None:
                self._on_gone(conn)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = next(self._ids)
        self._writers[conn] = writer
        self._owed[conn] = 0
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        served = 0
        ended = False
        try:
            while True:
                oversized = False
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    line = exc.partial  # the last line, without its newline
                except asyncio.LimitOverrunError:
                    oversized = True
                    line = b"\n"  # answered, also when the stream ends inside it
                except (ConnectionError, OSError):
                    break
                if oversized:
                    if self._too_long is None:
                        log.info("client %d sent a line over %d bytes: closing it", conn, MAX_LINE)
                        break
                    log.info("client %d sent a line over %d bytes: refused", conn, MAX_LINE)
                    try:
                        await _skip_line(reader)
                    except (ConnectionError, OSError):
                        break
                if not line:
                    ended = True
                    break
                while not self._gate.is_set():
                    await self._gate.wait()
                if conn not in self._writers:
                    break
                # No await from the gate check to the reply: a suspend cannot split them.
                try:
                    if oversized:
                        assert self._too_long is not None
                        reply = self._too_long(MAX_LINE)
                    else:
                        reply = self._handle(line.rstrip(b"\r\n"))
                except Exception:
                    log.exception("the service failed on a request from client %d", conn)
                    break
                self.handled += 1
                data = reply.rstrip(b"\n") + b"\n"
                if conn in self._owed:
                    self._owed[conn] += len(data)
                self._on_reply(conn, data)
                served += 1
                if served % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # let heartbeats and the lease renewal run
        finally:
            if ended and self._owed.get(conn, 0) > 0:
                self._finishing.add(conn)  # closed by `send` once its replies are out
            else:
                self.close_client(conn)
            if task is not None:
                self._tasks.discard(task)

    async def close(self) -> None:
        """Stop listening and close every client (their unsent output is lost)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._writers):
            self.close_client(conn)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
