"""What every command shares: the config options, error reporting, running async code."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from servergroup.common import units
from servergroup.common.errors import Interrupted, ServergroupError, sentence
from servergroup.common.logsetup import setup_logging
from servergroup.config import Config, load_config

T = TypeVar("T")


@dataclass(slots=True)
class CliState:
    """Top-level options, turned into a `Config` the first time a command asks."""

    config_path: Path | None = None
    state_dir: Path | None = None
    endpoints: str | None = None
    prefix: str | None = None
    _config: Config | None = None

    def config(self, **coordination: Any) -> Config:
        if self._config is None or coordination:
            overrides: dict[str, dict[str, Any]] = {
                "": {"state_dir": self.state_dir},
                "coordination": {
                    "endpoints": self.endpoints,
                    "prefix": self.prefix,
                    **coordination,
                },
            }
            self._config = load_config(self.config_path, overrides=overrides)
        return self._config


pass_state = click.make_pass_decorator(CliState, ensure=True)


class Size(click.ParamType[int]):
    """A size option (`64MiB`, `1g`, `256`), read by `common.units.parse_size`, in `unit` bytes.

    The value handed to the command is a whole number of `unit`s (MiB for
    `unit=MIB`); a bare number counts in `unit` too; `low`/`high` bound it.
    """

    name = "size"

    def __init__(self, unit: int, low: int, high: int) -> None:
        self.unit, self.low, self.high = unit, low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        # click's message already names the option ("Invalid value for '--memory': ..."):
        # ours starts at the value.
        try:
            size = units.parse_size(value, what="", default_unit=self.unit)
        except ServergroupError as exc:
            self.fail(str(exc).lstrip(), param, ctx)
        unit = units.format_size(self.unit).removeprefix("1")
        if size % self.unit:
            self.fail(f"{value!r} is not a whole number of {unit}.", param, ctx)
        if not self.low <= size // self.unit <= self.high:
            self.fail(
                f"{value!r} is out of range: give {units.format_size(self.low * self.unit)} "
                f"to {units.format_size(self.high * self.unit)}.",
                param,
                ctx,
            )
        return size // self.unit


def fail(message: str, status: int = 1) -> None:
    """Print one sentence on stderr and exit with `status`."""
    click.echo(f"servergroup: {sentence(message)}", err=True)
    sys.exit(status)


def report_errors(func: Callable[[], T]) -> T:
    """Run `func`, turning our errors into one line and an exit status."""
    try:
        return func()
    except ServergroupError as exc:
        fail(str(exc), exc.exit_status)
    except KeyboardInterrupt:  # before a command runs (its own are `Interrupted`)
        fail(str(Interrupted()), Interrupted.exit_status)
    raise AssertionError("unreachable")


#: Seconds after a stop signal in which the same signal again is the same stop.
REPEAT_WINDOW = 0.5


def run_async(main: Coroutine[Any, Any, T], *, shutdown_timeout: float = 10.0) -> T:
    """Run `main` on a new event loop with uvicorn-style signal handling.

    The first SIGINT/SIGTERM cancels `main` so it can shut down in order,
    then `Interrupted` is raised (exit status 130; a daemon run by `run_daemon`
    exits 0 instead); a second one exits at once (status 128 + its number).
    A repeat within `REPEAT_WINDOW` of the first is the same request, not a
    second one: `timeout` (and anything that signals a process and then its
    group) delivers one stop twice.
    """

    async def runner() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        signals_seen = 0
        first_at = 0.0

        def on_signal(signum: int) -> None:
            nonlocal signals_seen, first_at
            now = time.monotonic()
            if signals_seen == 1 and now - first_at < REPEAT_WINDOW:
                return
            signals_seen += 1
            if signals_seen > 1:
                click.echo("servergroup: forced exit", err=True)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(128 + signum)  # at once: no shutdown left to wait for
            first_at = now
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await main
        except asyncio.CancelledError:
            if signals_seen:
                raise Interrupted() from None
            raise

    return asyncio.run(runner())


def run_daemon(main: Coroutine[Any, Any, None]) -> None:
    """Run a daemon's `main` until it ends or is stopped by SIGINT/SIGTERM.

    Stopped by a signal, it has shut down in order: the command exits 0, as
    a daemon asked to stop does (a supervisor and systemd count it clean).
    """
    with contextlib.suppress(Interrupted):
        run_async(main)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on a terminal, plain aligned columns otherwise."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(*headers, box=None, header_style="bold")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for row in [list(headers), *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def configure_logging(verbose: int, json: bool | None) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    setup_logging(level, json=json)
