"""The API and its dashboard served by a process of their own (for `servergroup demo`).

Theory of operation. The host daemons of `servergroup up` run inside lab
hosts, each in its own network namespace, so each one's API listens on that
lab host's own loopback and a browser in the root namespace reaches none of
them. `Dashboard` serves the very component they run (`api.server.ApiServer`,
the same application and `/events` feed) on the root namespace instead, on
the same etcd and prefix, so the page shows the demo's cluster while its
steps run.

It is a child process (multiprocessing's `spawn`: a fresh interpreter), not
a thread: the etcd client is gRPC, which does not survive a `fork` while
its channel is busy, and the demo forks (pyroute2 enters a lab host's
namespace through a forked child); a thread with an open dashboard made that
child crash. The child reports its URL, or why it cannot serve, through a
pipe; SIGTERM (or the SIGINT of a Ctrl-C in the demo's terminal) stops it in
order: the event streams end, then uvicorn, then the etcd client. The kernel
sends it SIGTERM when the demo dies (`die_with_parent`), so even a demo
killed with SIGKILL leaves no dashboard holding the port.

It listens where `[api]` says (`127.0.0.1:8470` by default) when that port
is free, else on a port the kernel chooses (a host daemon of this machine
may hold 8470); `start()` returns the URL to print. Reads need nothing on
loopback; actions need the token of `[api] token_file`, and without one the
page is read-only (the API refuses actions, 401).
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import signal
import socket
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess

from servergroup.api.server import ApiServer
from servergroup.common.errors import ConfigError
from servergroup.common.process import die_with_parent
from servergroup.config import Config, Endpoint
from servergroup.coordination import connect

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def _port_free(bind: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    try:
        with socket.create_server((bind, port), family=family):
            return True
    except OSError:
        return False


async def _serve(
    config: Config, endpoints: tuple[Endpoint, ...], name: str, report: Connection
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    settings = config.api
    if not _port_free(settings.bind, settings.port):
        settings = dataclasses.replace(settings, port=0)
    coordinator = connect(config, endpoints=endpoints)
    try:
        server = ApiServer(
            settings,
            coordinator=coordinator,
            host=name,
            health=lambda: {},
            operation_timeout=config.coordination.operation_timeout,
        )
        await server.start()
        try:
            if server.address is None:  # taken between the check and the bind
                raise ConfigError(f"port {settings.port} on {settings.bind} is in use.")
            report.send(("url", server.url))
            await stop.wait()
        finally:
            await server.stop()
    finally:
        await coordinator.close()


def _child(
    config: Config, endpoints: tuple[Endpoint, ...], name: str, report: Connection, parent: int
) -> None:
    """The child process: serve until SIGTERM; any failure goes to the parent in one line."""
    if not die_with_parent(parent=parent):  # a demo killed with SIGKILL leaves no dashboard
        return
    try:
        asyncio.run(_serve(config, endpoints, name, report))
    except Exception as exc:
        report.send(("error", str(exc) or type(exc).__name__))


class Dashboard:
    """The API of no host daemon, for a process that shows a cluster (see the module docstring)."""

    def __init__(self, config: Config, endpoints: Sequence[Endpoint], *, name: str = "demo"):
        self._config = config
        self._endpoints = tuple(endpoints)
        self._name = name
        self._proc: SpawnProcess | None = None
        self.url: str | None = None

    def start(self) -> str:
        """Serve; return the dashboard's URL. ConfigError when it cannot."""
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        self._proc = context.Process(
            target=_child,
            args=(self._config, self._endpoints, self._name, send, os.getpid()),
            name="servergroup-dashboard",
            daemon=True,  # ended with the demo, whatever happens to it
        )
        self._proc.start()
        send.close()
        try:
            if not receive.poll(START_TIMEOUT):
                raise ConfigError(f"the dashboard did not start within {START_TIMEOUT:g} s.")
            kind, value = receive.recv()
        except EOFError:
            kind, value = "error", f"its process exited ({self._proc.exitcode})"
        except ConfigError:
            self.stop()
            raise
        finally:
            receive.close()
        if kind != "url":
            self.stop()
            raise ConfigError(f"the dashboard cannot run: {str(value).rstrip('.')}.")
        self.url = str(value)
        return self.url + "/"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        """Stop serving and wait for the process (a no-op when it does not run)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.is_alive():
            proc.terminate()
            proc.join(STOP_TIMEOUT)
            if proc.is_alive():
                proc.kill()
                proc.join(STOP_TIMEOUT)
        proc.close()


__all__ = ["Dashboard"]
