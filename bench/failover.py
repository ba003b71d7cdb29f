"""Failover: from a fault of the owner's node to the agent's `start` returning on the new owner.

Three node daemons (`servergroup host --supervised` in three lab hosts, the
harness of the fault tests: tests/fixtures/services.py) run one service of
the journaling test agent (`ocf:sgtest:journal`, one instance). Each run
finds the instance's owner, applies a fault to it, and takes the time from
the fault (wall clock, the clock the agent journals with, shared by all
nodes of the machine) to the end of the successful `start` on another node
in the journal; then it undoes the fault and waits until the node is back.
Two faults, each `--runs` times (30 by default), with the tuned single etcd
(as the managed etcd is) and with a 3-member etcd:

- **daemon**: the owner's host daemon is killed (kill -9) while its host
  lives: its supervisor stops the instance and revokes the lease.
  Goal: median <= 0.5 s.
- **host**: the owner's whole host is gone (`lab crash`): only the lease can
  tell. Goal: median <= 1.5 s, max <= 2.5 s. The time runs from the death
  of the process that held the lease (the host daemon; for Pacemaker, the
  node's process tree), seen through a pidfd, not from the start of the
  `lab crash` command: the command first looks for the host's processes
  (0.1 s on a quiet machine, up to a second under load), and the host is
  alive and renewing all that time. The command's own time is in each run's
  `crash_command_s`.

Every run's journal is checked (`services.journal.check`): the result gives
the double-owner intervals and their total time, which must be zero. It also
counts the self-fences the node daemons logged ("the lease was not renewed in
time"): neither fault leaves a node alive that cannot renew, so any is
spurious (a lease too short for the load), and must be zero too.

The node roles hold their instances on the product's default services lease
(`[services] lease_ttl`, 1 s renewed every 0.1 s) unless `--lease-ttl` says
otherwise; where the host-loss time goes is in docs/design/services.md,
"Failover time".

Peer, in the same run: Pacemaker + corosync (Debian's 2.1.5 and 3.1.7)
on three lab hosts (bench/_pacemaker.py), running the same journaling agent,
for the **host** fault (`lab crash` of the node running the resource; there
is no supervisor to compare with for the other), with corosync's default
token and with `token: 1000` (the issue's anchor: 8.8 s and 4.5 s median).
The result gives the ratio of Pacemaker's median to ours. Skipped, with the
reason in the result, when Pacemaker is not installed.

Our series need the node role in the host daemons (`services.node`):
without it no node ever starts the service, and each series says so in one
sentence in the result instead of numbers (the peer still runs).

A crashed host's resource dies with it: the journal agent's resource is a
file, so the harness removes the crashed node's state and journals its stop
at the crash (`end_resources`), for servergroup and Pacemaker alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from _harness import RESULTS, run_meta, say, summary
from _pacemaker import PacemakerCluster

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the harness lives with the fault tests that check it

from tests.fixtures.lab import unique_lab_name  # noqa: E402
from tests.fixtures.services import (  # noqa: E402
    TEST_OCF,
    ServiceLab,
    end_resources,
    service_lab_of,
)

from servergroup.config import ServicesConfig  # noqa: E402
from servergroup.lab import Lab, remove_stale_labs  # noqa: E402
from servergroup.services.journal import (  # noqa: E402
    Record,
    check,
    decode_record,
    overlap_seconds,
)

SERVICE = "bench"
DEFAULTS = ServicesConfig()
FAULTS = ("daemon", "host")
GOALS = {
    "daemon": "median <= 0.5 s (the supervisor revokes the lease)",
    "host": "median <= 1.5 s, max <= 2.5 s (the lease expires)",
}
OWNER_TIMEOUT = 30.0
FAILOVER_TIMEOUT = 30.0
LAB_STATE = Path(tempfile.gettempdir()) / "servergroup-bench-labs"


class NoNodeRole(RuntimeError):
    """Nobody ever started the service: the host daemons have no node role."""


def started(records: list[Record], since: float, *, not_on: str | None = None) -> Record | None:
    """The first successful end of a `start` after `since` (on a node other than `not_on`)."""
    for r in records:
        if (
            r.action == "start"
            and r.phase.value == "end"
            and r.code == 0
            and r.at >= since
            and (not_on is None or r.node != not_on)
        ):
            return r
    return None


async def wait_owner(lab: ServiceLab, timeout: float = OWNER_TIMEOUT) -> str:
    """The node that owns the instance once its agent's start has returned there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owners = await lab.owners(SERVICE)
        ends = [
            r
            for r in lab.journal_records()
            if r.action == "start" and r.phase.value == "end" and r.code == 0
        ]
        if 0 in owners and ends and ends[-1].node == lab.journal_node(owners[0]):
            return owners[0]
        await asyncio.sleep(0.05)
    raise NoNodeRole(
        f"no node started {SERVICE} within {timeout:g} s: the host daemons need the "
        "service manager's node role"
    )


def timed_crash(crash: Callable[[], object], pid: int | None) -> tuple[float, float]:
    """Run `crash`; when it began and when process `pid` died (wall clock, the journal's).

    The death is seen through a pidfd by a thread that waits on it alone, so
    the time is the kernel's notification, not the end of the command.
    """
    began = time.time()
    if pid is None:
        crash()
        return began, began
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        crash()
        return began, began
    died: list[float] = []

    def wait() -> None:
        select.select([fd], [], [], FAILOVER_TIMEOUT)
        died.append(time.time())

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    try:
        crash()
    finally:
        waiter.join(FAILOVER_TIMEOUT)
        os.close(fd)
    return began, died[0] if died else began


async def one_run(lab: ServiceLab, fault: str) -> dict[str, Any]:
    owner = await wait_owner(lab)
    journal_name = lab.journal_node(owner)
    await asyncio.sleep(0.5)  # a steady state: the owner's monitors are running
    fault_at = time.time()
    command_at = fault_at
    if fault == "daemon":
        lab.kill_daemon(owner)
    else:
        command_at, fault_at = timed_crash(lambda: lab.crash(owner), lab.daemon_pid(owner))
    deadline = time.monotonic() + FAILOVER_TIMEOUT
    while (done := started(lab.journal_records(), fault_at, not_on=journal_name)) is None:
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{SERVICE} did not start elsewhere within {FAILOVER_TIMEOUT:g} s")
        await asyncio.sleep(0.01)
    row = {
        "fault": fault,
        "from": owner,
        "to": lab.node_of_journal(done.node),
        "failover_s": round(done.at - fault_at, 4),
        "crash_command_s": round(fault_at - command_at, 4),
    }
    await lab.restore()
    return row


async def series(etcd_members: int, args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="sgbf-", dir="/tmp"))
    try:
        async with service_lab_of(
            base, LAB_STATE, etcd_members=etcd_members, lease_ttl=args.lease_ttl
        ) as lab:
            await lab.define(lab.journal_service(SERVICE))
            await wait_owner(lab)
            out: dict[str, Any] = {"etcd_members": etcd_members}
            for fault in args.faults:
                rows = []
                for n in range(args.runs):
                    row = await one_run(lab, fault)
                    say(
                        f"  etcd x{etcd_members} {fault} #{n + 1}: {row['from']} -> {row['to']} "
                        f"in {row['failover_s']:.3f} s"
                    )
                    rows.append(row)
                out[fault] = {
                    "failover_s": summary([r["failover_s"] for r in rows]),
                    "runs": rows,
                }
            violations = check(lab.journal_records())
            out["double_owner_intervals"] = len(violations)
            out["double_owner_s"] = round(overlap_seconds(violations), 4)
            out["violations"] = [v.sentence for v in violations]
            out["self_fences"] = sum(lab.self_fences().values())
            return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def read_journal(path: Path) -> list[Record]:
    try:
        return [decode_record(x) for x in path.read_text().splitlines() if x.strip()]
    except FileNotFoundError:
        return []


async def pacemaker_series(token_ms: int | None, args: argparse.Namespace) -> dict[str, Any]:
    """The host fault, `args.runs` times, on a Pacemaker cluster of three lab hosts."""
    out: dict[str, Any] = {"token_ms": token_ms or "default (3000)"}
    if not all(shutil.which(b) for b in ("pacemakerd", "corosync", "crm_mon")):
        out["not_run"] = "Pacemaker and corosync are not installed (Debian: pacemaker, corosync)"
        return out
    base = Path(tempfile.mkdtemp(prefix="sgbp-", dir="/tmp"))
    lab = Lab(unique_lab_name(), state_dir=LAB_STATE, owner_pid=os.getpid())
    cluster: PacemakerCluster | None = None
    journal, agents = base / "journal", base / "agents"
    agents.mkdir()
    try:
        lab.up(3)
        cluster = PacemakerCluster(lab, base, TEST_OCF / "resource.d" / "sgtest", token_ms=token_ms)
        cluster.start()
        await cluster.wait_online()
        await cluster.configure(SERVICE, {"journal": str(journal), "state_dir": str(agents)})
        netns = {h.name: h.netns for h in lab.hosts()}
        rows = []
        for n in range(args.runs):
            owner = await until_value(lambda: cluster.locate(SERVICE), OWNER_TIMEOUT, "placed")
            await asyncio.sleep(0.5)
            _, fault_at = timed_crash(partial(cluster.crash, owner), cluster.procs[owner].pid)
            end_resources(journal, agents, netns[owner], fault_at)
            deadline = time.monotonic() + 60.0
            while (done := started(read_journal(journal), fault_at, not_on=netns[owner])) is None:
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.01)
            if done is None:
                # The peer's own trouble: keep the runs it made, say where it stopped.
                out["stopped"] = f"run {n + 1}: no start elsewhere within 60 s of the crash"
                say(f"  pacemaker token {out['token_ms']}: {out['stopped']}")
                break
            to = next(h for h, ns in netns.items() if ns == done.node)
            rows.append({"from": owner, "to": to, "failover_s": round(done.at - fault_at, 4)})
            say(
                f"  pacemaker token {out['token_ms']} host #{n + 1}: {owner} -> {to} "
                f"in {done.at - fault_at:.3f} s"
            )
            cluster.start_node(owner)
            await cluster.wait_online()
        violations = check(read_journal(journal))
        if not rows:
            out["not_run"] = out.get("stopped", "no run")
            return out
        out["host"] = {"failover_s": summary([r["failover_s"] for r in rows]), "runs": rows}
        out["double_owner_intervals"] = len(violations)
        out["double_owner_s"] = round(overlap_seconds(violations), 4)
        return out
    finally:
        if cluster is not None:
            cluster.stop()
        lab.down()
        shutil.rmtree(base, ignore_errors=True)


async def until_value(get: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while (value := await get()) is None:
        if time.monotonic() >= deadline:
            raise RuntimeError(f"Pacemaker's resource not {what} within {timeout:g} s")
        await asyncio.sleep(0.2)
    return value


def table(results: dict[str, Any]) -> str:
    lines = [
        "| system | etcd / token | fault | runs | median s | max s | double owners | self-fences |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in results["series"]:
        if "not_run" in s:
            lines.append(
                f"| servergroup | {s['etcd_members']} member(s) | - | not run: "
                f"{s['not_run']} | | | | |"
            )
            continue
        for fault in FAULTS:
            if fault in s:
                q = s[fault]["failover_s"]
                lines.append(
                    f"| servergroup | {s['etcd_members']} member(s) | {fault} | {q['n']} | "
                    f"{q['p50']:.3f} | {q['max']:.3f} | {s['double_owner_intervals']} "
                    f"({s['double_owner_s']} s) | {s.get('self_fences', '-')} |"
                )
    for p in results["pacemaker"]:
        if "not_run" in p:
            lines.append(
                f"| Pacemaker | token {p['token_ms']} | host | not run: {p['not_run']} | | | | |"
            )
            continue
        q = p["host"]["failover_s"]
        lines.append(
            f"| Pacemaker | token {p['token_ms']} | host | {q['n']} | {q['p50']:.3f} | "
            f"{q['max']:.3f} | {p['double_owner_intervals']} ({p['double_owner_s']} s) | - |"
        )
    ratios = results.get("ratios") or {}
    stopped = [p for p in results["pacemaker"] if "stopped" in p and "host" in p]
    if ratios or stopped:
        lines.append("")
        lines += [f"- {name}: {value}" for name, value in ratios.items()]
        lines += [f"- Pacemaker (token {p['token_ms']}) stopped at {p['stopped']}" for p in stopped]
    return "\n".join(lines)


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """Pacemaker's median over ours, for the host fault, per etcd size and token."""
    out = {}
    for s in results["series"]:
        if "host" not in s:
            continue
        ours = s["host"]["failover_s"]["p50"]
        for p in results["pacemaker"]:
            if "host" in p and ours:
                name = f"Pacemaker (token {p['token_ms']}) / servergroup ({s['etcd_members']} etcd)"
                out[name] = round(p["host"]["failover_s"]["p50"] / ours, 2)
    return out


def write(results: dict[str, Any], args: argparse.Namespace, load_at_start: float) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        **run_meta(
            "failover",
            "3 supervised host daemons in lab hosts, ocf:sgtest:journal (1 instance, "
            f"stop timeout 0.3 s), services lease {args.lease_ttl} s renewed every "
            f"{args.renew_interval:g} s; Pacemaker + corosync (knet) on 3 lab hosts, "
            "the same agent, fencing off, stickiness 100",
            load_at_start,
        ),
        "goals": GOALS,
    }
    (RESULTS / f"{args.output}.json").write_text(json.dumps({**meta, **results}, indent=2) + "\n")
    text = table(results)
    (RESULTS / f"{args.output}.md").write_text(
        f"# failover benchmark\n\n`{meta['command']}` on {meta['date']}, {meta['machine']}.\n"
        f"{meta['setup']}; 1-minute load average {load_at_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (machine shared with other work).\n\n"
        f"Goals: daemon killed {GOALS['daemon']}; host gone {GOALS['host']}.\n\n{text}\n"
    )
    print(text)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out = []
    for members in args.etcd:
        try:
            out.append(await series(members, args))
        except NoNodeRole as exc:
            say(f"  etcd x{members}: {exc}")
            out.append({"etcd_members": members, "not_run": str(exc)})
    peers = [await pacemaker_series(t, args) for t in args.pacemaker_tokens] if args.peer else []
    results: dict[str, Any] = {"series": out, "pacemaker": peers}
    results["ratios"] = ratios(results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="runs of each fault")
    parser.add_argument(
        "--etcd", type=int, nargs="+", default=[1, 3], choices=[1, 3], help="etcd sizes"
    )
    parser.add_argument("--faults", nargs="+", default=list(FAULTS), choices=FAULTS)
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="skip Pacemaker")
    parser.add_argument(
        "--pacemaker-tokens",
        type=int,
        nargs="+",
        default=[0, 1000],
        help="corosync token timeouts (ms) for the Pacemaker series; 0: corosync's default",
    )
    parser.add_argument(
        "--lease-ttl",
        type=int,
        default=DEFAULTS.lease_ttl,
        help=f"the node roles' lease, s ([services] lease_ttl; default {DEFAULTS.lease_ttl})",
    )
    parser.add_argument("--quick", action="store_true", help="3 runs of each")
    parser.add_argument("--output", default="failover", help="result file stem")
    args = parser.parse_args()
    if args.quick:
        args.runs = 3
    args.pacemaker_tokens = [t or None for t in args.pacemaker_tokens]
    args.renew_interval = DEFAULTS.renew_interval
    if os.geteuid() != 0:
        sys.exit("bench/failover.py needs root (lab namespaces, cgroups)")
    remove_stale_labs(LAB_STATE)
    load_at_start = os.getloadavg()[0]
    try:
        results = asyncio.run(run(args))
    except KeyboardInterrupt:
        sys.exit(130)
    write(results, args, load_at_start)


if __name__ == "__main__":
    main()
