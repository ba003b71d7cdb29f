"""Benchmark: vCPU scale down/up round trips (issue 13), on a lab server.

What it measures today: the round trip of the original tools over our relay
path, with the C programs of tests/compat/ (written from the spec; the same
ones tests/integration/scaling/test_compat_scale.py checks):
`scale_host_helper` in the lab host's network namespace sends a
`scale_request` from `scale-<hex>` to the host daemon's `cgcs.messaging`,
the relay writes it on the server's channel, the lab server's real guest
agent delivers it to `scale_guest_agent` (abstract `cgcs.scale`, CPUs in a
directory of its own with the sysfs layout), which runs the app helper,
writes `cpuN/online`, and replies through the guest agent and the relay
back to the host helper. The round trip is the host helper's own clock,
from just before its send to the reply's arrival (its `rtt` line), so the
start of the helper process and `nsenter` are not in it.

Two series of `--ops` operations each (down and up in turn, 4 CPUs, never
below 1): with no app helper installed, and with an app helper that takes
`--helper-ms` (100 ms) each time. Reported: p50/p99/max per series and per
direction. Goal (issue 13): p99 <= 100 ms with no helper on lab servers.

Not measured yet: `servergroup scale cpu down|up` (the host-side scaler:
CLI -> host -> guest -> hypervisor -> record) and qemu servers; the
`series()` step is where they plug in, beside these figures.

Everything is torn down at the end (`servergroup down`), also on an error or
Ctrl-C. Writes a table on stdout and JSON plus Markdown under bench/results/.

    .venv/bin/python bench/scaling.py [--ops 50] [--helper-ms 100] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMPAT = ROOT / "tests" / "compat"

from _harness import RESULTS, UpRun, run_meta, run_then_tear_down, say, summary  # noqa: E402

from servergroup.common.process import stop_group_async  # noqa: E402

GROUP = "bench"
SERVER = "sc1"
CPUS = 4
#: Each request's own bound (the original gave the whole operation 10 s).
REQUEST_SECONDS = 10.0
GOAL = "p99 <= 100 ms with no helper on lab servers (issue 13; the original's budget was 10 s)"


class Bench(UpRun):
    def __init__(self) -> None:
        super().__init__("sc")
        self.netns = ""
        self.instance = ""

    def build(self) -> dict[str, Path]:
        """The two C programs, compiled into the state directory."""
        gcc = shutil.which("gcc")
        if gcc is None:
            sys.exit("bench/scaling.py needs gcc (scripts/install-system-deps installs it)")
        built = {}
        for name in ("scale_host_helper", "scale_guest_agent"):
            target = self.state_dir / name
            subprocess.run(
                [gcc, "-Wall", "-Werror", "-O2", "-o", str(target), str(COMPAT / f"{name}.c")],
                check=True,
                timeout=120,
            )
            built[name] = target
        return built


def make_cpus(root: Path, helper_ms: int | None) -> Path:
    """A sysfs root with CPUs 0..CPUS-1 online, and an app helper (None: not installed)."""
    cpu_dir = root / "sys" / "devices" / "system" / "cpu"
    cpu_dir.mkdir(parents=True)
    every = f"0-{CPUS - 1}\n"
    for leaf, text in (("present", every), ("possible", every), ("online", every)):
        (cpu_dir / leaf).write_text(text)
    (cpu_dir / "offline").write_text("\n")
    for cpu in range(CPUS):
        (cpu_dir / f"cpu{cpu}").mkdir()
        if cpu:
            (cpu_dir / f"cpu{cpu}" / "online").write_text("1\n")
    helper = root / "app_scale_helper"
    if helper_ms is not None:
        # Picks nothing (status 0: the agent takes the highest online CPU) after its delay.
        helper.write_text(f"#!/bin/sh\nsleep {helper_ms / 1000:.3f}\nexit 0\n")
        helper.chmod(0o755)
    return helper


async def request(
    bench: Bench, programs: dict[str, Path], args: list[str]
) -> tuple[dict[str, Any], float]:
    """One request from the host helper: the reply's data and the round trip (seconds)."""
    proc = await asyncio.create_subprocess_exec(
        "nsenter",
        f"--net=/run/netns/{bench.netns}",
        str(programs["scale_host_helper"]),
        *("-i", bench.instance, "-t", str(REQUEST_SECONDS), *args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"scale_host_helper {' '.join(args)} exited {proc.returncode}: {err!r}")
    reply: dict[str, Any] | None = None
    rtt: float | None = None
    for line in out.decode().splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "reply":
            reply = json.loads(rest.split(" ", 1)[1])
        elif kind == "rtt":
            rtt = float(rest)
    if reply is None or rtt is None:
        raise RuntimeError(f"scale_host_helper {' '.join(args)} printed no reply: {out!r}")
    return reply, rtt


async def wait_for_agent(bench: Bench, programs: dict[str, Path]) -> None:
    """Until the guest's scale agent answers (a request it refuses, which changes nothing)."""
    probe = '{ "version": 2, "msg_type": "scale_request", "resource": "none" }'
    for _ in range(60):
        with contextlib.suppress(RuntimeError):
            reply, _ = await request(bench, programs, ["-x", probe, "-t", "1"])
            if reply.get("msg_type") == "nack":
                return
        await asyncio.sleep(0.2)
    raise RuntimeError("the guest's scale agent never answered")


async def series(
    bench: Bench, programs: dict[str, Path], ops: int, helper_ms: int | None
) -> dict[str, Any]:
    """`ops` operations, down and up in turn, with the guest agent of this series."""
    root = bench.state_dir / f"cpus-{helper_ms if helper_ms is not None else 'none'}"
    helper = make_cpus(root, helper_ms)
    agent = await asyncio.create_subprocess_exec(
        *bench.argv("server", "exec", SERVER, "--"),
        *(str(programs["scale_guest_agent"]), "-s", str(root), "-H", str(helper)),
        env=bench.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        await wait_for_agent(bench, programs)
        times: dict[str, list[float]] = {"down": [], "up": []}
        offline: list[int] = []
        for i in range(ops):
            if i % 2 == 0:
                reply, rtt = await request(bench, programs, ["-d", "down"])
                offline.append(int(reply["offline_cpu"]))
                times["down"].append(rtt)
            else:
                cpu = min(offline)
                offline.remove(cpu)
                reply, rtt = await request(bench, programs, ["-d", "up", "-c", str(cpu)])
                times["up"].append(rtt)
            if reply.get("result") != "success":
                raise RuntimeError(f"operation {i} failed: {reply}")
        every = times["down"] + times["up"]
        return {
            "helper_ms": helper_ms,
            "all_ms": summary(every, 1000.0, 2),
            "down_ms": summary(times["down"], 1000.0, 2),
            "up_ms": summary(times["up"], 1000.0, 2),
        }
    finally:
        await stop_group_async(agent.pid, term_timeout=5.0)
        await agent.wait()


async def run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    say(f"servergroup up: lab {bench.lab}, state {bench.state_dir}")
    # The C guest agent binds cgcs.scale itself: lab servers run without ours.
    bench.env["SERVERGROUP_LAB_SCALE_AGENT"] = "off"
    await bench.cli("up", "--hosts", "1")
    state = json.loads((bench.state_dir / "up" / "state.json").read_text())
    bench.netns = next(str(h["netns"]) for h in state["hosts"] if h["name"] == "h1")
    programs = bench.build()
    await bench.cli("group", "create", GROUP)
    await bench.cli("server", "create", SERVER, "--group", GROUP, "--vcpus", str(CPUS))
    bench.instance = json.loads(await bench.cli("server", "show", SERVER, "--json"))[
        "instance_name"
    ]
    results: dict[str, Any] = {"ops": args.ops}
    say(f"{args.ops} operations with no app helper")
    results["no_helper"] = await series(bench, programs, args.ops, None)
    say(f"{args.ops} operations with an app helper of {args.helper_ms} ms")
    results["helper"] = await series(bench, programs, args.ops, args.helper_ms)
    return results


def table(results: dict[str, Any]) -> str:
    rows = ["| series | ops | p50 | p99 | max | down p50 | up p50 |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for key in ("no_helper", "helper"):
        r = results[key]
        label = "no app helper" if r["helper_ms"] is None else f"app helper {r['helper_ms']} ms"
        rows.append(
            f"| C tools, lab server, {label} | {r['all_ms']['n']} | {r['all_ms']['p50']} ms | "
            f"{r['all_ms']['p99']} ms | {r['all_ms']['max']} ms | {r['down_ms']['p50']} ms | "
            f"{r['up_ms']['p50']} ms |"
        )
    return "\n".join(rows)


def write(results: dict[str, Any], load_at_start: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        **run_meta(
            "scaling",
            "servergroup up --hosts 1 (managed local etcd), 1 lab server; the original tools' "
            "C programs (tests/compat/scale_*.c) over the host relay and the guest agent",
            load_at_start,
        ),
        "goal": GOAL,
    }
    (RESULTS / "scaling.json").write_text(json.dumps({**meta, **results}, indent=2) + "\n")
    text = table(results)
    (RESULTS / "scaling.md").write_text(
        f"# scaling benchmark\n\n`{meta['command']}` on {meta['date']}, {meta['machine']}.\n"
        f"{meta['setup']}; 1-minute load average {load_at_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (machine shared with other work).\n\n"
        f"Goal: {GOAL}.\n\n{text}\n\n"
        "Round trip: the host helper's clock, from just before its send to the reply "
        "(request -> relay -> channel -> guest agent -> scale agent, helper, sysfs -> "
        "reply back the same way). Not yet measured: `servergroup scale cpu` through the "
        "host-side scaler (hypervisor and record steps) and qemu servers.\n"
    )
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ops", type=int, default=50, help="operations per series")
    parser.add_argument("--helper-ms", type=int, default=100, help="the slow app helper's delay")
    parser.add_argument("--quick", action="store_true", help="10 operations per series")
    args = parser.parse_args()
    if args.quick:
        args.ops = 10
    if os.geteuid() != 0:
        sys.exit("bench/scaling.py needs root (lab namespaces and cgroups)")
    bench = Bench()
    load_at_start = os.getloadavg()[0]
    results = run_then_tear_down(bench, run(bench, args))
    write(results, load_at_start)


if __name__ == "__main__":
    main()
