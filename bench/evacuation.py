"""Evacuation: from `servergroup lab crash` of a host to its servers active elsewhere.

Each run crashes the lab host that runs the measured servers (what `lab crash`
does, by a process started beforehand, so that the clock starts at the kill:
SIGKILL of its host daemon and of every process of it and its servers,
QEMU included), times the three stages from the registry as a host daemon
sees it, and brings the host back (`servergroup up`, which restarts what is
missing) for the next run:

- **detection**: crash -> the host's record gone (its session lease expired);
- **grace**: -> the evacuator's write (spec and status handed to a live host);
- **rebuild**: -> every evacuated server reported active by its new host.

Two series: 3 lab servers on one host, and 1 qemu server (whose rebuild is a
VM boot; the same run times one `server create` of a qemu server as the
boot-time reference, after a first VM built the guest disk). The grace
period is 0, as the goal asks. The servers are in a soft-affinity group, so
an evacuation keeps them together on one host and the next run crashes that
one.

There is no peer to run: Pacemaker does not rebuild VMs, and Nova's
`evacuate` needs a whole OpenStack; the goal (median <= 2 s for lab servers,
<= 1.5 s + the boot time for a qemu server) is the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from _harness import RESULTS, UpRun, run_meta, run_then_tear_down, say, summary

from servergroup.config import CoordinationConfig, parse_endpoints
from servergroup.coordination import connect
from servergroup.servers.model import REBUILDING_TASK, VmState
from servergroup.servers.registry import ChangeKind, RegistryCache, RegistryChange

GROUP = "evac"
HOSTS = ("h1", "h2", "h3")
CLI_TIMEOUT = 180.0
RUN_TIMEOUT = 120.0
#: Crashes lab host argv[3] of lab argv[1] (state directory argv[2]) on a line on stdin.
CRASHER = """
import sys
from pathlib import Path
from servergroup.daemons.labfaults import fault_lab
lab = fault_lab(sys.argv[1], state_dir=Path(sys.argv[2]))
print("ready", flush=True)
sys.stdin.readline()
lab.crash(sys.argv[3])
"""
GOALS = {
    "lab": "median crash -> active elsewhere <= 2 s (grace 0)",
    "qemu": "median crash -> active elsewhere <= 1.5 s + the VM boot time (grace 0)",
}


@dataclass(slots=True)
class Times:
    """Monotonic stamps of one run's stages, as the registry watcher saw them."""

    crashed_at: float
    host_gone_at: float | None = None
    handed_at: dict[str, float] = field(default_factory=dict)
    active_at: dict[str, float] = field(default_factory=dict)


class Bench(UpRun):
    def __init__(self) -> None:
        super().__init__("ev", env={"SERVERGROUP_EVACUATION_GRACE": "0"}, cli_timeout=CLI_TIMEOUT)
        self.up: dict[str, Any] = {}
        self.cache: RegistryCache | None = None
        self.times: Times | None = None
        self.watching: set[str] = set()
        self.changed = asyncio.Event()

    async def bring_up(self) -> None:
        self.up = json.loads(await self.cli("up", "--hosts", str(len(HOSTS)), "--json"))

    def note(self, change: RegistryChange) -> None:
        """Stamp the stages of the current run from one registry change."""
        times, now = self.times, time.monotonic()
        if times is None:
            return
        if change.after is None and change.before is not None and change.kind is ChangeKind.HOST:
            times.host_gone_at = times.host_gone_at or now
        server = change.snapshot.servers.get(change.name)
        if change.name in self.watching and server is not None and server.status is not None:
            status = server.status
            if status.task_state == REBUILDING_TASK:
                times.handed_at.setdefault(change.name, now)
            elif change.name in times.handed_at and status.state is VmState.ACTIVE:
                times.active_at.setdefault(change.name, now)
        self.changed.set()

    async def follow(self) -> None:
        endpoints = parse_endpoints(str(self.up["etcd"]))
        coordinator = connect(
            CoordinationConfig(), endpoints=endpoints, prefix=str(self.up["prefix"])
        )
        self.cache = RegistryCache(coordinator)
        await self.cache.start()
        queue = self.cache.subscribe()
        try:
            while True:
                self.note(await queue.get())
        finally:
            await self.cache.stop()
            await coordinator.close()

    async def crasher(self, victim: str) -> asyncio.subprocess.Process:
        """A process that crashes `victim` as `lab crash` does, once told to (its imports done).

        So the clock starts at the kill, not at a CLI's start-up; and in a process
        of its own, since the lab's netlink helper forks, which a process with
        gRPC's threads (our registry watcher) must not do.
        """
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CRASHER, self.lab, str(self.state_dir), victim,
            env=self.env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        if await proc.stdout.readline() != b"ready\n":
            raise RuntimeError(f"the crasher of {victim} did not start (exit {await proc.wait()})")
        return proc

    def host_of(self, name: str) -> str:
        assert self.cache is not None
        return self.cache.snapshot.servers[name].host

    async def one_run(self, names: list[str]) -> dict[str, float]:
        """Crash the host of `names`; the stages in seconds once all run elsewhere."""
        victim = self.host_of(names[0])
        self.watching = set(names)
        crasher = await self.crasher(victim)
        times = self.times = Times(crashed_at=time.monotonic())
        assert crasher.stdin is not None
        crasher.stdin.write(b"go\n")
        await crasher.stdin.drain()
        if await crasher.wait() != 0:
            raise RuntimeError(f"crashing {victim} failed (exit status {crasher.returncode})")
        deadline = time.monotonic() + RUN_TIMEOUT
        while len(times.active_at) < len(names):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{names} not active elsewhere {RUN_TIMEOUT:g} s after a crash")
            self.changed.clear()
            try:
                async with asyncio.timeout(1.0):
                    await self.changed.wait()
            except TimeoutError:
                pass
        self.times = None
        gone = times.host_gone_at or times.crashed_at
        handed = min(times.handed_at.values())
        active = max(times.active_at.values())
        moved = sorted({self.host_of(n) for n in names})
        say(f"  {victim} crashed: {', '.join(names)} active on {', '.join(moved)} "
            f"after {active - times.crashed_at:.2f} s")  # fmt: skip
        await self.cli("up", "--hosts", str(len(HOSTS)))  # the crashed host comes back
        return {
            "total_s": active - times.crashed_at,
            "detection_s": gone - times.crashed_at,
            "grace_s": max(0.0, handed - gone),
            "rebuild_s": active - handed,
        }


async def series(bench: Bench, names: list[str], runs: int) -> dict[str, Any]:
    samples: list[dict[str, float]] = []
    for i in range(runs):
        say(f"run {i + 1}/{runs}")
        samples.append(await bench.one_run(names))
    return {
        stage: summary([s[stage] for s in samples])
        for stage in ("total_s", "detection_s", "grace_s", "rebuild_s")
    }


async def run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    say(f"servergroup up: lab {bench.lab}, state {bench.state_dir}")
    await bench.bring_up()
    follower = asyncio.create_task(bench.follow())
    try:
        await bench.cli("group", "create", GROUP, "--policy", "soft-affinity")
        lab = [f"l{i}" for i in range(3)]
        for name in lab:
            await bench.cli("server", "create", name, "--group", GROUP, "--host", "h1")
        say(f"lab servers: {args.runs} crashes of the host of {', '.join(lab)}")
        results: dict[str, Any] = {"lab": await series(bench, lab, args.runs)}
        for name in lab:
            await bench.cli("server", "delete", name)
        if not args.no_qemu:
            # A first VM may build the guest disk; the boot reference is a warm create.
            await bench.cli("server", "create", "vwarm", "--group", GROUP, "--driver", "qemu")
            await bench.cli("server", "delete", "vwarm")
            started = time.monotonic()
            await bench.cli("server", "create", "v0", "--group", GROUP, "--driver", "qemu")
            boot = time.monotonic() - started
            say(
                f"qemu server: {args.qemu_runs} crashes of the host of v0 "
                f"(create took {boot:.2f} s)"
            )
            results["qemu"] = await series(bench, ["v0"], args.qemu_runs)
            results["qemu_create_s"] = round(boot, 3)
        return results
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


def table(results: dict[str, Any]) -> str:
    rows = ["| series | runs | total median | total max | detection | grace | rebuild |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, label in (("lab", "3 lab servers"), ("qemu", "1 qemu server")):
        if key not in results:
            continue
        r = results[key]
        rows.append(
            f"| {label} | {r['total_s']['n']} | {r['total_s']['p50']:.2f} s | "
            f"{r['total_s']['max']:.2f} s | {r['detection_s']['p50']:.2f} s | "
            f"{r['grace_s']['p50']:.2f} s | {r['rebuild_s']['p50']:.2f} s |"
        )
    return "\n".join(rows)


def write(results: dict[str, Any], args: argparse.Namespace, load_at_start: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        **run_meta(
            "evacuation",
            f"servergroup up --hosts {len(HOSTS)} (managed local etcd, lease 1 s), "
            "evacuation grace 0, soft-affinity group",
            load_at_start,
        ),
        "goals": GOALS,
    }
    (RESULTS / f"{args.output}.json").write_text(json.dumps({**meta, **results}, indent=2) + "\n")
    text = table(results)
    qemu = ""
    if "qemu_create_s" in results:
        qemu = (
            f"\n\nReference for the qemu goal: one `server create --driver qemu` in this run "
            "(the guest disk already built; CLI start to the guest agent connected) took "
            f"{results['qemu_create_s']:.2f} s, so the goal is a median <= "
            f"{1.5 + results['qemu_create_s']:.2f} s."
        )
    (RESULTS / f"{args.output}.md").write_text(
        f"# evacuation benchmark\n\n`{meta['command']}` on {meta['date']}, {meta['machine']}.\n"
        f"{meta['setup']}; 1-minute load average {load_at_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (machine shared with other work).\n\n"
        f"Goals: {GOALS['lab']}; {GOALS['qemu']}.\n\n{text}{qemu}\n"
    )
    print(text + qemu)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="crashes with 3 lab servers")
    parser.add_argument("--qemu-runs", type=int, default=20, help="crashes with 1 qemu server")
    parser.add_argument("--no-qemu", action="store_true", help="only the lab series")
    parser.add_argument("--quick", action="store_true", help="3 runs of each")
    parser.add_argument("--output", default="evacuation", help="result file stem")
    args = parser.parse_args()
    if args.quick:
        args.runs = args.qemu_runs = 3
    if os.geteuid() != 0:
        sys.exit("bench/evacuation.py needs root (lab namespaces, cgroups, the qemu driver)")
    bench = Bench()
    load_at_start = os.getloadavg()[0]
    results = run_then_tear_down(bench, run(bench, args))
    write(results, args, load_at_start)


if __name__ == "__main__":
    main()
