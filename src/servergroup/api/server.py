"""The HTTP API as a component of `servergroup host` (`common.component`).

Theory of operation. `ApiServer.start()` reads the token file (an unreadable
or empty one refuses the start, one sentence), binds the configured address
itself, so a bad address is a `ConfigError` at once, and serves the FastAPI
application of `api.app` with uvicorn inside the daemon's own event loop:
uvicorn's `Server.serve` runs as a task on the bound socket, with its signal
capture turned off (the daemon owns SIGINT and SIGTERM) and neither its
access log nor its `server` header. Connections that arrive before the task
reaches `accept` wait in the socket's backlog.

A port another process holds (two host daemons on one machine, a test's
daemon beside a real one) does not stop the host: the host's capabilities
matter more than its API. The component reports DEGRADED with the reason,
logs it once, and tries to bind again every `retry_interval` seconds.

`stop()` ends the dashboard's event streams (`api.events.Feed.close`), asks
uvicorn to exit (it closes the listener, lets requests in flight finish for
up to `STOP_TIMEOUT` seconds), then cancels what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import uvicorn

from servergroup.api.app import ApiContext, build_app
from servergroup.api.auth import Access, read_token
from servergroup.api.events import Feed
from servergroup.common.component import ComponentHealth, HealthState, cancel_and_wait
from servergroup.common.errors import ConfigError
from servergroup.config import ApiConfig
from servergroup.coordination import Coordinator

log = logging.getLogger(__name__)

RETRY_INTERVAL = 5.0
STOP_TIMEOUT = 3.0


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: the host daemon has its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _url(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ApiServer:
    """The host daemon's HTTP API and `/metrics` (docs/design/api.md)."""

    name = "api"

    def __init__(
        self,
        settings: ApiConfig,
        *,
        coordinator: Coordinator,
        host: str,
        health: Callable[[], Mapping[str, ComponentHealth]],
        operation_timeout: float,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        self.settings = settings
        self.retry_interval = retry_interval
        self._coordinator = coordinator
        self._host = host
        self._health = health
        self._operation_timeout = operation_timeout
        self._server: _Server | None = None
        self._feed: Feed | None = None
        self._task: asyncio.Task[None] | None = None
        self._retry: asyncio.Task[None] | None = None
        self._waiting = ""  # why it does not serve yet (a port in use)
        self._stopped = False
        #: Where it listens once serving (the port the kernel chose, for port 0).
        self.address: tuple[str, int] | None = None

    @property
    def url(self) -> str | None:
        return _url(self.address) if self.address is not None else None

    async def start(self) -> None:
        settings = self.settings
        token = read_token(Path(settings.token_file)) if settings.token_file else None
        access = Access(token=token, reads_need_token=not settings.loopback)
        context = ApiContext(
            coordinator=self._coordinator,
            host=self._host,
            access=access,
            health=self._health,
            operation_timeout=self._operation_timeout,
        )
        app = build_app(context)
        self._feed = app.state.feed
        config = uvicorn.Config(
            app,
            log_config=None,  # the daemon's logging, configured at its entry point
            # uvicorn's own info lines ("Started server process") name no host: the
            # component logs where it serves; uvicorn's warnings still show.
            log_level=logging.WARNING,
            access_log=False,
            server_header=False,
            lifespan="off",
            timeout_graceful_shutdown=int(STOP_TIMEOUT),
        )
        self._server = _Server(config)
        sock = self._bind()
        if sock is None:
            self._retry = asyncio.create_task(self._bind_later(), name="api-bind")
            return
        self._serve(sock)

    def _bind(self) -> socket.socket | None:
        """The listening socket; None (and why, in `_waiting`) while the port is taken."""
        settings = self.settings
        family = socket.AF_INET6 if ":" in settings.bind else socket.AF_INET
        try:
            sock = socket.create_server((settings.bind, settings.port), family=family)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                if not self._waiting:
                    log.warning(
                        "host %s: API port %s:%d is in use by another process; retrying every %g s",
                        self._host,
                        settings.bind,
                        settings.port,
                        self.retry_interval,
                    )
                self._waiting = f"port {settings.port} on {settings.bind} is in use; retrying"
                return None
            raise ConfigError(
                f"the API cannot listen on {settings.bind} port {settings.port}: {exc.strerror}."
            ) from None
        sock.setblocking(False)
        return sock

    async def _bind_later(self) -> None:
        while True:
            await asyncio.sleep(self.retry_interval)
            try:
                sock = self._bind()
            except ConfigError as exc:
                self._waiting = str(exc)
                continue
            if sock is not None:
                self._serve(sock)
                return

    def _serve(self, sock: socket.socket) -> None:
        assert self._server is not None
        self._waiting = ""
        self.address = sock.getsockname()[:2]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="api")
        self._task.add_done_callback(self._ended)
        log.info(
            "host %s: API at %s (%s)",
            self._host,
            self.url,
            self._access_sentence(),
        )

    def _access_sentence(self) -> str:
        if not self.settings.token_file:
            return "reads open on loopback; no token, so actions are refused"
        if self.settings.loopback:
            return "reads open on loopback; actions need the bearer token"
        return "reads and actions need the bearer token"

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopped:
            return
        exc = task.exception()
        if exc is not None:
            log.error("BUG: the API server of host %s ended: %r", self._host, exc)
        elif not self._stopped:
            log.error("BUG: the API server of host %s ended by itself", self._host)

    async def stop(self) -> None:
        self._stopped = True
        if self._retry is not None:
            await cancel_and_wait([self._retry])
            self._retry = None
        if self._feed is not None:
            await self._feed.close()  # ends the dashboards' event streams
        task, server = self._task, self._server
        self._task = None
        if task is None or server is None:
            return
        server.should_exit = True
        try:
            async with asyncio.timeout(STOP_TIMEOUT + 1.0):
                await asyncio.shield(task)
        except Exception:  # it failed, or did not end in time
            server.force_exit = True
            await cancel_and_wait([task])

    def health(self) -> ComponentHealth:
        if self._stopped:
            return ComponentHealth(state=HealthState.STOPPED, sentence="not serving")
        if self._waiting:
            return ComponentHealth(state=HealthState.DEGRADED, sentence=self._waiting)
        if self._task is None:
            return ComponentHealth(state=HealthState.STARTING, sentence="not serving yet")
        if self._task.done():
            return ComponentHealth(state=HealthState.DEGRADED, sentence="its server ended (BUG)")
        return ComponentHealth(
            state=HealthState.HEALTHY, sentence=f"serving at {self.url}; {self._access_sentence()}"
        )


__all__ = ["RETRY_INTERVAL", "ApiServer"]
