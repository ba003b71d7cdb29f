"""`servergroup image send|receive`: one image to many hosts, multicast with TCP repair."""

from __future__ import annotations

import gc
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from servergroup.cli.common import CliState, pass_state, run_async
from servergroup.common.errors import UsageError, sentence
from servergroup.multicast.config import (
    DEFAULT_PORT,
    DEFAULT_TIMEOUT,
    MAX_MTU,
    MIN_MTU,
    parse_ip,
    receive_config,
    send_config,
)
from servergroup.multicast.transport import FileSink, Sink, StreamSink, interface_mtu
from servergroup.transfers.where import recording_endpoints

if TYPE_CHECKING:
    from servergroup.coordination import Coordinator
    from servergroup.multicast.receiving import ReceiverReport
    from servergroup.multicast.sending import SenderReport

#: Exit statuses: 0 every expected client has the verified image (send) / this
#: receiver has it (receive); 1 the transfer failed; 2 bad input; 3 (send only)
#: the image went out but not every expected client finished.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_PARTIAL = 3

F = TypeVar("F", bound=Callable[..., Any])


def _common(func: F) -> F:
    func = click.option(
        "--json", "as_json", is_flag=True, help="Print a machine-readable report at the end."
    )(func)
    func = click.option(
        "--key-file",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="SERVERGROUP_IMAGE_KEY_FILE",
        help="Shared secret: every packet is authenticated with it; forged or foreign "
        "packets are dropped and counted [env SERVERGROUP_IMAGE_KEY_FILE].",
    )(func)
    func = click.option(
        "--record/--no-record",
        default=True,
        show_default=True,
        help="Record the transfer's progress in etcd (the configured cluster, or the local "
        "etcd if it runs; none is started) for the hosts' API and dashboard. An etcd that "
        "does not answer never stops or slows the transfer.",
    )(func)
    func = click.option(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        show_default=True,
        help="Seconds a silent peer may stall the transfer before it is given up.",
    )(func)
    return func


@click.group()
def image() -> None:
    """Send one image to many hosts at once: UDP multicast in rounds, repairs over TCP.

    The sender reads the image on standard input and waits for CLIENTS
    receivers; each receiver writes it to standard output or --output. Every
    receiver checks the BLAKE3 digest of the whole image at the end.
    """


@image.command()
@click.argument("local_ip")
@click.argument("clients", type=int)
@click.argument("port", type=int, default=DEFAULT_PORT, required=False)
@click.option("--group", help="Multicast group address [default 239.192.83.71].")
@click.option(
    "--mtu",
    type=int,
    help=f"Largest datagram incl. IP/UDP headers ({MIN_MTU}-{MAX_MTU}) [default: the MTU of "
    f"the interface with LOCAL_IP, at most {MAX_MTU}; the report says which was used].",
)
@click.option(
    "--rate",
    help="Cap in bits/s, such as 800m or 1g (default: adapt to the loss receivers report).",
)
@click.option("--buffer-packets", type=int, help="Packets per round [default: about 32 MiB].")
@click.option(
    "--wait",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait for the CLIENTS receivers to connect; then start with those there.",
)
@click.option(
    "--metrics",
    "metrics_at",
    metavar="HOST:PORT",
    help="Serve this process's Prometheus metrics at http://HOST:PORT/metrics while it runs "
    "(:PORT for every address; no token: counters only).",
)
@click.option(
    "--metrics-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="At the end, write the transfer's metrics to this file (atomically), for "
    "node_exporter's textfile collector.",
)
@_common
@pass_state
def send(
    state: CliState,
    local_ip: str,
    clients: int,
    port: int,
    group: str | None,
    mtu: int | None,
    rate: str | None,
    buffer_packets: int | None,
    wait: float,
    metrics_at: str | None,
    metrics_file: Path | None,
    timeout: float,
    record: bool,
    key_file: Path | None,
    as_json: bool,
) -> None:
    """Send standard input to CLIENTS receivers from the interface with LOCAL_IP.

    PORT (TCP for control and repairs, UDP for multicast) defaults to 18383.
    Exit status: 0 when every expected client verified the image, 3 when
    some did not (see the table), 1 when the transfer failed, 2 for bad input.
    """
    mtu_from = "--mtu"
    if mtu is None:
        interface, found = interface_mtu(parse_ip(local_ip, "LOCAL_IP"))
        mtu = max(MIN_MTU, min(found, MAX_MTU))
        mtu_from = f"{interface}'s MTU" + (f" {found}, at most {MAX_MTU}" if found != mtu else "")
    config = send_config(
        local_ip=local_ip,
        clients=clients,
        port=port,
        group=group,
        mtu=mtu,
        rate=rate,
        buffer_packets=buffer_packets,
        timeout=timeout,
        join_timeout=wait,
        key=_read_key(key_file),
    )
    if sys.stdin.isatty():
        raise UsageError("the image comes on standard input; redirect it from a file or a pipe.")
    # Here, not at the top: a receiver does without the sender's modules; and
    # prometheus_client (~25 ms of the sender's start) loads only when asked for.
    from servergroup.multicast.sending import ClientStatus

    counted = metrics_at is not None or metrics_file is not None
    if metrics_at is not None:
        from servergroup.common.exporter import serve_metrics

        logging.getLogger(__name__).info("metrics at %s", serve_metrics(metrics_at))
    store = _recording(state, record)
    _freeze_start_up()
    with _progress("sending") as progress:
        if store is None:  # nothing to record in: the records' modules are not loaded
            from servergroup.multicast import run_sender

            report = run_async(
                run_sender(config, sys.stdin.buffer, progress=progress, metrics=counted)
            )
        else:
            from servergroup.transfers import run_recorded_sender

            report = run_async(
                run_recorded_sender(config, sys.stdin.buffer, coordinator=store, progress=progress)
            )
    if metrics_file is not None:
        from servergroup.common.exporter import write_metrics_file

        try:
            write_metrics_file(str(metrics_file))
        except UsageError as exc:
            click.echo(f"servergroup: {sentence(str(exc))}", err=True)
    if as_json:
        click.echo(json.dumps({**sender_report_dict(report), "mtu": mtu, "mtu_from": mtu_from}))
    else:
        _print_table(report, f"MTU {mtu} ({mtu_from})")
    if report.ok:
        sys.exit(EXIT_OK)
    if any(row.status is ClientStatus.FINISHED for row in report.clients):
        sys.exit(EXIT_PARTIAL)
    click.echo(f"servergroup: {sentence(report.reason)}", err=True)
    sys.exit(EXIT_FAILED)


@image.command()
@click.argument("local_ip")
@click.argument("server_ip")
@click.argument("port", type=int, default=DEFAULT_PORT, required=False)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the image here (under a temporary name until it is whole and verified).",
)
@_common
@pass_state
def receive(
    state: CliState,
    local_ip: str,
    server_ip: str,
    port: int,
    output: Path | None,
    timeout: float,
    record: bool,
    key_file: Path | None,
    as_json: bool,
) -> None:
    """Receive an image from SERVER_IP on the interface with LOCAL_IP, to standard output.

    Exit status: 0 only when the image arrived whole and its BLAKE3 digest
    matched; 1 otherwise (nothing is left under --output then); 2 for bad input.
    """
    config = receive_config(
        local_ip=local_ip,
        server_ip=server_ip,
        port=port,
        timeout=timeout,
        key=_read_key(key_file),
    )
    sink: Sink
    if output is None:
        if sys.stdout.isatty():
            raise UsageError(
                "refusing to write an image to a terminal; redirect it or use --output."
            )
        sink = StreamSink(sys.stdout.buffer)
    else:
        if output.is_dir():
            raise UsageError(f"--output {output} is a directory; give a file name.")
        sink = FileSink(output)
    store = _recording(state, record)
    try:
        _freeze_start_up()
        with _progress("receiving") as progress:
            if store is None:  # nothing to record in: the records' modules are not loaded
                from servergroup.multicast import run_receiver

                report = run_async(run_receiver(config, sink, progress=progress))
            else:
                from servergroup.transfers import run_recorded_receiver

                report = run_async(
                    run_recorded_receiver(config, sink, coordinator=store, progress=progress)
                )
    except BaseException:
        sink.discard()
        raise
    if as_json:
        text = json.dumps(receiver_report_dict(report))
        click.echo(text, err=output is None)
    if not report.ok:
        click.echo(f"servergroup: the image did not arrive: {sentence(report.reason)}", err=True)
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_OK)


# --- helpers ----------------------------------------------------------------------------


def _recording(state: CliState, record: bool) -> Callable[[], Coordinator] | None:
    """How to reach the etcd that records the transfer, or None (not recorded)."""
    if not record:
        return None
    config = state.config()
    endpoints = recording_endpoints(config)
    if not endpoints:
        return None
    from servergroup.coordination import connect

    return lambda: connect(config, endpoints=endpoints)


def _read_key(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        key = path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise UsageError(f"cannot read the key file {path}: {exc.strerror or exc}.") from None
    if not key:
        raise UsageError(f"the key file {path} is empty; put a shared secret in it.")
    return key


@contextmanager
def _progress(what: str) -> Iterator[Callable[[int, int | None], None] | None]:
    """A progress bar on stderr when it is a terminal (else nothing)."""
    if not sys.stderr.isatty():
        yield None
        return
    # Imported here: rich costs every receiver ~0.05 s of CPU at start, and only
    # a terminal needs it.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _freeze_start_up() -> None:
    """Keep what start-up made (modules, classes) out of the garbage collector's walks.

    It lives as long as this process anyway; a transfer makes many young
    objects, and every collection would walk all of it again (~3 % of the
    sender's CPU). For this command's process only: library callers keep
    their collector as it is.
    """
    gc.freeze()


def sender_report_dict(report: SenderReport) -> dict[str, object]:
    return {
        "ok": report.ok,
        "reason": report.reason,
        "bytes": report.total_bytes,
        "blake3": report.digest.hex(),
        "buffers": report.buffers,
        "multicast_packets": report.multicast_packets,
        "final_rate_bps": round(report.final_rate),
        "clients": [
            {
                "name": row.name,
                "address": row.address,
                "status": row.status.value,
                "reason": row.reason,
                "tcp_only": row.tcp_only,
                "loss": round(row.loss, 4),
                "tcp_packets": row.tcp_packets,
                "buffers": row.buffers,
                "counters": {
                    "multicast": row.counters.multicast,
                    "repaired": row.counters.repaired,
                    "duplicate": row.counters.duplicate,
                    "corrupt": row.counters.corrupt,
                    "foreign": row.counters.foreign,
                    "forged": row.counters.forged,
                    "stale": row.counters.stale,
                },
            }
            for row in report.clients
        ],
    }


def receiver_report_dict(report: ReceiverReport) -> dict[str, object]:
    c = report.counters
    return {
        "ok": report.ok,
        "reason": report.reason,
        "bytes": report.total_bytes,
        "buffers": report.buffers,
        "tcp_only": report.tcp_only,
        "counters": {
            "multicast": c.multicast,
            "repaired": c.repaired,
            "duplicate": c.duplicate,
            "corrupt": c.corrupt,
            "foreign": c.foreign,
            "forged": c.forged,
            "stale": c.stale,
        },
    }


def _print_table(report: SenderReport, mtu: str) -> None:
    from rich.console import Console
    from rich.table import Table

    # Not on a terminal rich assumes 80 columns and cuts addresses and reasons short; a
    # pipe or a log has room for the whole row.
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    table = Table(title=f"{report.total_bytes} bytes, blake3 {report.digest.hex()[:16]}…, {mtu}")
    for column in ("client", "address", "status", "via", "loss", "repaired", "bad pkts", "why"):
        table.add_column(column)
    for row in report.clients:
        c = row.counters
        table.add_row(
            row.name or "-",
            row.address or "-",
            row.status.value,
            "TCP only" if row.tcp_only else "multicast",
            f"{row.loss:.1%}",
            str(c.repaired),
            f"{c.corrupt}/{c.foreign}/{c.forged}",
            row.reason,
        )
    console.print(table)
    if not report.ok:
        console.print(f"[bold]not every client finished[/bold]: {report.reason}")
