"""The `servergroup` command: top-level options and the command groups."""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import click

from servergroup import __version__
from servergroup.cli.common import CliState, configure_logging, report_errors
from servergroup.common.errors import Interrupted

#: Every command: name -> (module under servergroup.cli, attribute). Modules are
#: imported only when their command runs (or `--help` lists them), so a command
#: never pays for another's imports (pyroute2, grpc, ...).
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("up", "up"),
    "down": ("up", "down"),
    "status": ("status", "status"),
    "group": ("servers", "group"),
    "server": ("servers", "server"),
    "app": ("app", "app"),
    "guest": ("guest", "guest"),
    "scale-agent": ("scale_agent", "scale_agent"),
    "host": ("host", "host"),
    "image": ("image", "image"),
    "demo": ("demo", "demo"),
    "election": ("election", "election"),
    "etcd": ("etcd", "etcd"),
    "lab": ("lab", "lab"),
    "scale": ("scale", "scale"),
    "service": ("service", "service"),
    "protect": ("replication", "protect"),
    "backup": ("replication", "backup"),
    "kv": ("replication", "kv"),
    "replication": ("replication", "replication"),
}


def _module_name(name: str) -> str:
    return f"servergroup.cli.{COMMANDS[name][0]}"


class Main(click.Group):
    """The root group: lazy commands; our errors become one sentence and an exit status."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        return report_errors(lambda: super(Main, self).main(*args, **kwargs))

    def invoke(self, ctx: click.Context) -> Any:
        # Ours, not click's "Aborted!" with status 1: one sentence, status 130.
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted() from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        # A command whose module is not part of this installation is not listed.
        return [n for n in COMMANDS if importlib.util.find_spec(_module_name(n)) is not None]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS or importlib.util.find_spec(_module_name(cmd_name)) is None:
            return None
        command = getattr(importlib.import_module(_module_name(cmd_name)), COMMANDS[cmd_name][1])
        assert isinstance(command, click.Command)
        return command


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="servergroup")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="SERVERGROUP_CONFIG",
    help="TOML config file [env SERVERGROUP_CONFIG; default /etc/servergroup/servergroup.toml].",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="SERVERGROUP_STATE_DIR",
    help="Where servergroup keeps its state [env SERVERGROUP_STATE_DIR].",
)
@click.option(
    "--endpoints",
    envvar="SERVERGROUP_ETCD_ENDPOINTS",
    metavar="URLS",
    help="Comma-separated etcd client URLs; none means the managed local etcd "
    "[env SERVERGROUP_ETCD_ENDPOINTS].",
)
@click.option(
    "--prefix",
    envvar="SERVERGROUP_PREFIX",
    help="Key prefix in etcd [env SERVERGROUP_PREFIX; default /servergroup/v1/].",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option(
    "--log-json/--log-text", default=None, help="Log format (default: JSON when not a terminal)."
)
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: Path | None,
    state_dir: Path | None,
    endpoints: str | None,
    prefix: str | None,
    verbose: int,
    log_json: bool | None,
) -> None:
    """servergroup: one control plane for a group of servers.

    Server groups of lab servers (network namespaces) and real VMs (QEMU) on
    hosts that share etcd: their lifecycle, group messaging between their
    members, vCPU scaling, multicast image distribution, an HA service
    manager (exactly-one services run by OCF agents, with failover and
    discovery) and Remus-style checkpoint replication of a Python service
    to a backup that takes over when the primary dies. With no etcd endpoint
    configured, servergroup runs its own local etcd.
    """
    configure_logging(verbose, log_json)
    ctx.obj = CliState(
        config_path=config_path, state_dir=state_dir, endpoints=endpoints, prefix=prefix
    )


def main() -> None:
    """Console-script entry point."""
    # gRPC's C core would print its own lines (a failed TLS handshake, for one) on
    # stderr; our errors already carry its details, in one sentence.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    cli(prog_name="servergroup")
