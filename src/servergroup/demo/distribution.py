"""Demo part: one image from a lab host to the others, by multicast with TCP repair.

The part makes a lab of its own, shaped like the benchmark's (one sender and
three receivers, MTU 9000, every link limited to 1 Gbit/s by `tc tbf`), so
it neither needs nor disturbs the set-up of `servergroup up`. The lab is tied
to this process: if the demo is killed, the next lab `up` on the machine
removes it. Sender and receivers are the real `servergroup image send` and
`servergroup image receive` commands, each inside its lab host; the image is
random bytes, written to a temporary directory in memory when there is one.

The part shows the sender's per-client table, then checks each receiver's
output against the image's SHA-256 itself. Whatever happens, the processes
it started are ended (by their PIDs), the temporary directory is removed and
the lab is taken down.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from servergroup.config import Config
from servergroup.lab import Lab, LabHost

Say = Callable[[str], None]

#: Image size: large enough to take many rounds of packets, small enough for seconds.
DEFAULT_SIZE = 64 * 1024 * 1024
DEFAULT_RECEIVERS = 3
MTU = 9000
LINK_RATE = "1gbit"
LINK_BITS = 1_000_000_000
#: How long the whole transfer may take before the demo gives up on it.
TRANSFER_TIMEOUT = 60.0
#: The peers' `--timeout`: a silent peer is given up after this long.
PEER_TIMEOUT = 10.0
#: A private directory in memory keeps the image off the disk (the receivers fsync).
MEMORY_DIR = Path("/dev/shm")
#: Wide enough that the sender's table is not cut (rich reads COLUMNS).
TABLE_COLUMNS = "110"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiverOutput:
    """What one receiver left under its output name."""

    host: str
    address: str
    size: int
    sha256: str
    matches: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DistributionResult:
    """What the distribution part did and saw."""

    lab: str
    size: int
    sha256: str
    seconds: float
    sender_status: int
    receivers: tuple[ReceiverOutput, ...]

    @property
    def ok(self) -> bool:
        """The sender says every client verified the image, and every output is the image."""
        return self.sender_status == 0 and all(r.matches for r in self.receivers)


def distribution_lab_name(base: str | None) -> str:
    """The name of this part's lab: `base` (the demo's lab name, default `sg`) + `mc`."""
    return f"{(base or 'sg')[:6]}mc"


def work_dir_prefix(lab: str) -> str:
    """The prefix of the temporary directory this part makes (for tests to look for)."""
    return f"servergroup-demo-{lab}-"


def run_distribution_demo(
    config: Config,
    say: Say,
    *,
    lab_name: str,
    size: int = DEFAULT_SIZE,
    receivers: int = DEFAULT_RECEIVERS,
) -> DistributionResult:
    """Send a random image of `size` bytes from h1 to `receivers` lab hosts; narrate with `say`."""
    lab = Lab(lab_name, state_dir=Path(os.path.abspath(config.state_dir)), owner_pid=os.getpid())
    memory = MEMORY_DIR if MEMORY_DIR.is_dir() else None
    work = Path(tempfile.mkdtemp(prefix=work_dir_prefix(lab_name), dir=memory))
    try:
        say(
            f"Bringing up lab {lab_name}: {receivers + 1} hosts, MTU {MTU}, "
            f"each link limited to {LINK_BITS / 1e9:g} Gbit/s (tc tbf)."
        )
        lab.up(receivers + 1, mtu=MTU, rate=LINK_RATE)
        image = work / "image.bin"
        digest = _write_random(image, size)
        return _transfer(lab, image, digest, work, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        lab.down()


def _write_random(path: Path, size: int) -> str:
    """Fill `path` with `size` random bytes; their SHA-256 in hex."""
    sha = hashlib.sha256()
    chunk = 1 << 20
    with path.open("wb") as f:
        left = size
        while left:
            data = os.urandom(min(chunk, left))
            sha.update(data)
            f.write(data)
            left -= len(data)
    return sha.hexdigest()


def _transfer(lab: Lab, image: Path, digest: str, work: Path, say: Say) -> DistributionResult:
    hosts = lab.hosts()
    source, targets = hosts[0], hosts[1:]
    size = image.stat().st_size
    server = str(source.address)
    sg = [sys.executable, "-m", "servergroup", "image"]
    timeout = ["--timeout", f"{PEER_TIMEOUT:g}"]
    say(
        f"{source.name} ({server}) multicasts a {_mib(size)} image to "
        f"{', '.join(h.name for h in targets)}; each checks its SHA-256 "
        f"({digest[:16]}…)."
    )
    outputs = {h.name: work / f"{h.name}.img" for h in targets}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        started = time.monotonic()
        with image.open("rb") as stdin:
            sender = lab.popen(
                source,
                [*sg, "send", server, str(len(targets)), "--mtu", str(MTU), *timeout],
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env={**os.environ, "COLUMNS": TABLE_COLUMNS},
            )
        procs.append(sender)
        for h in targets:
            argv = [*sg, "receive", str(h.address), server, "--output", str(outputs[h.name])]
            procs.append(
                lab.popen(
                    h,
                    [*argv, *timeout],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        try:
            _, table = sender.communicate(timeout=TRANSFER_TIMEOUT)
        except subprocess.TimeoutExpired:
            table = b""
            say(f"  the transfer did not end within {TRANSFER_TIMEOUT:g} s; stopping it.")
        for p in procs[1:]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, started + TRANSFER_TIMEOUT - time.monotonic()))
        seconds = time.monotonic() - started
    finally:
        _end(procs)
    ideal = size * 8 / LINK_BITS
    say(
        f"Done in {seconds:.2f} s, programs' start included (the link alone needs "
        f"{ideal:.2f} s). The sender's table:"
    )
    for line in table.decode("utf-8", "replace").splitlines():
        if line.strip():
            say(f"  {line.rstrip()}")
    results = tuple(_check(h, outputs[h.name], digest) for h in targets)
    for r in results:
        verdict = "matches the image" if r.matches else "DIFFERS from the image"
        say(f"  {r.host} ({r.address}): {_mib(r.size)}, SHA-256 {r.sha256[:16]}… {verdict}")
    return DistributionResult(
        lab=lab.name,
        size=size,
        sha256=digest,
        seconds=seconds,
        sender_status=sender.returncode,
        receivers=results,
    )


def _check(host: LabHost, output: Path, digest: str) -> ReceiverOutput:
    sha = hashlib.sha256()
    try:
        with output.open("rb") as f:
            while data := f.read(1 << 20):
                sha.update(data)
        size = output.stat().st_size
    except OSError:  # the receiver left nothing under the name: it did not verify
        return ReceiverOutput(
            host=host.name, address=str(host.address), size=0, sha256="-" * 64, matches=False
        )
    found = sha.hexdigest()
    return ReceiverOutput(
        host=host.name, address=str(host.address), size=size, sha256=found, matches=found == digest
    )


def _end(procs: list[subprocess.Popen[bytes]]) -> None:
    """Kill what is still running of the processes we started, by PID, and reap them."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(10)
        if p.stderr is not None:
            p.stderr.close()


def _mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB"


__all__ = [
    "DistributionResult",
    "ReceiverOutput",
    "distribution_lab_name",
    "run_distribution_demo",
    "work_dir_prefix",
]
