"""Benchmark: ownership takeover after kill -9, and watch notification latency.

For each store (the managed local etcd, tuned for 1 s leases, and a 3-member
etcd cluster on loopback), in one run:

- takeover: three contender processes campaign for one key; the owner is
  killed with SIGKILL; the time from the kill to the moment a survivor
  reports it owns the key (both read CLOCK_MONOTONIC) is one sample. The
  killed contender is replaced and the next round starts. `--runs` rounds.
- watch latency: one client puts a counter, another watches it; the time from
  just before the put to the event's arrival, `--puts` samples.

Writes a table on stdout and JSON plus a Markdown table under bench/results/.
Pacemaker's figures (REFERENCE.md, measured on 3 namespace nodes here) are
quoted beside ours for orientation; it is not run by this benchmark.

    .venv/bin/python bench/coordination.py [--runs 20] [--puts 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from servergroup.config import Config, CoordinationConfig, Endpoint, LocalEtcdConfig
from servergroup.coordination.connect import connect
from servergroup.coordination.contender import ContenderProcess, first_event
from servergroup.coordination.etcd_process import free_ports, start_cluster
from servergroup.coordination.local_etcd import LocalEtcd

RESULTS = Path(__file__).resolve().parent / "results"
PACEMAKER = {  # REFERENCE.md: Pacemaker 2.1.5 + corosync 3.1.7, Dummy agent, no fencing
    "pacemaker default token (3000 ms)": 8.8,
    "pacemaker token 1000 ms": 4.5,
}


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def takeover_runs(
    endpoints: tuple[Endpoint, ...], config: CoordinationConfig, runs: int
) -> list[float]:
    contenders = [
        await ContenderProcess.spawn("bench", f"c{i}", endpoints=endpoints, config=config)
        for i in range(3)
    ]
    samples: list[float] = []
    serial = 3
    try:
        owner, _ = await first_event(contenders, "acquired", timeout=15.0)
        for _ in range(runs):
            await asyncio.sleep(0.5)  # let the standbys settle on their watches
            killed_at = time.monotonic()
            await owner.kill()
            contenders.remove(owner)
            new_owner, ev = await first_event(contenders, "acquired", timeout=15.0)
            samples.append(float(ev["mono"]) - killed_at)
            replacement = await ContenderProcess.spawn(
                "bench", f"c{serial}", endpoints=endpoints, config=config
            )
            serial += 1
            await replacement.next_event("session")
            contenders.append(replacement)
            owner = new_owner
            print(f"  takeover {len(samples):2d}/{runs}: {samples[-1]:.3f} s", file=sys.stderr)
    finally:
        for c in contenders:
            await c.stop()
    return samples


async def watch_latency(
    endpoints: tuple[Endpoint, ...], config: CoordinationConfig, puts: int
) -> list[float]:
    writer = connect(config, endpoints=endpoints)
    watcher = connect(config, endpoints=endpoints)
    start = (await writer.get_prefix("")).revision + 1
    watch = await watcher.watch("latency", start_revision=start)
    sent: dict[int, float] = {}
    samples: list[float] = []
    done = asyncio.Event()

    async def read() -> None:
        async for ev in watch:
            now = time.monotonic()
            samples.append(now - sent[int(ev.value)])
            if len(samples) >= puts:
                done.set()
                return

    reader = asyncio.create_task(read())
    try:
        for i in range(puts):
            sent[i] = time.monotonic()
            await writer.put("latency", str(i).encode())
            await asyncio.sleep(0.002)
        await asyncio.wait_for(done.wait(), 30.0)
    finally:
        reader.cancel()
        await watch.close()
        await writer.delete_prefix("")
        await writer.close()
        await watcher.close()
    return samples


def summarize(takeovers: list[float], latencies: list[float]) -> dict[str, Any]:
    return {
        "takeover_runs": len(takeovers),
        "takeover_median_s": round(statistics.median(takeovers), 3),
        "takeover_max_s": round(max(takeovers), 3),
        "takeover_samples_s": [round(x, 4) for x in takeovers],
        "watch_puts": len(latencies),
        "watch_p50_ms": round(quantile(latencies, 0.50) * 1000, 3),
        "watch_p99_ms": round(quantile(latencies, 0.99) * 1000, 3),
    }


async def bench_store(
    label: str, endpoints: tuple[Endpoint, ...], config: CoordinationConfig, args: Any
) -> dict[str, Any]:
    print(f"{label}: {', '.join(map(str, endpoints))}", file=sys.stderr)
    takeovers = await takeover_runs(endpoints, config, args.runs)
    latencies = await watch_latency(endpoints, config, args.puts)
    return {"store": label, **summarize(takeovers, latencies)}


async def main(args: Any) -> list[dict[str, Any]]:
    config = replace(CoordinationConfig(), prefix=f"/bench/{int(time.time())}/")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sg-bench-") as tmp:
        client, peer = free_ports(2)
        local = LocalEtcd(
            Config(
                state_dir=Path(tmp) / "state",
                coordination=config,
                etcd=LocalEtcdConfig(client_port=client, peer_port=peer),
            )
        )
        endpoint = local.ensure_running()
        try:
            rows.append(await bench_store("managed local etcd (tuned)", (endpoint,), config, args))
        finally:
            local.stop()
        cluster = start_cluster(Path(tmp) / "cluster", 3)
        try:
            rows.append(
                await bench_store("3-member etcd cluster (tuned)", cluster.endpoints, config, args)
            )
        finally:
            cluster.stop()
    return rows


def write(rows: list[dict[str, Any]], args: Any) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "benchmark": "coordination",
        "command": "python bench/coordination.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "lease_ttl_s": CoordinationConfig().lease_ttl,
        "goal": "takeover median <= 1.5 s on the tuned local etcd",
        "reported_peers_s": PACEMAKER,
    }
    (RESULTS / "coordination.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "| store | takeover median | takeover max | runs | watch p50 | watch p99 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['store']} | {r['takeover_median_s']:.3f} s | {r['takeover_max_s']:.3f} s "
            f"| {r['takeover_runs']} | {r['watch_p50_ms']:.2f} ms | {r['watch_p99_ms']:.2f} ms |"
        )
    for name, value in PACEMAKER.items():
        lines.append(f"| {name} (reported, not run) | {value:.1f} s | | | | |")
    table = "\n".join(lines)
    (RESULTS / "coordination.md").write_text(
        f"# coordination benchmark\n\n`{meta['command']}` on {meta['date']}, "
        f"lease TTL {meta['lease_ttl_s']} s.\n\n{table}\n"
    )
    print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="takeover rounds per store")
    parser.add_argument("--puts", type=int, default=1000, help="watch latency samples per store")
    arguments = parser.parse_args()
    write(asyncio.run(main(arguments)), arguments)
