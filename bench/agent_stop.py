"""Benchmark: how long real OCF agents take to stop (and demote), against the self-fencing budget.

A node must have demoted and stopped its instances before its lease may
expire (docs/design/services.md, "Self-fencing"), so a service's
`stop_timeout` must fit in what the services' lease timings leave
(`model.check_stop_fits`). This measures what the agents need: for each of
`ocf:heartbeat:Dummy`, `ocf:pacemaker:Stateful` and the test agent
`ocf:sgtest:journal`, `--runs` rounds of start (promote), then the timed
demote and stop, through the same runner the node role uses (`OcfAgent`).
It then prints, for the default timings and a few others, the largest
`stop_timeout` a plain and a promotable service may have.

Writes a table on stdout and JSON plus a Markdown table under bench/results/.

    .venv/bin/python bench/agent_stop.py [--runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from _harness import RESULTS, machine, summary, utc_now

from servergroup.config import ServicesConfig
from servergroup.services.model import AgentRef, LeaseTimings
from servergroup.services.ocf import KILL_GRACE, OcfAgent

FIXTURE_OCF = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "ocf"
SYSTEM_OCF = Path("/usr/lib/ocf")

AGENTS = {
    "ocf:heartbeat:Dummy": (AgentRef(provider="heartbeat", type="Dummy"), SYSTEM_OCF, False),
    "ocf:pacemaker:Stateful": (AgentRef(provider="pacemaker", type="Stateful"), SYSTEM_OCF, True),
    "ocf:sgtest:journal": (AgentRef(provider="sgtest", type="journal"), FIXTURE_OCF, True),
}


def _label(timings: LeaseTimings, what: str) -> str:
    return (
        f"{what} (ttl {timings.lease_ttl}, renew {timings.renew_interval:g}, "
        f"timeout {timings.renew_timeout:g}, margin {timings.fence_margin:g})"
    )


# The services' own lease ([services] in the config), which check_lease_fits
# holds every service's stop to: its defaults, then the longer leases a site
# may choose (docs/design/services.md).
TIMINGS: dict[str, LeaseTimings] = {
    _label(ServicesConfig(), "services defaults"): ServicesConfig(),
    _label(ServicesConfig(lease_ttl=2), "lease_ttl = 2"): ServicesConfig(lease_ttl=2),
    _label(ServicesConfig(lease_ttl=3), "lease_ttl = 3"): ServicesConfig(lease_ttl=3),
}


async def measure(name: str, runs: int, work: Path) -> dict[str, list[float]]:
    ref, root, promotable = AGENTS[name]
    agent = OcfAgent(
        ref,
        instance="bench:0",
        parameters={"state": str(work / f"{ref.type}.state")},
        ocf_root=root,
    )
    stops: list[float] = []
    demotes: list[float] = []
    for _ in range(runs):
        started = await agent.run("start", timeout=20.0)
        assert started.ok, started.describe()
        if promotable:
            promoted = await agent.run("promote", timeout=20.0)
            assert promoted.ok, promoted.describe()
            demoted = await agent.run("demote", timeout=20.0)
            assert demoted.ok, demoted.describe()
            demotes.append(demoted.duration)
        stopped = await agent.run("stop", timeout=20.0)
        assert stopped.ok, stopped.describe()
        stops.append(stopped.duration)
    return {"stop": stops, "demote": demotes}


def limits(config: LeaseTimings) -> dict[str, float]:
    """The largest stop_timeout of a plain and of a promotable service (check_stop_fits)."""
    spare = (
        config.lease_ttl - 2 * config.renew_interval - config.renew_timeout - config.fence_margin
    )
    return {
        "spare": spare,
        "plain": spare - KILL_GRACE,  # stop + kill
        "promotable": (spare - 2 * KILL_GRACE) / 2,  # demote + kill + stop + kill, demote = stop
    }


async def main(runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sg-agent-stop-") as tmp:
        measured = {name: await measure(name, runs, Path(tmp)) for name in AGENTS}
    return {
        "benchmark": "agent_stop",
        "at": utc_now(),
        "machine": machine(),
        "runs": runs,
        "agents": {
            name: {k: summary(v, 1000.0, 1) for k, v in m.items() if v}
            for name, m in measured.items()
        },
        "limits_s": {label: limits(config) for label, config in TIMINGS.items()},
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"Agent stop times ({result['runs']} runs each, ms; {result['machine']})",
        "",
        "| agent | action | median | p90 | max |",
        "|---|---|---|---|---|",
    ]
    for name, actions in result["agents"].items():
        for action, s in actions.items():
            lines.append(f"| {name} | {action} | {s['p50']} | {s['p90']} | {s['max']} |")
    lines += [
        "",
        "Largest stop_timeout that fits (s; a promotable service demotes within it too)",
        "",
        "| timings | spare | plain | promotable |",
        "|---|---|---|---|",
    ]
    for label, lim in result["limits_s"].items():
        cells = " | ".join(
            f"{lim[k]:.2f}" if lim[k] > 0 else "none fits" for k in ("spare", "plain", "promotable")
        )
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    outcome = asyncio.run(main(args.runs))
    text = table(outcome)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "agent_stop.json").write_text(json.dumps(outcome, indent=2) + "\n")
    (RESULTS / "agent_stop.md").write_text(text)
