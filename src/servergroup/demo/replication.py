"""Demo part: the kv service protected by a backup; kill -9 the primary; no acknowledged put lost.

Starts `servergroup backup` and `servergroup protect --service kv` as
processes on loopback (their pair named after this process, removed at the
end), runs four clients that put unique keys for a while and keep every put
whose reply came, kills the primary with SIGKILL, waits for the backup to
serve, and reads every acknowledged key back from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servergroup.common.errors import RemoteError
from servergroup.config import Config
from servergroup.coordination.connect import connect
from servergroup.coordination.etcd_process import free_ports
from servergroup.replication.pair import PairKey

Say = Callable[[str], None]
HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicationResult:
    """What the replication demo measured."""

    acknowledged: int
    lost: int
    failover_seconds: float


async def _wait_log(
    path: Path, text: str, proc: asyncio.subprocess.Process, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while text not in (said := await asyncio.to_thread(path.read_text, errors="replace")):
        if proc.returncode is not None:
            raise RemoteError(f"the demo's {path.stem} exited early; its log ends: {said[-300:]}")
        if time.monotonic() > deadline:
            raise RemoteError(
                f"the demo's {path.stem} did not say {text!r} in {timeout:g} s; its log ends:"
                f" {said[-300:]}"
            )
        await asyncio.sleep(0.05)


async def _ask(port: int, request: dict[str, Any]) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        reply: dict[str, Any] = json.loads(await reader.readline())
        return reply
    finally:
        writer.close()


async def _client(port: int, name: str, acked: dict[str, str], until: float) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        i = 0
        while time.monotonic() < until:
            key, value = f"{name}-{i}", f"value {i} of {name}"
            writer.write(json.dumps({"op": "put", "key": key, "value": value}).encode() + b"\n")
            line = await reader.readline()
            if not line:
                return
            acked[key] = value
            i += 1
    except ConnectionError:
        return
    finally:
        writer.close()


async def run_replication_demo(
    config: Config, endpoints: Sequence[Any], say: Say
) -> ReplicationResult:
    """Run the replication part of the demo against `endpoints`; narrate with `say`."""
    client, stream, serve = free_ports(3)
    pair = f"demo-kv-{os.getpid()}"
    sg = [sys.executable, "-m", "servergroup", "--endpoints", ",".join(str(e) for e in endpoints)]
    sg += ["--prefix", config.coordination.prefix]
    procs: list[asyncio.subprocess.Process] = []
    with tempfile.TemporaryDirectory(prefix="sg-demo-replication-") as tmp:

        async def start(name: str, *args: str) -> tuple[asyncio.subprocess.Process, Path]:
            log = Path(tmp) / f"{name}.log"
            with log.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    *sg,
                    *args,
                    "--pair",
                    pair,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                )
            procs.append(proc)
            return proc, log

        try:
            say(
                f"Starting a backup (checkpoints on port {stream}; clients on {serve} after a"
                " takeover)."
            )
            backup, backup_log = await start(
                "backup",
                "backup",
                "--service",
                "kv",
                "--listen",
                f"{HOST}:{stream}",
                "--serve",
                f"{HOST}:{serve}",
            )
            await _wait_log(backup_log, "listening for a primary", backup, 30)
            say(
                f"Starting the kv service protected by it on port {client}, checkpointed every"
                " 200 ms."
            )
            primary, _ = await start(
                "primary",
                "protect",
                "--service",
                "kv",
                "--listen",
                f"{HOST}:{client}",
                "--backup",
                f"{HOST}:{stream}",
            )
            await _wait_log(backup_log, "applied full epoch", backup, 30)
            acked: dict[str, str] = {}
            say(
                "Four clients put keys; a reply leaves only once the backup has its epoch,"
                " so each client, waiting for its reply, puts about one key per epoch."
            )
            clients = [
                asyncio.create_task(_client(client, f"client{n}", acked, time.monotonic() + 30))
                for n in range(4)
            ]
            await asyncio.sleep(1.5)
            say(f"{len(acked)} puts acknowledged so far. Killing the primary with SIGKILL.")
            killed = time.monotonic()
            primary.send_signal(signal.SIGKILL)
            await primary.wait()
            await asyncio.gather(*clients)
            await _wait_log(backup_log, "took over at generation", backup, 30)
            while True:
                with contextlib.suppress(OSError):
                    await _ask(serve, {"op": "get", "key": "-"})
                    break
                await asyncio.sleep(0.02)
            took = time.monotonic() - killed
            say(
                f"The backup took the pair at a new generation and serves {took:.2f} s after"
                " the kill."
            )
            lost = 0
            for key, value in acked.items():
                if (await _ask(serve, {"op": "get", "key": key})).get("value") != value:
                    lost += 1
            say(f"All {len(acked)} acknowledged puts read back from it: {lost} lost.")
            return ReplicationResult(acknowledged=len(acked), lost=lost, failover_seconds=took)
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.terminate()
                    try:
                        await asyncio.wait_for(proc.wait(), 10)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
            with contextlib.suppress(Exception):
                async with connect(config, endpoints=endpoints) as coordinator:
                    await PairKey(coordinator, pair).remove()
