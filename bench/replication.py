"""Benchmark: the checkpoint pause of replication (issue 15), kernel tracking against hashing.

What is measured so far is the part of an epoch's pause that the memory
costs: for one region of `--mib` MiB (256 by default), each round stores
one byte into a random `--dirty` share of its pages (1 % and 10 %), then
times `Capturer.capture` (the tracker's collect plus the copy of the dirty
pages into the capture buffer), for the kernel tracker (userfaultfd +
PAGEMAP_SCAN) and the hashing fallback, on the same region in the same run.
The first capture of each series (full, growing the buffer) is not counted.

Still to come in this file (docs/design/replication.md): kv service
throughput and reply latency unprotected vs protected at 25/50/100/200 ms
and with --no-net-buffer, and failover time.

Goal (issue 15): pause p99 <= 5 ms at 10 % dirty of 256 MiB with kernel
tracking.

    .venv/bin/python bench/replication.py [--mib 256] [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from typing import Any

from _harness import RESULTS, run_meta, say, summary

from servergroup.replication.checkpoint import Capturer
from servergroup.replication.regions import PAGE_SIZE, RegionSet
from servergroup.replication.tracking import DirtyTracker, HashTracker
from servergroup.replication.uffd import KernelTracker

GOAL_P99_MS = 5.0


def pause_series(
    tracker: DirtyTracker, regions: RegionSet, share: float, rounds: int, rng: random.Random
) -> list[float]:
    region = next(iter(regions))
    capturer = Capturer(regions, tracker)
    capturer.capture(full=True)
    count = max(1, int(region.pages * share))
    view = region.view
    samples: list[float] = []
    for _ in range(rounds):
        for page in rng.sample(range(region.pages), count):
            at = page * PAGE_SIZE
            view[at] = (view[at] + 1) % 256
        started = time.perf_counter()
        captured = capturer.capture(full=False)
        samples.append(time.perf_counter() - started)
        if captured.pages != count:
            raise SystemExit(f"captured {captured.pages} pages, {count} were written")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    rng = random.Random(15)
    rows: list[dict[str, Any]] = []
    regions = RegionSet()
    try:
        regions.allocate("state", args.mib * 1024 * 1024)
        for name, make in (("kernel", KernelTracker), ("hash", HashTracker)):
            for share in (0.01, 0.10):
                tracker: DirtyTracker = make()
                try:
                    tracker.track(next(iter(regions)))
                    samples = pause_series(tracker, regions, share, args.rounds, rng)
                finally:
                    tracker.close()
                pause = summary(samples, 1000, 2)
                say(f"{name:6s} {share:4.0%} dirty: {pause}")
                rows.append({"tracker": name, "dirty": share, "pause_ms": pause})
    finally:
        regions.close()
    meta = run_meta(
        "replication",
        f"one {args.mib} MiB region, {args.rounds} rounds per series, random pages",
        load_at_start,
    )
    result = {**meta, "goal": f"pause p99 <= {GOAL_P99_MS} ms at 10 % dirty, kernel", "pause": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "replication.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# replication benchmark",
        "",
        f"`{meta['command']}` on {meta['date']}, {meta['machine']}.",
        f"{meta['setup']}; 1-minute load average {meta['load_average_1m']['start']} at the"
        f" start, {meta['load_average_1m']['end']} at the end (machine shared with other work).",
        "",
        f"Goal: {result['goal']} (issue 15).",
        "",
        "| tracker | dirty | rounds | p50 | p99 | max |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        ms = row["pause_ms"]
        lines.append(
            f"| {row['tracker']} | {row['dirty']:.0%} | {ms['n']} | {ms['p50']} ms"
            f" | {ms['p99']} ms | {ms['max']} ms |"
        )
    lines += [
        "",
        "Pause: `Capturer.capture`, i.e. the tracker's collect (which re-arms tracking)"
        " plus the copy of the dirty pages out of the region. Not yet measured: service"
        " throughput and latency under protection, failover time.",
    ]
    (RESULTS / "replication.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
