"""The API and its dashboard served from a thread of their own (for `servergroup demo`).

Theory of operation. The host daemons of `servergroup up` run inside lab
hosts, each in its own network namespace, so each one's API listens on that
lab host's own loopback and a browser in the root namespace reaches none of
them. `Dashboard` serves the very component they run (`api.server.ApiServer`,
the same application and `/events` feed) in the calling process instead: a
thread with its own event loop and its own etcd client, on the same etcd and
prefix, so the page shows the cluster of the demo while the demo's steps run
on the main thread's loops.

It listens where `[api]` says (`127.0.0.1:8470` by default) when that port
is free, else on a port the kernel chooses (a host daemon of this machine
may hold 8470); `start()` returns the URL to print. Reads need nothing on
loopback; actions need the token of `[api] token_file`, and without one the
page is read-only (the API refuses actions, 401). `stop()` ends the streams,
the server and the etcd client, and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import threading
from collections.abc import Sequence

from servergroup.api.server import ApiServer
from servergroup.common.errors import ConfigError
from servergroup.config import Config, Endpoint
from servergroup.coordination import connect

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def _port_free(bind: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    try:
        with socket.create_server((bind, port), family=family):
            return True
    except OSError:
        return False


class Dashboard:
    """The API of no host daemon, for a process that shows a cluster (see the module docstring)."""

    def __init__(self, config: Config, endpoints: Sequence[Endpoint], *, name: str = "demo"):
        self._config = config
        self._endpoints = tuple(endpoints)
        self._name = name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.url: str | None = None

    def start(self) -> str:
        """Serve; return the dashboard's URL. ConfigError when it cannot listen."""
        self._thread = threading.Thread(target=self._run, name="dashboard", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise ConfigError(f"the dashboard did not start within {START_TIMEOUT:g} s.")
        if self._failure is not None:
            raise ConfigError(f"the dashboard cannot run: {self._failure}") from None
        assert self.url is not None
        return self.url + "/"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # told to the caller of start(), or ended with the process
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        settings = self._config.api
        if not _port_free(settings.bind, settings.port):
            settings = dataclasses.replace(settings, port=0)
        coordinator = connect(self._config, endpoints=self._endpoints)
        try:
            server = ApiServer(
                settings,
                coordinator=coordinator,
                host=self._name,
                health=lambda: {},
                operation_timeout=self._config.coordination.operation_timeout,
            )
            await server.start()
            try:
                if server.address is None:  # taken between the check and the bind
                    raise ConfigError(f"port {settings.port} on {settings.bind} is in use.")
                self.url = server.url
                self._ready.set()
                await self._stop.wait()
            finally:
                await server.stop()
        finally:
            await coordinator.close()

    def stop(self) -> None:
        """Stop serving and join the thread (a no-op when it does not run)."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended in between
                loop.call_soon_threadsafe(stop.set)
        thread.join(STOP_TIMEOUT)
        self._thread = None


__all__ = ["Dashboard"]
