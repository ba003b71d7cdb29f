"""The Pacemaker peer of bench/failover.py: Pacemaker + corosync on three lab hosts.

Each node is `corosync -f` and `pacemakerd -f` inside a lab host's network
namespace and a mount namespace of its own, where the paths the two keep
per machine are bind mounts of the node's own directories (`/run`, with
`/run/netns` mounted back so agents can tell their host; `/dev/shm`, a
fresh tmpfs, for libqb's IPC; `/var/lib/pacemaker`, `/var/lib/corosync`,
`/var/log/*`, `/etc/corosync`), and `/usr/lib/ocf/resource.d` holds the
system's providers plus `sgtest` (tests/fixtures/ocf), so that Pacemaker
runs the same journaling agent as servergroup does. Corosync uses knet on
the lab bridge with the configured `token` (ms); fencing is off (nothing to
fence in a lab) and `resource-stickiness` is 100 so that a node coming back
takes nothing back. Debian's `pacemaker` and `corosync` packages are needed
(`scripts/install-system-deps --bench`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from pathlib import Path

from servergroup.lab import Lab, LabHost

#: One node: argv[1] its directory, argv[2] the sgtest provider directory.
NODE_SCRIPT = r"""#!/bin/sh
set -e
dir="$1"; sgtest="$2"
mount --make-rprivate /
for d in run lib-pacemaker/cib lib-pacemaker/pengine lib-pacemaker/blackbox \
         lib-pacemaker/cores lib-corosync log-pacemaker log-corosync orig-rd rd netns; do
    mkdir -p "$dir/$d"
done
chown -R hacluster:haclient "$dir/lib-pacemaker" "$dir/log-pacemaker"
chmod 750 "$dir"/lib-pacemaker/*
mount --rbind /run/netns "$dir/netns"
mount --bind "$dir/run" /run
mkdir -p /run/netns /run/crm /run/resource-agents
mount --rbind "$dir/netns" /run/netns
mount -t tmpfs tmpfs /dev/shm
mount --bind "$dir/lib-pacemaker" /var/lib/pacemaker
mount --bind "$dir/lib-corosync" /var/lib/corosync
mkdir -p /var/log/pacemaker /var/log/corosync
mount --bind "$dir/log-pacemaker" /var/log/pacemaker
mount --bind "$dir/log-corosync" /var/log/corosync
mount --bind "$dir/etc-corosync" /etc/corosync
mount --bind /usr/lib/ocf/resource.d "$dir/orig-rd"
for p in "$dir"/orig-rd/*; do ln -sfn "$p" "$dir/rd/$(basename "$p")"; done
ln -sfn "$sgtest" "$dir/rd/sgtest"
mount --bind "$dir/rd" /usr/lib/ocf/resource.d
corosync -f &
export PCMK_logfile=/var/log/pacemaker/pacemaker.log
exec pacemakerd -f
"""

ONLINE_TIMEOUT = 90.0


def corosync_conf(hosts: list[LabHost], token_ms: int | None) -> str:
    nodes = "\n".join(
        f"  node {{\n    ring0_addr: {h.address}\n    name: {h.name}\n    nodeid: {i + 1}\n  }}"
        for i, h in enumerate(hosts)
    )
    token = f"  token: {token_ms}\n" if token_ms is not None else ""
    return (
        "totem {\n  version: 2\n  cluster_name: sgbench\n  transport: knet\n"
        f"{token}  crypto_cipher: none\n  crypto_hash: none\n}}\n"
        f"nodelist {{\n{nodes}\n}}\n"
        "quorum {\n  provider: corosync_votequorum\n}\n"
        "logging {\n  to_logfile: yes\n  logfile: /var/log/corosync/corosync.log\n"
        "  to_syslog: no\n  to_stderr: no\n  timestamp: on\n}\n"
    )


class PacemakerCluster:
    """Three Pacemaker nodes on the hosts of `lab` (see the module's docstring)."""

    def __init__(self, lab: Lab, base: Path, sgtest: Path, *, token_ms: int | None) -> None:
        self.lab = lab
        self.base = base
        self.sgtest = sgtest
        self.token_ms = token_ms
        self.hosts = {h.name: h for h in lab.hosts()}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.script = base / "node.sh"

    def start_node(self, name: str) -> None:
        node_dir = self.base / name
        (node_dir / "etc-corosync").mkdir(parents=True, exist_ok=True)
        conf = corosync_conf(list(self.hosts.values()), self.token_ms)
        (node_dir / "etc-corosync" / "corosync.conf").write_text(conf)
        with open(node_dir / "node.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                [
                    "nsenter",
                    f"--net=/run/netns/{self.hosts[name].netns}",
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    str(self.script),
                    str(node_dir),
                    str(self.sgtest),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self) -> None:
        self.script.write_text(NODE_SCRIPT)
        self.script.chmod(0o755)
        for name in self.hosts:
            self.start_node(name)

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    async def command(self, *argv: str, on: str | None = None) -> str:
        """Run a Pacemaker tool inside a live node's namespaces; its stdout."""
        name = on or next(n for n in self.hosts if self.alive(n))
        proc = await asyncio.create_subprocess_exec(
            "nsenter",
            "-t",
            str(self.procs[name].pid),
            "-n",
            "-m",
            *argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} on {name}: {err.decode().strip()}")
        return out.decode()

    async def online(self) -> set[str]:
        with contextlib.suppress(RuntimeError):
            text = await self.command("crm_mon", "-1")
            for line in text.splitlines():
                line = line.strip()
                if line.startswith("* Online: [") and "DC: NONE" not in text:
                    return set(line.split("[", 1)[1].rstrip("]").split())
        return set()

    async def wait_online(self, timeout: float = ONLINE_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while await self.online() != set(self.hosts):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"Pacemaker nodes not all online within {timeout:g} s")
            await asyncio.sleep(0.5)

    async def configure(self, resource: str, parameters: dict[str, str]) -> None:
        """Fencing off, stickiness 100, one `ocf:sgtest:journal` primitive with a 1 s monitor."""
        await self.command(
            "crm_attribute", "-t", "crm_config", "-n", "stonith-enabled", "-v", "false"
        )
        await self.command(
            "crm_attribute", "-t", "rsc_defaults", "-n", "resource-stickiness", "-v", "100"
        )
        pairs = "".join(
            f'<nvpair id="{resource}-{k}" name="{k}" value="{v}"/>' for k, v in parameters.items()
        )
        xml = (
            f'<primitive id="{resource}" class="ocf" provider="sgtest" type="journal">'
            f'<instance_attributes id="{resource}-ia">{pairs}</instance_attributes>'
            f'<operations><op id="{resource}-mon" name="monitor" interval="1s" timeout="2s"/>'
            "</operations></primitive>"
        )
        await self.command("cibadmin", "-C", "-o", "resources", "-X", xml)

    async def locate(self, resource: str) -> str | None:
        with contextlib.suppress(RuntimeError):
            text = await self.command("crm_resource", "--locate", "-r", resource)
            for name in self.hosts:
                if text.strip().endswith(f": {name}"):
                    return name
        return None

    def crash(self, name: str) -> None:
        """`lab crash` of the node's host: corosync, Pacemaker and the agents die at once."""
        self.lab.crash(name)
        proc = self.procs.get(name)
        if proc is not None:
            proc.wait(10)

    def stop(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is None:
                with contextlib.suppress(Exception):
                    self.lab.crash(name)
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
                proc.wait(10)
