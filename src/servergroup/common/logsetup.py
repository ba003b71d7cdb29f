"""Logging, configured once, in the entry point.

Human-readable lines on a terminal, one JSON object per line otherwise (so
daemons under a supervisor or a test harness produce structured logs). Cores
never log; drivers and daemons do. An unexpected exception at a loop boundary
is logged with the word BUG (see `log_bug`), which the test harness turns into
a failure.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

BUG_MARKER = "BUG"


def setup_logging(
    level: int | str = logging.INFO, *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Configure the root logger; `json=None` picks JSON when `stream` is not a terminal."""
    out = stream if stream is not None else sys.stderr
    if json is None:
        json = not out.isatty()
    handler = logging.StreamHandler(out)
    formatter: logging.Formatter
    if json:
        # Imported here: a guest agent logging text lines does not load it at start.
        from pythonjsonlogger.json import JsonFormatter

        formatter = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "asctime": "time", "name": "logger"},
        )
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # gRPC and asyncio chatter is not ours to show at INFO.
    for noisy in ("aetcd", "grpc", "asyncio", "pyroute2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_bug(logger: logging.Logger, where: str) -> None:
    """Log the exception being handled as a bug at a loop boundary."""
    logger.exception("%s: unexpected error in %s", BUG_MARKER, where)
