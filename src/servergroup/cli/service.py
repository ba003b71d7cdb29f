"""`servergroup service ...`: the HA service manager's definitions, state, discovery (seed 002)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from servergroup.cli import complete
from servergroup.cli.common import CliState, pass_state, print_table, run_async
from servergroup.common.errors import ConfigError, Interrupted
from servergroup.coordination import Coordinator
from servergroup.coordination.connect import connect
from servergroup.services.client import (
    Checked,
    MasterEvent,
    MasterGone,
    MasterMoved,
    ParsedFile,
    add_definitions,
    check_agents,
    clear,
    enabled_sentence,
    get_status,
    parse_file,
    read_services,
    relocate,
    remove,
    set_enabled,
    unchecked,
    watch_master,
    where,
)
from servergroup.services.model import LeaseTimings, check_lease_fits
from servergroup.services.ocf import DEFAULT_OCF_ROOT, KILL_GRACE
from servergroup.services.status import (
    ServiceState,
    ServiceStatus,
    master_json,
    status_json,
    summaries,
    summary_json,
)
from servergroup.services.store import REFUSED, MasterRecord

T = TypeVar("T")


def _run(
    state: CliState, work: Callable[[Coordinator], Awaitable[T]], *, reads_only: bool = False
) -> T:
    """Connect to the store, run `work`, close (`reads_only`: as `cli.servers._run`)."""
    coordinator = connect(state.config(), start_local=not reads_only)

    async def main() -> T:
        async with coordinator:
            return await work(coordinator)

    return run_async(main())


def _read_file(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read definitions file {path}: {exc}.") from None


def _check(
    text: str, *, skip_agents: bool, ocf_root: Path, timings: LeaseTimings
) -> tuple[ParsedFile, tuple[Checked, ...]]:
    """Parse, resolve against the agents here (unless skipped), and check each stop fits
    the node roles' lease (`[services] lease_ttl`), as every node will."""
    parsed = parse_file(text)
    if skip_agents:
        return parsed, unchecked(parsed.definitions)
    checked = run_async(check_agents(parsed.definitions, ocf_root=ocf_root))
    for item in checked:
        if item.resolved is not None:
            check_lease_fits(
                item.resolved,
                timings,
                kill_grace=KILL_GRACE,
                agent_default=item.service.stop_timeout is None,
            )
    return parsed, checked


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(at))


def _where_text(name: str, master: MasterRecord | MasterMoved | None) -> str:
    if master is None:
        return f"{name}: no master"
    address = f" at {master.address}" if master.address else ""
    return (
        f"{name}: master on {master.node}{address} (instance {master.index}, token {master.token})"
    )


def _event_json(event: MasterEvent) -> dict[str, Any]:
    if isinstance(event, MasterMoved):
        return {
            "service": event.service,
            "event": "moved",
            "node": event.node,
            "index": event.index,
            "token": event.token,
            "address": event.address,
            "revision": event.revision,
        }
    if isinstance(event, MasterGone):
        return {"service": event.service, "event": "gone", "revision": event.revision}
    return {
        "service": event.service,
        "event": "unreadable",
        "reason": event.reason,
        "revision": event.revision,
    }


def _event_text(event: MasterEvent) -> str:
    if isinstance(event, MasterMoved):
        return _where_text(event.service, event)
    if isinstance(event, MasterGone):
        return _where_text(event.service, None)
    return f"{event.service}: master record unreadable: {event.reason}"


skip_agents_option = click.option(
    "--skip-agents",
    is_flag=True,
    help="Do not check the services against their agents' meta-data on this machine "
    "(the node roles still do when they load them).",
)
ocf_root_option = click.option(
    "--ocf-root",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    envvar="OCF_ROOT",
    help="Where the OCF agents are installed [env OCF_ROOT; default: the node roles' "
    f"[services] ocf_root, {DEFAULT_OCF_ROOT} unless configured].",
)


def _ocf_root(state: CliState, given: Path | None) -> Path:
    """`--ocf-root`, else the root the node roles of this configuration use."""
    return given if given is not None else Path(state.config().services.ocf_root)


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group()
def service() -> None:
    """The HA service manager: exactly-one services run by OCF agents, with failover.

    A service file ([[service]] and [[domain]] tables, see
    examples/services/) says which OCF agent runs the service, how many
    instances (one master with slaves if promotable), where (a failover
    domain) and how to recover. The node roles of `servergroup host` keep
    it running; these commands define it, look at it, steer it and say
    where its master is.

    \b
    Examples:
      servergroup service validate examples/services/dummy.toml
      servergroup service add examples/services/dummy.toml
      servergroup service list
      servergroup service status dummy
      servergroup service where dummy --watch
      servergroup service relocate dummy --to h2
      servergroup service disable dummy
    """


@service.command("validate")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@skip_agents_option
@ocf_root_option
@pass_state
def validate_cmd(state: CliState, file: Path, skip_agents: bool, ocf_root: Path | None) -> None:
    """Check the definitions in FILE without the store.

    Checks every table and field, then each service against its agent's
    meta-data here: the agent is installed, takes the parameters given,
    allows that many instances, can promote if promotable, and its demote
    and stop fit in the node roles' lease (`[services] lease_ttl`). Prints each
    service as it would run (the agent's default timeouts and monitors
    filled in); a bad file gets one sentence naming the table and field.

    Example: servergroup service validate examples/services/dummy.toml
    """
    timings = state.config().services_coordination
    parsed, checked = _check(
        _read_file(file),
        skip_agents=skip_agents,
        ocf_root=_ocf_root(state, ocf_root),
        timings=timings,
    )
    for item in checked:
        s = item.resolved or item.service
        monitors = ", ".join(f"depth {m.depth} every {m.interval:g}s" for m in s.monitors)
        timeouts = (
            f"start {s.start_timeout:g}s, stop {s.stop_timeout:g}s"
            if s.start_timeout is not None and s.stop_timeout is not None
            else "agent's timeouts"
        )
        kind = "promotable, " if s.promotable else ""
        click.echo(
            f"service {s.name}: {s.agent}, {kind}{s.instances} instance(s), "
            f"domain {s.domain or '-'}, recovery {s.recovery.value}; {timeouts}; "
            f"monitors {monitors or 'from the agent'}"
        )
    for d in parsed.definitions.domains:
        where = (
            f"hosts of server group {d.server_group}"
            if d.server_group
            else " ".join(m.node for m in d.members)
        )
        flags = [f for f in ("ordered", "restricted", "nofailback") if getattr(d, f)]
        click.echo(f"domain {d.name}: {where}" + (f" ({', '.join(flags)})" if flags else ""))
    for name in parsed.outside:
        click.echo(f"domain {name}: not in this file; `service add` needs it stored already")
    click.echo(f"{file}: valid" + (" (agents not checked)" if skip_agents else ""))


@service.command("add")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@skip_agents_option
@ocf_root_option
@pass_state
def add_cmd(state: CliState, file: Path, skip_agents: bool, ocf_root: Path | None) -> None:
    """Load the services and domains of FILE, or update them, all at once.

    The file is checked as `validate` does, and its services may name a
    domain of the file or one already stored. Changed definitions reach
    the node roles at once: a lowered `instances` stops the surplus, a
    parameter change reloads or restarts.

    Example: servergroup service add examples/services/dummy.toml
    """
    text = _read_file(file)
    timings = state.config().services_coordination
    _check(text, skip_agents=skip_agents, ocf_root=_ocf_root(state, ocf_root), timings=timings)
    added = _run(state, lambda c: add_definitions(c, text))
    parts = [f"service {n} {what}" for n, what in added.services.items()]
    parts += [f"domain {n} {what}" for n, what in added.domains.items()]
    click.echo("; ".join(parts) or f"{file} defines nothing")


@service.command("list")
@json_option
@pass_state
def list_cmd(state: CliState, as_json: bool) -> None:
    """List the services: state, instances running, nodes, master and its address.

    A record in the store that does not decode is named on stderr (with
    --json, in "errors") and hides nothing else.
    """
    listing = _run(state, read_services, reads_only=True)
    found = summaries(listing)
    if as_json:
        click.echo(
            json.dumps(
                {"services": [summary_json(s) for s in found], "errors": list(listing.errors)}
            )
        )
        return
    for error in listing.errors:
        click.echo(f"servergroup: warning: {error}", err=True)
    if not found:
        click.echo("no services")
        return
    rows = [
        [
            s.name,
            s.state.value,
            s.agent or "-",
            f"{s.running}/{s.wanted}",
            ",".join(s.nodes) or "-",
            s.master.node if s.master else "-",
            (s.master.address or "-") if s.master else "-",
        ]
        for s in found
    ]
    print_table(["NAME", "STATE", "AGENT", "RUNNING", "NODES", "MASTER", "ADDRESS"], rows)


def _print_status(status: ServiceStatus) -> None:
    s = status.service
    line = f"service {s.name}: {status.state.value}"
    if status.state is ServiceState.REFUSED:
        line += (
            f": {status.reason.removeprefix(REFUSED)} (the node roles run nothing of it until "
            "`servergroup service add` gives a definition that fits)"
        )
    elif status.reason and (status.disabled or status.fatal):
        line += f" ({status.reason})"
    click.echo(line)
    kind = "promotable, " if s.promotable else ""
    click.echo(
        f"  agent {s.agent}, {kind}{s.instances} instance(s), domain {s.domain or '-'}, "
        f"recovery {s.recovery.value} (max_restarts {s.max_restarts} "
        f"in {s.restart_expire_time:g}s)"
    )
    click.echo(f"  master: {_where_text(s.name, status.master).split(': ', 1)[1]}")
    for i in status.instances:
        if i.node is None:
            text = "not running"
        else:
            flags = [f for f in ("master", "failed", "busy") if getattr(i, f)]
            if i.busy and i.action:
                flags[-1] = f"busy: {i.action}"
            text = f"on {i.node}, token {i.token}, since {_when(i.started_at)}"
            text += f", address {i.address}" if i.address else ""
            text += f" [{', '.join(flags)}]" if flags else ""
        click.echo(f"  instance {i.index}: {text}")
        for m in i.monitors:
            result = "ok" if m.ok else f"failed (code {m.code}): {m.reason or '-'}"
            click.echo(f"    monitor depth {m.depth} at {_when(m.at)}: {result}")
        if i.relocation is not None:
            r = i.relocation
            what = "move of the master" if r.master else "relocation"
            line = f"    {what} pending: from {r.from_node} to {r.to_node or 'anywhere allowed'}"
            click.echo(line + (f"; waiting: {r.waiting}" if r.waiting else ""))
        if i.block is not None:
            click.echo(
                f"    FAILED-STOP on {i.block.node} (token {i.block.token}): {i.block.reason}; "
                f"it may still run there and is started nowhere until you make sure it is "
                f"stopped (fence {i.block.node}) and run `servergroup service clear {s.name}`"
            )
    for node, failure in status.failures.items():
        click.echo(
            f"  failures on {node}: {len(failure.times)}, last at "
            f"{_when(failure.times[-1] if failure.times else None)}: {failure.reason or '-'}"
        )
    for node, ban in status.bans.items():
        click.echo(f"  banned from {node} since {_when(ban.at)}: {ban.reason}")
    if status.history:
        click.echo("  history:")
        for e in status.history[-10:]:
            click.echo(
                f"    {_when(e.at)} {e.node} instance {e.index} token {e.token}: "
                f"{e.action} {e.result}"
            )
    for error in status.errors:
        click.echo(f"servergroup: warning: {error}", err=True)


@service.command("status")
@click.argument("name", shell_complete=complete.services)
@json_option
@pass_state
def status_cmd(state: CliState, name: str, as_json: bool) -> None:
    """Show service NAME: its owners and tokens, monitors, failures, bans, blocks, history.

    Example: servergroup service status dummy --json
    """
    status = _run(state, lambda c: get_status(c, name), reads_only=True)
    if as_json:
        click.echo(json.dumps(status_json(status)))
    else:
        _print_status(status)


@service.command("enable")
@click.argument("name", shell_complete=complete.services)
@pass_state
def enable_cmd(state: CliState, name: str) -> None:
    """Let the node roles run service NAME (overrides the definition's `enabled`)."""
    changed = _run(state, lambda c: set_enabled(c, name, True))
    click.echo(enabled_sentence(name, True, changed))


@service.command("disable")
@click.argument("name", shell_complete=complete.services)
@pass_state
def disable_cmd(state: CliState, name: str) -> None:
    """Stop service NAME everywhere and keep it stopped until `enable`."""
    changed = _run(state, lambda c: set_enabled(c, name, False))
    click.echo(enabled_sentence(name, False, changed))


@service.command("relocate")
@click.argument("name", shell_complete=complete.services)
@click.option(
    "--to",
    "to",
    metavar="NODE",
    shell_complete=complete.hosts,
    help="A live node to move it to [default: the best other node].",
)
@click.option(
    "--instance",
    "index",
    type=click.IntRange(min=0),
    help="Which instance [default: the master of a promotable service, else instance 0].",
)
@pass_state
def relocate_cmd(state: CliState, name: str, to: str | None, index: int | None) -> None:
    """Move a running instance of service NAME off its node.

    An instance moves to a node that runs no copy of the service: its
    node stops it, the target starts it. For a promotable service the
    master moves (as `pcs resource move` does): when the target runs a
    copy, the master is demoted where it is (it stays there as a slave)
    and the target's copy is promoted; when the target runs none, the
    master's instance is stopped, started there and promoted there. Until
    it is done `service status` shows it pending, and why it waits if it
    cannot go on (the target down, banned, its copy failed).

    \b
    Examples:
      servergroup service relocate dummy --to h2
      servergroup service relocate csnap --to h2    # h2's slave becomes the master
    """
    done = _run(state, lambda c: relocate(c, name, to=to, index=index))
    click.echo(done.describe())


@service.command("clear")
@click.argument("name", shell_complete=complete.services)
@pass_state
def clear_cmd(state: CliState, name: str) -> None:
    """Forget service NAME's failures, bans, blocks and fatal error.

    A block (a failed-stop instance) means a stop failed and the instance
    may still run on its old node: clear it only once that node is fenced
    (powered off, or the resource checked by hand). A refused definition
    stays refused: add one that fits.
    """
    done = _run(state, lambda c: clear(c, name))
    click.echo(done.describe(name))


@service.command("remove")
@click.argument("name", shell_complete=complete.services)
@pass_state
def remove_cmd(state: CliState, name: str) -> None:
    """Remove service NAME: its definition and records; the node roles stop its instances."""
    _run(state, lambda c: remove(c, name))
    click.echo(f"service {name} removed")


@service.command("where")
@click.argument("name", shell_complete=complete.services)
@click.option("--watch", is_flag=True, help="Print one line per change until Ctrl-C.")
@json_option
@pass_state
def where_cmd(state: CliState, name: str, watch: bool, as_json: bool) -> None:
    """Print where service NAME's master is: node, fencing token and address.

    A plain service's master is its instance. With --watch, print how
    things stand, then one line each time the master moves, its address
    changes or it goes, until Ctrl-C (exit status 0); the watch rides out
    reconnects and store compactions without losing or repeating a change.

    \b
    Examples:
      servergroup service where dummy
      servergroup service where csnap --watch --json
    """
    if not watch:
        master = _run(state, lambda c: where(c, name), reads_only=True)
        if as_json:
            click.echo(json.dumps({"service": name, "master": master_json(master)}))
        else:
            click.echo(_where_text(name, master))
        return

    async def follow(coordinator: Coordinator) -> None:
        await where(coordinator, name)  # an unknown service is an error, not a silent wait
        async for event in watch_master(coordinator, name):
            click.echo(json.dumps(_event_json(event)) if as_json else _event_text(event))

    try:
        _run(state, follow, reads_only=True)
    except Interrupted:
        return  # Ctrl-C is how a watch ends


__all__ = ["service"]
