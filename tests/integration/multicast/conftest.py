"""Fixtures: `servergroup image send|receive` as real processes on lab hosts.

`transfer(hosts, mtu=..., loss=...)` brings up a lab (h1 sends, h2.. receive)
and returns a `Transfer` that starts the sender and receivers, each with its
stderr in a log shown when the test fails. Every process still running at
the end is killed (by its PID) before the lab goes down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import pytest

from servergroup.lab import Lab
from tests.fixtures.daemons import show_log_on_failure
from tests.fixtures.lab import LabFactory

SG = [sys.executable, "-m", "servergroup"]
PORT = 18383
ROGUE = str(Path(__file__).with_name("rogue.py"))
MODULES_AT_EXIT = str(Path(__file__).with_name("modules_at_exit.py"))


class Process:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def stdout_json(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        text = self.proc.stdout.read().decode()
        lines = [line for line in text.splitlines() if line.startswith("{")]
        assert lines, f"{self.name} printed no JSON; stderr:\n{self.stderr()}"
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stderr_json(self) -> dict[str, Any]:
        lines = [line for line in self.stderr().splitlines() if line.startswith('{"ok"')]
        assert lines, f"{self.name} printed no JSON report; stderr:\n{self.stderr()}"
        result: dict[str, Any] = json.loads(lines[-1])
        return result


class Transfer:
    def __init__(self, lab: Lab, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.lab = lab
        self.tmp_path = tmp_path
        self.request = request
        self.processes: list[Process] = []
        self.hosts = lab.hosts()
        self.server = str(self.hosts[0].address)

    def address(self, host: str) -> str:
        return str(self.lab.host(host).address)

    def _start(
        self, name: str, host: str, argv: Sequence[str], stdin: IO[bytes] | int | None
    ) -> Process:
        log = self.tmp_path / f"{name}.log"
        with log.open("wb") as err:
            proc = self.lab.popen(
                host,
                list(argv),
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        show_log_on_failure(self.request.node, name, log)
        process = Process(name, proc, log)
        self.processes.append(process)
        return process

    def sender(
        self,
        clients: int,
        source: Path | IO[bytes] | int,
        *args: str,
        port: int = PORT,
        modules_to: Path | None = None,
    ) -> Process:
        """`image send`; with `modules_to`, the modules it loaded are written there at exit."""
        python = SG if modules_to is None else [sys.executable, MODULES_AT_EXIT, str(modules_to)]
        argv = [*python, "-v", "image", "send", self.server, str(clients), str(port), "--json"]
        argv += args
        if isinstance(source, Path):
            with source.open("rb") as f:
                return self._start("sender", "h1", argv, f)
        return self._start("sender", "h1", argv, source)

    def receiver(
        self, host: str, *args: str, output: Path | None = None, port: int = PORT
    ) -> Process:
        out = output if output is not None else self.tmp_path / f"{host}.img"
        argv = [
            *SG,
            "-v",
            "image",
            "receive",
            self.address(host),
            self.server,
            str(port),
            "--json",
            "--output",
            str(out),
            *args,
        ]
        return self._start(f"receiver-{host}", host, argv, None)

    def receivers(self, *args: str) -> dict[str, Process]:
        return {h.name: self.receiver(h.name, *args) for h in self.hosts[1:]}

    def output(self, host: str) -> bytes:
        return (self.tmp_path / f"{host}.img").read_bytes()

    def rogue(self, host: str, *args: str) -> Process:
        return self._start(f"rogue-{host}", host, [sys.executable, ROGUE, *args], None)

    def kill_all(self) -> None:
        for p in self.processes:
            if p.proc.poll() is None:
                p.proc.kill()
            p.proc.wait(10)
            if p.proc.stdout is not None:
                p.proc.stdout.close()


class TransferFactory(Protocol):
    def __call__(
        self, hosts: int, *, mtu: int = 1500, loss: float = 0, rate: str | None = None
    ) -> Transfer: ...


@pytest.fixture
def transfer(
    lab: LabFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[TransferFactory]:
    made: list[Transfer] = []

    def make(hosts: int, *, mtu: int = 1500, loss: float = 0, rate: str | None = None) -> Transfer:
        t = Transfer(lab(hosts, mtu=mtu, loss=loss, rate=rate), tmp_path, request)
        made.append(t)
        return t

    yield make
    for t in made:
        t.kill_all()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """3 MiB and 1234 bytes: a multiple of no packet or buffer size."""
    path = tmp_path / "image.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 1234))
    return path
