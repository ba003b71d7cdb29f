"""What every benchmark of a `servergroup up` setup shares: the run, the CLI, the figures.

A benchmark makes a `UpRun` (its own state directory, lab name and etcd
ports, so it never touches another setup), drives the real CLI through
`cli()`, and ends with `tear_down()` (`servergroup down`), also when it is
interrupted (`interrupts_as_keyboard_interrupt` turns SIGTERM into Ctrl-C).
`summary()` gives the quantiles the result tables quote; `machine()` the
line that says where they were measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from servergroup.coordination.etcd_process import free_ports

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CLI_TIMEOUT = 120.0

T = TypeVar("T")


def quantile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(samples: Sequence[float], scale: float = 1.0, digits: int = 3) -> dict[str, Any]:
    """Count, min/p50/p90/p99/max/mean of `samples` times `scale`, rounded."""
    if not samples:
        return {"n": 0}
    return {
        "n": len(samples),
        "min": round(min(samples) * scale, digits),
        "p50": round(quantile(samples, 0.50) * scale, digits),
        "p90": round(quantile(samples, 0.90) * scale, digits),
        "p99": round(quantile(samples, 0.99) * scale, digits),
        "max": round(max(samples) * scale, digits),
        "mean": round(statistics.fmean(samples) * scale, digits),
    }


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def lab_name(prefix: str) -> str:
    """`prefix` + this process's PID in base 36 (last 5 digits): short, [a-z0-9]."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    number, text = os.getpid(), ""
    while number:
        number, digit = divmod(number, 36)
        text = digits[digit] + text
    return prefix + text[-5:]


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class UpRun:
    """One `servergroup up` of a benchmark's own: its environment, CLI calls and files."""

    def __init__(
        self,
        lab_prefix: str,
        *,
        env: Mapping[str, str] | None = None,
        cli_timeout: float = CLI_TIMEOUT,
    ) -> None:
        # A short state directory: unix socket paths must fit in 108 bytes.
        self.state_dir = Path(tempfile.mkdtemp(prefix="sgb-", dir="/tmp"))
        self.lab = lab_name(lab_prefix)
        self.cli_timeout = cli_timeout
        client_port, peer_port = free_ports(2)
        self.env = {
            **os.environ,
            "SERVERGROUP_STATE_DIR": str(self.state_dir),
            "SERVERGROUP_ETCD_PORT": str(client_port),
            "SERVERGROUP_ETCD_PEER_PORT": str(peer_port),
            "SERVERGROUP_LAB": self.lab,
            **(env or {}),
        }
        for inherited in ("SERVERGROUP_ETCD_ENDPOINTS", "SERVERGROUP_CONFIG", "SERVERGROUP_PREFIX"):
            self.env.pop(inherited, None)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "servergroup", *args]

    async def cli(self, *args: str, timeout: float | None = None) -> str:
        """Run `servergroup ARGS` without blocking the loop; its stdout, or raise."""
        limit = timeout if timeout is not None else self.cli_timeout
        proc = await asyncio.create_subprocess_exec(
            *self.argv(*args),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(limit):
                out, err = await proc.communicate()
        except TimeoutError:
            raise RuntimeError(f"servergroup {' '.join(args)} took over {limit:g} s") from None
        finally:
            if proc.returncode is None:  # timed out or cancelled (Ctrl-C)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.shield(proc.wait())
        if proc.returncode != 0:
            raise RuntimeError(
                f"servergroup {' '.join(args)} exited {proc.returncode}: "
                f"{err.decode().strip()} {out.decode().strip()}"
            )
        return out.decode()

    def host_log(self, host: str) -> Path:
        return self.state_dir / "up" / "hosts" / host / "host.log"

    def tear_down(self) -> None:
        """`servergroup down` (a second Ctrl-C abandons it), then remove the state directory."""
        say("servergroup down")
        for attempt in (1, 2):
            try:
                done = subprocess.run(
                    self.argv("down"),
                    env=self.env,
                    capture_output=True,
                    text=True,
                    timeout=self.cli_timeout,
                    check=False,
                )
                if done.returncode != 0:
                    say(f"servergroup down exited {done.returncode}: {done.stderr.strip()}")
                break
            except KeyboardInterrupt:
                if attempt == 2:
                    raise
                say("still tearing down; Ctrl-C again to abandon (then run `servergroup down`)")
            except subprocess.TimeoutExpired:
                say(f"servergroup down took over {self.cli_timeout:g} s")
                break
        shutil.rmtree(self.state_dir, ignore_errors=True)


@contextlib.contextmanager
def interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """SIGTERM ends the run like Ctrl-C, so that the teardown runs."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def need_root(script: str) -> None:
    if os.geteuid() != 0:
        sys.exit(f"{script} needs root (lab namespaces and cgroups)")


def run_then_tear_down(run: UpRun, main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on a fresh event loop; `servergroup down` afterwards, whatever happens.

    Ctrl-C or SIGTERM tear down and exit with status 130.
    """
    with interrupts_as_keyboard_interrupt():
        try:
            result = asyncio.run(main)
        except KeyboardInterrupt:
            say("interrupted")
            run.tear_down()
            sys.exit(130)
        except Exception:
            run.tear_down()
            raise
        run.tear_down()
    return result


def run_meta(benchmark: str, setup: str, load_at_start: float) -> dict[str, Any]:
    """What every result file says first: which benchmark, the command, when, where, the load.

    The machine is shared: the 1-minute load average at the start and at the
    end says how much the numbers may be disturbed.
    """
    return {
        "benchmark": benchmark,
        "command": f"python bench/{benchmark}.py " + " ".join(sys.argv[1:]),
        "date": utc_now(),
        "machine": machine(),
        "setup": setup,
        "load_average_1m": {"start": round(load_at_start, 2), "end": round(os.getloadavg()[0], 2)},
    }
