"""Benchmark: concurrent lifecycle operations (issue 11, part 1), 8 client processes.

One run brings up a `servergroup up --hosts 6` of its own (state directory
under /tmp, etcd ports and lab name of its own), creates an affinity and an
anti-affinity group, and starts 8 client processes
(`python -m tests.integration.servers.workload`, the workload of the test
tests/integration/servers/test_concurrent_operations.py), each with its own
`EtcdCoordinator` and seed. Together they issue `--ops` random lifecycle
operations (create, delete, pause, unpause, stop, start, reboot, live and
cold migration) on 12 fixed server names, 6 per group, so that creates and
deletes of one name race, as do placements in one group; each client issues
its next operation as soon as the previous one ended (`--think` 0).

Reported: operations per second (all, and those that succeeded), the median
and p90 latency per kind (of successes, and of all), the failures by reason,
and the conflict retries (writes that found the records changed since they
were read and were decided again). The store's history since the start is
then checked as the test checks it (every success reflected, reboot counts,
no deleted server back, no group's policy broken at any revision) and the
verdict is written with the figures.

Everything is torn down at the end (`servergroup down`, the state
directory), also on an error or Ctrl-C. Writes a table on stdout and JSON
plus Markdown under bench/results/.

    .venv/bin/python bench/operations.py [--ops 300] [--clients 8] [--seed N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the workload lives with the test that checks it

from _harness import (  # noqa: E402
    RESULTS,
    UpRun,
    quantile,
    run_meta,
    run_then_tear_down,
    say,
)
from tests.integration.servers.workload import (  # noqa: E402
    Kind,
    Layout,
    OpRecord,
    check_history,
    client_argv,
    read_history,
    reason,
    split,
    store_revision,
    two_groups,
)

from servergroup.config import CoordinationConfig, parse_endpoints  # noqa: E402
from servergroup.coordination import EtcdCoordinator, connect  # noqa: E402
from servergroup.servers.operations import Operations  # noqa: E402
from servergroup.servers.registry import Registry  # noqa: E402

HOSTS = ("h1", "h2", "h3", "h4", "h5", "h6")
SERVERS = tuple(f"op{i:02d}" for i in range(12))
CLI_TIMEOUT = 240.0
#: Each operation's own bound (the clients' `Operations` timeout).
OP_TIMEOUT = 30.0
START_TIMEOUT = 60.0
RUN_TIMEOUT = 600.0


def seconds(samples: Sequence[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    return {
        "n": len(samples),
        "p50": round(statistics.median(samples), 3),
        "p90": round(quantile(samples, 0.9), 3),
        "max": round(max(samples), 3),
    }


class Bench(UpRun):
    """The setup of one run: CLI calls with its environment, the store, the clients."""

    def __init__(self) -> None:
        super().__init__("op", cli_timeout=CLI_TIMEOUT)
        self.up: dict[str, Any] = {}

    def coordinator(self) -> EtcdCoordinator:
        return connect(
            CoordinationConfig(),
            endpoints=parse_endpoints(str(self.up["etcd"])),
            prefix=str(self.up["prefix"]),
        )

    def daemon_problems(self) -> list[str]:
        """BUG lines and tracebacks in the host daemons' logs."""
        found = []
        for log in sorted((self.state_dir / "up" / "hosts").glob("*/host.log")):
            for line in log.read_text(errors="replace").splitlines():
                if "BUG" in line or "Traceback" in line:
                    found.append(f"{log.parent.name}: {line.strip()[:300]}")
        return found


async def run_clients(
    bench: Bench, layout: Layout, args: argparse.Namespace, out_dir: Path
) -> tuple[list[OpRecord], list[str]]:
    """Start the client processes, let them go at once, wait; their records and stderr."""
    endpoints = str(bench.up["etcd"])
    procs: list[asyncio.subprocess.Process] = []
    errs = []
    try:
        for i, count in enumerate(split(args.ops, args.clients)):
            err = (out_dir / f"client{i}.err").open("wb")
            errs.append(err)
            procs.append(
                await asyncio.create_subprocess_exec(
                    *client_argv(
                        endpoints=endpoints,
                        prefix=str(bench.up["prefix"]),
                        layout=layout,
                        client=i,
                        count=count,
                        seed=args.seed * 100 + i,
                        timeout=OP_TIMEOUT,
                        think=args.think,
                        out=out_dir / f"client{i}.jsonl",
                    ),
                    cwd=ROOT,
                    env=bench.env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                )
            )
        async with asyncio.timeout(START_TIMEOUT):
            for proc in procs:
                assert proc.stdout is not None
                line = await proc.stdout.readline()
                if line != b"ready\n":
                    raise RuntimeError(f"a client did not start: {line!r}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        async with asyncio.timeout(RUN_TIMEOUT):
            codes = [await proc.wait() for proc in procs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for err in errs:
            err.close()
    stderr = [(out_dir / f"client{i}.err").read_text() for i in range(len(procs))]
    if codes != [0] * len(procs):
        raise RuntimeError(f"clients exited with {codes}: {stderr}")
    records = [
        OpRecord.from_json(line)
        for i in range(len(procs))
        for line in (out_dir / f"client{i}.jsonl").read_text().splitlines()
    ]
    return records, [e for e in stderr if e.strip()]


async def run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    say(f"servergroup up: lab {bench.lab}, state {bench.state_dir}")
    bench.up = json.loads(await bench.cli("up", "--hosts", str(len(HOSTS)), "--json"))
    layout = two_groups(list(SERVERS), HOSTS)
    admin = bench.coordinator()
    try:
        ops = Operations(Registry(admin), timeout=OP_TIMEOUT)
        for group, policy in layout.groups.items():
            await ops.create_group(group, policy)
        start = await store_revision(admin)
        say(f"{args.clients} clients, {args.ops} operations, seed {args.seed}")
        out_dir = bench.state_dir / "clients"
        out_dir.mkdir()
        records, client_stderr = await run_clients(bench, layout, args, out_dir)
        events = await read_history(admin, start, await store_revision(admin))
        problems, history = check_history(layout, events, records)
        say("deleting the servers left")
        for server in await ops.list_servers():
            with contextlib.suppress(Exception):
                await ops.delete(server.name)
    finally:
        await admin.close()
    return analyse(records, layout) | {
        "revisions_replayed": history.revisions,
        "history_problems": problems[:50],
        "history_problems_count": len(problems),
        "client_stderr": [e[:2000] for e in client_stderr],
        "daemon_problems": bench.daemon_problems()[:40],
    }


def analyse(records: Sequence[OpRecord], layout: Layout) -> dict[str, Any]:
    began = min(r.began_at for r in records)
    elapsed = max(r.ended_at for r in records) - began
    ok = [r for r in records if r.ok]
    per_kind = {}
    for kind in Kind:
        mine = [r for r in records if r.kind is kind]
        per_kind[kind.value] = {
            "n": len(mine),
            "ok": sum(r.ok for r in mine),
            "latency_ok_s": seconds([r.latency for r in mine if r.ok]),
            "latency_all_s": seconds([r.latency for r in mine]),
            "conflicts_retried": sum(r.conflicts for r in mine),
        }
    failures: dict[str, int] = {}
    for r in records:
        if not r.ok:
            failures[reason(r, layout)] = failures.get(reason(r, layout), 0) + 1
    return {
        "operations": len(records),
        "clients": len({r.client for r in records}),
        "elapsed_s": round(elapsed, 3),
        "ops_per_s": round(len(records) / elapsed, 2),
        "ok": len(ok),
        "ok_per_s": round(len(ok) / elapsed, 2),
        "conflicts_retried": sum(r.conflicts for r in records),
        "ops_with_a_conflict": sum(r.conflicts > 0 for r in records),
        "per_kind": per_kind,
        "failed_by_reason": dict(sorted(failures.items(), key=lambda kv: -kv[1])),
    }


# -- output ------------------------------------------------------------------------------


def _s(figures: dict[str, Any], key: str) -> str:
    value = figures.get(key)
    return f"{value:g} s" if isinstance(value, int | float) else ""


def table(results: dict[str, Any]) -> str:
    lines = [
        "| kind | issued | succeeded | p50 (ok) | p90 (ok) | p50 (all) | p90 (all) "
        "| conflict retries |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, f in results["per_kind"].items():
        ok, every = f["latency_ok_s"], f["latency_all_s"]
        lines.append(
            f"| {kind} | {f['n']} | {f['ok']} | {_s(ok, 'p50')} | {_s(ok, 'p90')} "
            f"| {_s(every, 'p50')} | {_s(every, 'p90')} | {f['conflicts_retried']} |"
        )
    return "\n".join(lines)


def headline(results: dict[str, Any]) -> str:
    r = results
    verdict = (
        "no problem found"
        if not r["history_problems_count"]
        else f"{r['history_problems_count']} PROBLEM(S), first: {r['history_problems'][0]}"
    )
    return (
        f"{r['operations']} operations by {r['clients']} client processes in "
        f"{r['elapsed_s']:g} s: **{r['ops_per_s']:g} operations/s** "
        f"({r['ok']} succeeded: {r['ok_per_s']:g}/s); {r['conflicts_retried']} conflict "
        f"retries in {r['ops_with_a_conflict']} operations. History check over "
        f"{r['revisions_replayed']} revisions: {verdict}. Host daemon BUG lines or "
        f"tracebacks: {len(r['daemon_problems'])}."
    )


def failures(results: dict[str, Any]) -> str:
    lines = ["Failures by reason (names, hosts and numbers replaced by S, H, N):", ""]
    lines += [f"- {n} x {text}" for text, n in results["failed_by_reason"].items()]
    return "\n".join(lines)


def notes() -> str:
    return (
        "Most failures are the workload's own doing, and correct refusals: operations on a "
        "name that does not exist (yet, or any more), creates of a name that exists, moves "
        "a group's policy forbids, a request superseded by another client's before the host "
        "carried it out. The clients issue back to back (no think time), so the rate is the "
        "control plane's under contention on one etcd, with 6 host daemons and every lab "
        "server's guest agent on a 2-core machine shared with other work; the latency of a "
        "success is the CLI-less library call from the first read to the status that "
        "settles it."
    )


def write(results: dict[str, Any], args: argparse.Namespace, lab: str, load: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        **run_meta(
            "operations",
            f"servergroup up --hosts {len(HOSTS)} (lab {lab}, managed local etcd), "
            f"{len(SERVERS)} lab server names (6 in an affinity group, 6 in an anti-affinity "
            f"group), {args.clients} client processes, seed {args.seed}, think time up to "
            f"{args.think:g} s",
            load,
        ),
    }
    (RESULTS / f"{args.output}.json").write_text(json.dumps({**meta, **results}, indent=2) + "\n")
    text = table(results)
    (RESULTS / f"{args.output}.md").write_text(
        f"# operations benchmark (concurrent lifecycle operations)\n\n"
        f"`{meta['command']}` on {meta['date']}, {meta['machine']}.\n{meta['setup']}; "
        f"1-minute load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
        "(machine shared with other work).\n\n"
        f"{headline(results)}\n\n{text}\n\n{failures(results)}\n\n{notes()}\n"
    )
    print(headline(results))
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ops", type=int, default=300, help="operations in all")
    parser.add_argument("--clients", type=int, default=8, help="client processes")
    parser.add_argument("--seed", type=int, help="seed (default: random, recorded)")
    parser.add_argument("--think", type=float, default=0.0, help="most seconds between ops")
    parser.add_argument("--output", default="operations", help="result file stem")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    if os.geteuid() != 0:
        sys.exit("bench/operations.py needs root (lab namespaces and cgroups)")
    bench = Bench()
    load = os.getloadavg()[0]
    results = run_then_tear_down(bench, run(bench, args))
    write(results, args, bench.lab, load)
    if results["history_problems_count"] or results["daemon_problems"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
