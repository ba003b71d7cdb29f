"""The guest scale agent inside a lab server, as the host-side tests start it.

Today that is the scripted stand-in `responder.py` (the real agent is written
beside this work); swapping in the real one is a change of `agent_argv` only:
both answer `cgcs.scale` over a sysfs-like directory of their own and write
nothing the tests read but that directory's `online` file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from servergroup.common.process import stop_process
from servergroup.scaling.cpus import parse_cpu_list
from tests.fixtures.setup import Setup

RESPONDER = Path(__file__).with_name("responder.py")


def agent_argv(root: Path, vcpus: int, *, mode: str, sync: bool) -> list[str]:
    """The scale agent's command line inside the server (the stand-in's, for now)."""
    argv = [sys.executable, str(RESPONDER), "--dir", str(root), "--vcpus", str(vcpus)]
    argv += ["--mode", mode]
    return argv + (["--sync"] if sync else [])


@dataclass
class ScaleAgent:
    server: str
    root: Path
    proc: subprocess.Popen[bytes]

    def online(self) -> tuple[int, ...]:
        """The guest's online CPUs, as its own sysfs-like directory says."""
        return parse_cpu_list((self.root / "online").read_text())

    def synced(self) -> str:
        return (self.root / "synced").read_text().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc.pid, term_timeout=3.0)
        self.proc.wait(5)


#: Every agent started, stopped at the end of its test (`conftest.scale_agents`).
STARTED: list[ScaleAgent] = []


def start_scale_agent(
    setup: Setup, server: str, vcpus: int, *, mode: str = "normal", sync: bool = False
) -> ScaleAgent:
    """Start the scale agent in `server` (`server exec`); return once it listens."""
    root = setup.state_dir / "scale-sysfs" / server
    if not sync:
        shutil.rmtree(root, ignore_errors=True)  # a fresh guest: every CPU online
    root.mkdir(parents=True, exist_ok=True)
    (root / "ready").unlink(missing_ok=True)
    proc = subprocess.Popen(
        setup.argv("server", "exec", server, "--", *agent_argv(root, vcpus, mode=mode, sync=sync)),
        env=setup.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(root / "agent.err").open("ab"),
    )
    agent = ScaleAgent(server=server, root=root, proc=proc)
    STARTED.append(agent)
    deadline = time.monotonic() + 20.0
    while not (root / "ready").exists():
        if proc.poll() is not None:
            why = (root / "agent.err").read_text(errors="replace").strip()[-2000:]
            raise AssertionError(
                f"the scale agent of {server} exited with {proc.returncode}: {why}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"the scale agent of {server} did not start within 20 s")
        time.sleep(0.05)
    return agent
