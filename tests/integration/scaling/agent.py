"""The guest scale agent inside a server, as the host-side tests start it.

Today that is the scripted stand-in `responder.py` (the real agent is written
beside this work); swapping in the real one is a change of `agent_argv` only:
both answer `cgcs.scale` over a sysfs-like directory of their own and write
nothing the tests read but that directory's `online` file.

The script goes to the server's Python on stdin (`python -`), so it needs no
file inside the server: a qemu server sees the host's `/usr` and the
project's interpreter, not the tests. Its directory is the server's own: in
a lab server the test reads it directly (a lab server shares the machine's
files), in a VM through `servergroup server exec ... cat`.
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
    argv = [sys.executable, "-", "--dir", str(root), "--vcpus", str(vcpus), "--mode", mode]
    return argv + (["--sync"] if sync else [])


@dataclass
class ScaleAgent:
    setup: Setup
    server: str
    root: Path
    vm: bool  # the directory is inside a VM: read through `server exec`
    proc: subprocess.Popen[bytes]

    def read(self, name: str) -> str | None:
        if not self.vm:
            try:
                return (self.root / name).read_text()
            except OSError:
                return None
        done = self.setup.run(
            "server", "exec", self.server, "--", "cat", str(self.root / name), check=False
        )
        return done.stdout if done.returncode == 0 else None

    def online(self) -> tuple[int, ...]:
        """The guest's online CPUs, as its own sysfs-like directory says."""
        return parse_cpu_list(self.read("online") or "")

    def synced(self) -> str:
        return (self.read("synced") or "").strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc.pid, term_timeout=3.0)
        self.proc.wait(5)


#: Every agent started, stopped at the end of its test (`conftest.scale_agents`).
STARTED: list[ScaleAgent] = []


def start_scale_agent(
    setup: Setup,
    server: str,
    vcpus: int,
    *,
    mode: str = "normal",
    sync: bool = False,
    vm: bool = False,
) -> ScaleAgent:
    """Start the scale agent in `server` (`server exec`); return once it listens."""
    root = Path(f"/run/sg-scale/{server}") if vm else setup.state_dir / "scale-sysfs" / server
    if not vm:
        if not sync:
            shutil.rmtree(root, ignore_errors=True)  # a fresh guest: every CPU online
        root.mkdir(parents=True, exist_ok=True)
        (root / "ready").unlink(missing_ok=True)
    else:
        clean = "rm -f ready" if sync else "rm -rf ./*"
        setup.run(
            "server", "exec", server, "--", "sh", "-c", f"mkdir -p {root} && cd {root} && {clean}"
        )
    err = (setup.state_dir / f"scale-agent-{server}.err").open("ab")
    proc = subprocess.Popen(
        setup.argv("server", "exec", server, "--", *agent_argv(root, vcpus, mode=mode, sync=sync)),
        env=setup.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    err.close()
    assert proc.stdin is not None
    proc.stdin.write(RESPONDER.read_bytes())
    proc.stdin.close()
    agent = ScaleAgent(setup=setup, server=server, root=root, vm=vm, proc=proc)
    STARTED.append(agent)
    deadline = time.monotonic() + 30.0
    while agent.read("ready") is None:
        if proc.poll() is not None:
            why = (setup.state_dir / f"scale-agent-{server}.err").read_text(errors="replace")
            raise AssertionError(
                f"the scale agent of {server} exited with {proc.returncode}: {why[-2000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"the scale agent of {server} did not start within 30 s")
        time.sleep(0.05 if not vm else 0.3)
    return agent
