"""`servergroup app [MESSAGE]`: the sample server-group application of seed 000."""

from __future__ import annotations

import signal
import sys
from types import FrameType

import click

from servergroup.groups.app import run_app
from servergroup.guestcomm.protocol import SERVER_GROUP_ADDR


@click.command()
@click.argument("message", required=False)
@click.option(
    "--count", type=click.IntRange(min=1), metavar="N", help="Stop after printing N messages."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="S",
    help="Stop after S seconds.",
)
@click.option("--json", "json_lines", is_flag=True, help="Print one JSON object per line.")
@click.option(
    "--address",
    default=SERVER_GROUP_ADDR,
    show_default=True,
    envvar="SERVERGROUP_APP_ADDRESS",
    metavar="NAME",
    help="Abstract address to bind; another than the default lets several apps run in "
    "one server [env SERVERGROUP_APP_ADDRESS].",
)
def app(
    message: str | None, count: int | None, timeout: float | None, json_lines: bool, address: str
) -> None:
    """Broadcast MESSAGE (if given), request the group's status, print what arrives.

    Run inside a server, next to its guest agent (`servergroup guest`). Prints
    every broadcast, notification, status answer and nack with its kind until
    Ctrl-C (or SIGTERM), --count messages or --timeout seconds; then its
    counters on stderr, and exits 0.
    """
    previous = signal.signal(signal.SIGTERM, _interrupt)  # ends it as Ctrl-C does
    try:
        run_app(
            message,
            count=count,
            timeout=timeout,
            json_lines=json_lines,
            address=address,
            out=sys.stdout,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
