"""`servergroup protect | backup | kv | replication status`: checkpoint replication (seed 004).

Thin: the daemons are `replication.primary` and `replication.backup`; this
module turns options into their `...Options`, connects to etcd for the
pair's key, and runs them until interrupted or stopped.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from typing import TYPE_CHECKING, Any

import click

from servergroup.cli import complete
from servergroup.cli.common import CliState, fail, pass_state, print_table, run_async, run_daemon
from servergroup.common.errors import RemoteError, UsageError
from servergroup.common.exporter import serve_metrics
from servergroup.coordination.connect import connect
from servergroup.replication.front import parse_address
from servergroup.replication.hooks import FailurePoint, parse_failure_point
from servergroup.replication.primary_machine import OnBackupLoss
from servergroup.replication.service import EXAMPLES, load_service

if TYPE_CHECKING:
    from servergroup.replication.status import PairStatus

SERVICE_HELP = (
    "The service to protect: MODULE:CLASS (a class whose constructor takes a ServiceSpace),"
    f" or one of the examples: {', '.join(EXAMPLES)}."
)


def _address(text: str, what: str) -> tuple[str, int]:
    return parse_address(text, what=what)


def _pair_name(pair: str | None, service: str) -> str:
    if pair:
        return pair
    full, _ = load_service(service)
    return full.rpartition(":")[2].lower() if full not in EXAMPLES.values() else service


@click.command()
@click.option("--service", required=True, metavar="MODULE:CLASS|kv|counter", help=SERVICE_HELP)
@click.option("--listen", required=True, metavar="HOST:PORT", help="Where clients connect.")
@click.option(
    "--backup",
    "backup_address",
    metavar="HOST:PORT",
    help="The backup's --listen address (required unless --no-backup).",
)
@click.option(
    "--interval",
    type=click.IntRange(1, 60_000),
    default=200,
    show_default=True,
    metavar="MS",
    help="Checkpoint interval in milliseconds (an epoch's length).",
)
@click.option(
    "--no-net-buffer",
    is_flag=True,
    help="Benchmark option: send replies at once instead of holding them until the backup"
    " has their epoch (unsafe: a client may see output the backup never had).",
)
@click.option(
    "--no-backup",
    is_flag=True,
    help="Benchmark option: checkpoint every interval but send it nowhere; replies leave at"
    " each epoch's end. No etcd needed.",
)
@click.option(
    "--fail-at",
    type=click.Choice([p.value for p in FailurePoint]),
    help="Kill this process (SIGKILL) at this point of the first epoch that reaches it:"
    " s/s2 before/after capture (postsuspend), r/r2 before/after preresume, c/c2"
    " before/after commit.",
)
@click.option(
    "--on-backup-loss",
    type=click.Choice([p.value for p in OnBackupLoss]),
    default=OnBackupLoss.CONTINUE.value,
    show_default=True,
    help="When the backup falls silent: take the pair's key and continue UNPROTECTED, or stop.",
)
@click.option("--pair", help="The pair's name in etcd [default: the service's short name].")
@click.option("--node", help="This node's name in the pair's key [default: HOST/LISTEN].")
@click.option(
    "--metrics",
    "metrics_at",
    metavar="HOST:PORT",
    help="Serve the checkpoint metrics (epochs, sizes, pauses, lag) for Prometheus at "
    "http://HOST:PORT/metrics (:PORT for every address; no token: counters only).",
)
@pass_state
def protect(
    state: CliState,
    service: str,
    listen: str,
    backup_address: str | None,
    interval: int,
    no_net_buffer: bool,
    no_backup: bool,
    fail_at: str | None,
    on_backup_loss: str,
    pair: str | None,
    node: str | None,
    metrics_at: str | None,
) -> None:
    """Serve a service as the protected primary, checkpointed to a backup every interval.

    Every interval the service is paused, its changed memory pages (and disk
    writes) captured and resumed, the checkpoint streamed to the backup;
    client replies of an epoch are held until the backup acknowledges it.
    Clients send one request per line to --listen. While it runs, a line on
    stdin naming a failure point (s s2 r r2 c c2) arms it, as --fail-at does
    (stdin read when it is a pipe, or the terminal with the command in the
    foreground).

    \b
    Example (two terminals, etcd from the top-level options):
      servergroup backup --service kv --listen 127.0.0.1:7001 --serve 127.0.0.1:7100
      servergroup protect --service kv --listen 127.0.0.1:7000 --backup 127.0.0.1:7001
      servergroup kv --server 127.0.0.1:7000 put colour blue
    """
    from servergroup.replication.primary import PrimaryDaemon, PrimaryOptions, default_node

    listen_at = _address(listen, "--listen")
    if no_backup == (backup_address is not None):
        raise UsageError("give exactly one of --backup ADDR and --no-backup.")
    backup_at = None if backup_address is None else _address(backup_address, "--backup")
    name = _pair_name(pair, service)
    options = PrimaryOptions(
        service=service,
        listen=listen_at,
        backup=backup_at,
        pair=name,
        node=node or default_node(listen_at),
        interval=interval / 1000,
        net_buffer=not no_net_buffer,
        fail_at=None if fail_at is None else parse_failure_point(fail_at),
        on_backup_loss=OnBackupLoss(on_backup_loss),
    )
    if metrics_at is not None:
        click.echo(f"metrics at {serve_metrics(metrics_at)}", err=True)

    async def main() -> None:
        if no_backup:
            await PrimaryDaemon(options, None).run()
            return
        config = state.config()
        async with connect(config) as coordinator:
            await PrimaryDaemon(options, coordinator, config.coordination).run()

    run_daemon(main())


@click.command()
@click.option("--service", required=True, metavar="MODULE:CLASS|kv|counter", help=SERVICE_HELP)
@click.option("--listen", required=True, metavar="HOST:PORT", help="Where the primary connects.")
@click.option(
    "--serve",
    required=True,
    metavar="HOST:PORT",
    help="Where clients connect once this backup has taken over.",
)
@click.option(
    "--primary-timeout",
    type=click.FloatRange(0.3, 60),
    default=1.0,
    show_default=True,
    help="Seconds of heartbeat silence after which the backup takes over.",
)
@click.option(
    "--next-backup",
    metavar="HOST:PORT",
    help="After a takeover, look for a backup there first (a new `servergroup backup --listen"
    " HOST:PORT`); any backup of the pair started later is found without it.",
)
@click.option("--pair", help="The pair's name in etcd [default: the service's short name].")
@click.option("--node", help="This node's name in the pair's key [default: HOST/SERVE].")
@pass_state
def backup(
    state: CliState,
    service: str,
    listen: str,
    serve: str,
    primary_timeout: float,
    next_backup: str | None,
    pair: str | None,
    node: str | None,
) -> None:
    """Receive a primary's checkpoints; take over and serve when it dies.

    Applies only complete, verified checkpoints. When the primary's
    heartbeats (on their own connection) stop for --primary-timeout, it
    takes the pair's key in etcd at a higher generation (the fencing token),
    and serves the service from the last complete checkpoint on --serve,
    unprotected until a backup answers: --next-backup, or any backup of the
    pair started later (a full copy, then increments).
    """
    from servergroup.replication.backup import BackupDaemon, BackupOptions
    from servergroup.replication.primary import default_node

    listen_at = _address(listen, "--listen")
    serve_at = _address(serve, "--serve")
    options = BackupOptions(
        service=service,
        listen=listen_at,
        serve=serve_at,
        pair=_pair_name(pair, service),
        node=node or default_node(serve_at),
        primary_timeout=primary_timeout,
        next_backup=None if next_backup is None else _address(next_backup, "--next-backup"),
    )
    config = state.config()

    async def main() -> None:
        async with connect(config) as coordinator:
            await BackupDaemon(options, coordinator, config.coordination).run()

    run_daemon(main())


@click.group()
@click.option(
    # Not `required=True`: click would then refuse `kv put --help` for want of it.
    "--server",
    metavar="HOST:PORT",
    help="The kv service's client address (required).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 3600),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the reply.",
)
@click.pass_context
def kv(ctx: click.Context, server: str | None, timeout: float) -> None:
    """A client of the kv example service: put, get, delete, scan.

    Exits non-zero when no reply came (the server is unreachable, closed
    the connection, or was silent for --timeout): a put that printed ok was
    acknowledged, so its epoch is on the backup.
    """
    if server is not None:
        parse_address(server, what="--server")
    ctx.meta["kv"] = (server, timeout)


def _ask_here(request: dict[str, Any]) -> dict[str, Any]:
    server, timeout = click.get_current_context().meta["kv"]
    if server is None:
        raise UsageError(
            "give the service's client address: `servergroup kv --server HOST:PORT ...`."
        )
    return _ask(server, request, timeout)


def _not_kv() -> RemoteError:
    server, _ = click.get_current_context().meta["kv"]
    return RemoteError(f"{server} did not answer as the kv service: is --server its address?")


def _ask(server: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    host, port = parse_address(server, what="--server")
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        raise RemoteError(f"{server} sent no reply within {timeout:g} s") from None
    except OSError as exc:
        raise RemoteError(f"cannot reach {server}: {exc.strerror or exc}") from None
    if not data.endswith(b"\n"):
        raise RemoteError(f"{server} closed the connection without a reply")
    try:
        reply = json.loads(data)
    except ValueError:
        raise RemoteError(f"{server} sent a reply that is not JSON") from None
    if not isinstance(reply, dict):
        raise RemoteError(f"{server} sent a reply that is not an object")
    if not reply.get("ok"):
        raise UsageError(f"the service refused: {reply.get('error', 'no reason given')}")
    return reply


@kv.command("put")
@click.argument("key")
@click.argument("value")
def kv_put(key: str, value: str) -> None:
    """Set KEY to VALUE; prints ok once the reply came."""
    _ask_here({"op": "put", "key": key, "value": value})
    click.echo("ok")


@kv.command("get")
@click.argument("key")
def kv_get(key: str) -> None:
    """Print KEY's value; exit status 1 when it is absent."""
    reply = _ask_here({"op": "get", "key": key})
    if not isinstance(reply.get("found"), bool):
        raise _not_kv()
    if not reply["found"]:
        fail(f"{key!r} is not in the store.")
    click.echo(reply["value"])


@kv.command("delete")
@click.argument("key")
def kv_delete(key: str) -> None:
    """Delete KEY (printing whether it was there)."""
    reply = _ask_here({"op": "delete", "key": key})
    click.echo("deleted" if reply.get("deleted") else "absent")


@kv.command("scan")
def kv_scan() -> None:
    """Print every key, sorted, one per line."""
    keys = _ask_here({"op": "scan"}).get("keys")
    if not isinstance(keys, list):
        raise _not_kv()
    for key in keys:
        click.echo(key)


@click.group()
def replication() -> None:
    """Checkpoint replication: the state of protected pairs (see also protect, backup)."""


@replication.command()
@click.argument("name", required=False, shell_complete=complete.pairs)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def status(state: CliState, name: str | None, as_json: bool) -> None:
    """Show pair NAME: generation, active, backup, and each live node's epoch, lag, sizes.

    Without NAME, list every pair: generation, active, backup, running nodes.
    """
    from servergroup.replication.status import read_pair, read_pairs

    if name is None:

        async def read_all() -> list[PairStatus]:
            async with connect(state.config(), start_local=False) as coordinator:
                return await read_pairs(coordinator)

        _list_pairs(run_async(read_all()), as_json)
        return

    async def read() -> PairStatus | None:
        async with connect(state.config(), start_local=False) as coordinator:
            return await read_pair(coordinator, name)

    pair = run_async(read())
    if pair is None:
        fail(f"no replication pair named {name!r}.")
        return
    record = pair.record
    if as_json:
        body = {
            "pair": name,
            "generation": record.generation,
            "active": record.active,
            "backup": record.backup,
            "nodes": [dataclasses.asdict(node) for node in pair.nodes],
        }
        click.echo(json.dumps(body, sort_keys=True))
        return
    click.echo(
        f"pair {name}: generation {record.generation}, active {record.active},"
        f" backup {record.backup or 'none'}"
    )

    def text(value: object) -> str:
        return "" if value is None else str(value)

    rows = []
    for node in pair.nodes:
        is_primary = node.role.startswith("primary")
        rows.append(
            [
                node.node,
                node.role or "?",
                node.state or "?",
                text(node.generation),
                text(node.committed if is_primary else node.applied),
                text(node.lag) if is_primary else "",
                text(node.last_checkpoint_bytes),
                text(node.last_pause_ms) if is_primary else "",
            ]
        )
    if rows:
        print_table(
            ["NODE", "ROLE", "STATE", "GEN", "EPOCH", "LAG", "LAST CKPT B", "PAUSE MS"], rows
        )
    else:
        click.echo("no node of this pair is running")


def _list_pairs(pairs: list[PairStatus], as_json: bool) -> None:
    if as_json:
        body = [
            {
                "pair": p.name,
                "generation": p.record.generation,
                "active": p.record.active,
                "backup": p.record.backup,
                "nodes": [node.node for node in p.nodes],
            }
            for p in pairs
        ]
        click.echo(json.dumps({"pairs": body}, sort_keys=True))
        return
    if not pairs:
        click.echo("no replication pairs")
        return
    print_table(
        ["PAIR", "GEN", "ACTIVE", "BACKUP", "NODES RUNNING"],
        [
            [
                p.name,
                str(p.record.generation),
                p.record.active,
                p.record.backup or "none",
                ", ".join(node.node for node in p.nodes) or "none",
            ]
            for p in pairs
        ],
    )


@replication.command()
@click.argument("name", shell_complete=complete.pairs)
@pass_state
def remove(state: CliState, name: str) -> None:
    """Forget pair NAME in etcd, once its nodes are stopped for good.

    The pair's key remembers which node is active, so that an old primary
    that comes back cannot act; removing it lets a new pair start at
    generation 1. While a node of the pair still runs it is refused (the
    node would keep its generation and a new pair would serve beside it).
    """
    from servergroup.replication.pair import PairKey
    from servergroup.replication.status import read_pair

    async def work() -> tuple[bool, list[str]]:
        async with connect(state.config()) as coordinator:
            found = await read_pair(coordinator, name)
            if found is not None and found.nodes:
                # A node that runs on would keep its generation, and a new pair
                # would start below it at 1: two primaries would both serve.
                return True, [node.node for node in found.nodes]
            return await PairKey(coordinator, name).remove(), []

    existed, running = run_async(work())
    if running:
        fail(
            f"pair {name!r} still has running nodes ({', '.join(running)}): stop them first"
            " (a killed node drops out within seconds), then remove it."
        )
    if not existed:
        fail(f"no replication pair named {name!r}.")
    click.echo(f"pair {name} removed")
