"""Fencing a copy whose stop failed: the `Fencer` protocol, its default, a command device.

Theory of operation (docs/design/services.md, "Fencing devices"). When an
instance's `stop` fails or times out on a node (the runner has then killed
the stop's own process group), the copy may still run, and the node role
must not let it be started elsewhere while it might. Before it marks the
instance failed-stop (`services/blocked/<s>/<i>`, started nowhere until an
operator clears it), the node role hands the copy to its `Fencer`:

- `fence(request)` makes the copy unable to act on its resource, and
  returns True only when that is certain (a device confirmed it); then the
  instance counts as stopped: its key is deleted, no block is written, and
  placement may start it elsewhere at once. False (or an exception, or
  overrunning `FENCE_TIMEOUT`) leaves the instance failed-stop.
- **The default, `KillLeftovers`**, kills every process this copy's agents
  left running: the processes whose environment carries the instance's
  `OCF_RESOURCE_INSTANCE` *and* its `OCF_RESKEY_fencing_token`, each with
  its process group when it leads one. The token tells this node's copy
  from another node's copy of the same instance even where nodes share a
  PID namespace (lab hosts), since every ownership has its own token. It
  returns False: a resource need not be a process (a state file, an
  address, a mount), so killing proves nothing, and the block stays.
- **A real device** (a power switch, a hypervisor's destroy, a storage
  fabric or a SCSI reservation cutting the node off the resource) plugs in
  as another `Fencer`; `CommandFencer` runs any such program (e.g. a
  wrapper around a `fence_*` agent) with the request in its environment
  (`SERVERGROUP_FENCE_NODE`, `_INSTANCE`, `_SERVICE`, `_INDEX`, `_TOKEN`,
  `_REASON`), exit status 0 meaning fenced. `FenceChain` runs the default
  first and then a device.

A fencer that powers its own node off does not return: the node's lease
then expires (and its supervisor, if it survives, finds the ledger); that is
as safe as a returned True, only slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import psutil

from servergroup.common.runner import CommandFailed, CommandNotFound, run_async
from servergroup.services.placement import InstanceId

log = logging.getLogger(__name__)

#: The longest the node role waits for a fencer (its answer is then "not fenced").
FENCE_TIMEOUT: Final = 30.0
#: In the environment of every action of an instance, and of what its actions started.
INSTANCE_ENV: Final = "OCF_RESOURCE_INSTANCE"
TOKEN_ENV: Final = "OCF_RESKEY_fencing_token"


@dataclass(frozen=True, slots=True, kw_only=True)
class FenceRequest:
    """A copy whose stop failed: where it runs, under which token, and why it is fenced."""

    node: str
    instance: InstanceId
    token: int
    reason: str  # the failed stop, in words

    @property
    def resource_instance(self) -> str:
        """`OCF_RESOURCE_INSTANCE` of the copy: `<service>:<index>`."""
        return f"{self.instance.service}:{self.instance.index}"


class Fencer(Protocol):
    """Makes a copy whose stop failed unable to act (see the module's docstring)."""

    @property
    def name(self) -> str: ...

    async def fence(self, request: FenceRequest) -> bool:
        """Fence the copy; True only when it certainly can no longer act on its resource."""
        ...


def leftover_processes(request: FenceRequest) -> list[int]:
    """The pids of processes whose environment names the copy's instance and token."""
    found = []
    want = (request.resource_instance, str(request.token))
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            env = process.environ()
        except psutil.Error:
            continue
        if (env.get(INSTANCE_ENV), env.get(TOKEN_ENV)) == want:
            found.append(process.pid)
    return found


class KillLeftovers:
    """The default: SIGKILL what the copy's agents left running; never claims certainty."""

    name = "the kill of its agents' processes"

    async def fence(self, request: FenceRequest) -> bool:
        pids = await asyncio.to_thread(leftover_processes, request)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
        if pids:
            log.warning(
                "fencing %s on %s: killed %d process(es) its agents left: %s",
                request.instance,
                request.node,
                len(pids),
                " ".join(map(str, pids)),
            )
        return False


class CommandFencer:
    """A fence device driven by a program: exit status 0 means the copy is fenced."""

    def __init__(self, argv: Sequence[str], *, timeout: float = FENCE_TIMEOUT - 1.0) -> None:
        if not argv:
            raise ValueError("a fence command needs a program")
        self.argv = tuple(argv)
        self.timeout = timeout
        self.name = f"fence command {self.argv[0]}"

    def environment(self, request: FenceRequest) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "SERVERGROUP_FENCE_NODE": request.node,
            "SERVERGROUP_FENCE_INSTANCE": request.resource_instance,
            "SERVERGROUP_FENCE_SERVICE": request.instance.service,
            "SERVERGROUP_FENCE_INDEX": str(request.instance.index),
            "SERVERGROUP_FENCE_TOKEN": str(request.token),
            "SERVERGROUP_FENCE_REASON": request.reason,
        }

    async def fence(self, request: FenceRequest) -> bool:
        try:
            done = await run_async(
                list(self.argv), timeout=self.timeout, env=self.environment(request), cwd="/"
            )
        except (CommandFailed, CommandNotFound) as exc:  # timed out, not installed
            log.error("fencing %s on %s: %s", request.instance, request.node, exc)
            return False
        if not done.ok:
            said = done.stderr.decode(errors="replace").strip().splitlines()
            log.error(
                "fencing %s on %s: %s exited with %d%s",
                request.instance,
                request.node,
                self.argv[0],
                done.returncode,
                f": {said[-1]}" if said else "",
            )
        return done.ok


class FenceChain:
    """Each fencer in turn until one says the copy is fenced (the default, then a device)."""

    def __init__(self, *fencers: Fencer) -> None:
        self.fencers = fencers
        self.name = " then ".join(f.name for f in fencers)

    async def fence(self, request: FenceRequest) -> bool:
        for fencer in self.fencers:
            if await fencer.fence(request):
                return True
        return False


__all__ = [
    "FENCE_TIMEOUT",
    "CommandFencer",
    "FenceChain",
    "FenceRequest",
    "Fencer",
    "KillLeftovers",
    "leftover_processes",
]
