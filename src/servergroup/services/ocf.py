"""Running OCF resource agents: environment, timeouts that kill, results classified.

Theory of operation
-------------------
An OCF agent (REFERENCE.md; ClusterLabs OCF spec 1.1) is an executable
called with one argument, the action, and configured through the
environment. `OcfAgent` is one agent bound to one resource instance: its
path (`ocf:<provider>:<type>` resolves to
`$OCF_ROOT/resource.d/<provider>/<type>`, `OCF_ROOT` defaulting to
`/usr/lib/ocf`; a path is taken as it is), the instance name and its
parameters. Every call (`run`, and the named shorthands `start`, `stop`,
`monitor`, ...) runs the agent once through `common.runner.run_async`:

- **Environment**: the caller's `PATH` and nothing else of ours, plus
  `OCF_ROOT`, `OCF_RA_VERSION_MAJOR/MINOR` (1.1), `OCF_RESOURCE_INSTANCE`,
  `OCF_RESOURCE_TYPE`, `OCF_RESOURCE_PROVIDER`, each parameter as
  `OCF_RESKEY_<name>`, `OCF_RESKEY_CRM_meta_timeout` (the action's timeout in
  milliseconds, as Pacemaker gives it), `OCF_RESKEY_CRM_meta_interval` (ms,
  0 for anything but a recurring monitor), `OCF_CHECK_LEVEL` for a monitor's
  depth, and `OCF_RESKEY_fencing_token` when the caller holds the
  instance's ownership key (the key's revision; the agent may hand it to
  whatever it protects so that a stale owner is refused there).
- **Timeouts**: the agent runs in its own session; when its timeout passes
  its whole process group gets SIGTERM, then SIGKILL after `kill_grace`
  (0.2 s by default), and the result is a
  timeout (soft failure, `code` None). A daemon the agent started and that
  left the group on purpose (`setsid`) is not touched: that is the
  resource, and ending it is `stop`'s job. Cancelling a call ends the group
  too.
- **Output**: stdout and stderr are kept, at most `output_limit` bytes of
  each (the tail); `exit_reason` is the agent's last `ocf-exit-reason:`
  line, the one-sentence reason OCF 1.1 agents give for a failure.
- **Results** never raise for what the agent did: every outcome is an
  `AgentResult` with its exit code, `OcfStatus` and `Severity`
  (`services.ocf_codes`). An agent missing or not executable at run time
  is ERR_INSTALLED (hard: this node cannot run it), as Pacemaker has it.
- `metadata()` runs `meta-data` and parses it (`services.metadata`);
  unparseable output raises `MetadataError`.

`Agent` is the protocol the node role uses, so that tests of the node role
can run an agent in memory; `OcfAgent` is the real one, tested against the
real ClusterLabs agents.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from servergroup.common.errors import MissingDependency
from servergroup.common.runner import CommandNotFound, CommandTimedOut, Completed, run_async
from servergroup.services.metadata import AgentInfo, MetadataError, parse_metadata
from servergroup.services.model import AgentRef
from servergroup.services.ocf_codes import OcfStatus, Severity, severity, status_of

DEFAULT_OCF_ROOT: Final = Path("/usr/lib/ocf")
#: How much of each of stdout and stderr a result keeps (bytes, the tail).
OUTPUT_LIMIT: Final = 64 * 1024
#: Timeout of `meta-data` (it only prints text).
METADATA_TIMEOUT: Final = 10.0
#: How long an agent's process group gets between SIGTERM and SIGKILL after a timeout
#: (short: the agent already overran, and a self-fencing node counts this time twice for
#: a master, after its demote and after its stop, within a 1 s lease by default).
KILL_GRACE: Final = 0.1
_EXIT_REASON: Final = "ocf-exit-reason:"


class AgentNotFound(MissingDependency):
    """An agent named by a service is not installed (or not executable)."""


def resolve_agent(ref: AgentRef, ocf_root: Path = DEFAULT_OCF_ROOT) -> Path:
    """The executable of `ref`; `AgentNotFound` (one sentence) when there is none."""
    if ref.path is not None:
        path = Path(ref.path)
    else:
        assert ref.provider is not None
        assert ref.type is not None
        path = ocf_root / "resource.d" / ref.provider / ref.type
    if not path.is_file() or not os.access(path, os.X_OK):
        raise AgentNotFound(f"agent {ref} is not installed: no executable {path}.")
    return path


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentResult:
    """What one run of an agent's action came to."""

    action: str
    #: The exit code; None when the agent timed out or was killed by a signal.
    code: int | None
    timed_out: bool
    #: Seconds the action took (monotonic clock).
    duration: float
    stdout: str
    stderr: str

    @property
    def status(self) -> OcfStatus | None:
        return status_of(self.code)

    @property
    def severity(self) -> Severity:
        return severity(self.action, self.code)

    @property
    def ok(self) -> bool:
        """True when the result is not a failure of its action (see `ocf_codes.severity`)."""
        return self.severity is Severity.NONE

    @property
    def exit_reason(self) -> str | None:
        """The agent's last `ocf-exit-reason:` line, without the marker."""
        reason = None
        for line in self.stderr.splitlines():
            if line.startswith(_EXIT_REASON):
                reason = line[len(_EXIT_REASON) :].strip()
        return reason

    def describe(self) -> str:
        """The result in words, for logs and status."""
        if self.timed_out:
            what = f"timed out after {self.duration:.1f} s"
        elif self.code is None:
            what = "was killed by a signal"
        else:
            status = self.status
            what = f"returned {self.code}" + (f" ({status.name})" if status is not None else "")
        reason = self.exit_reason
        return f"{self.action} {what}" + (f": {reason}" if reason else "")


class Agent(Protocol):
    """One agent bound to one resource instance, as the node role uses it."""

    async def run(
        self,
        action: str,
        *,
        timeout: float,
        depth: int | None = None,
        interval: float = 0.0,
        fencing_token: int | None = None,
    ) -> AgentResult: ...

    async def metadata(self) -> AgentInfo: ...


class OcfAgent:
    """A real OCF agent on this machine, bound to resource instance `instance`."""

    def __init__(
        self,
        ref: AgentRef,
        *,
        instance: str,
        parameters: Mapping[str, str] | None = None,
        ocf_root: Path = DEFAULT_OCF_ROOT,
        output_limit: int = OUTPUT_LIMIT,
        kill_grace: float = KILL_GRACE,
    ) -> None:
        self.ref = ref
        self.instance = instance
        self.parameters = dict(parameters or {})
        self.ocf_root = ocf_root
        self.output_limit = output_limit
        self.kill_grace = kill_grace
        self.path = resolve_agent(ref, ocf_root)

    def environment(
        self,
        action: str,
        *,
        timeout: float,
        depth: int | None = None,
        interval: float = 0.0,
        fencing_token: int | None = None,
    ) -> dict[str, str]:
        """The environment `action` runs in (see the module's docstring)."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "OCF_ROOT": str(self.ocf_root),
            "OCF_RA_VERSION_MAJOR": "1",
            "OCF_RA_VERSION_MINOR": "1",
            "OCF_RESOURCE_INSTANCE": self.instance,
            "OCF_RESOURCE_TYPE": self.ref.type or self.path.name,
            "OCF_RESKEY_CRM_meta_timeout": str(round(timeout * 1000)),
            "OCF_RESKEY_CRM_meta_interval": str(round(interval * 1000)),
        }
        if self.ref.provider is not None:
            env["OCF_RESOURCE_PROVIDER"] = self.ref.provider
        for name, value in self.parameters.items():
            env[f"OCF_RESKEY_{name}"] = value
        if action == "monitor" or depth is not None:
            env["OCF_CHECK_LEVEL"] = str(depth or 0)
        if fencing_token is not None:
            env["OCF_RESKEY_fencing_token"] = str(fencing_token)
        return env

    async def run(
        self,
        action: str,
        *,
        timeout: float,
        depth: int | None = None,
        interval: float = 0.0,
        fencing_token: int | None = None,
    ) -> AgentResult:
        """Run `action` once within `timeout` seconds; never raises for what the agent did."""
        env = self.environment(
            action, timeout=timeout, depth=depth, interval=interval, fencing_token=fencing_token
        )
        began = time.monotonic()
        timed_out = False
        try:
            done: Completed = await run_async(
                [str(self.path), action],
                timeout=timeout,
                env=env,
                cwd="/",
                term_timeout=self.kill_grace,
                output_limit=self.output_limit,
            )
        except CommandTimedOut as exc:
            done = exc.completed
            timed_out = True
        except CommandNotFound as exc:
            return AgentResult(
                action=action,
                code=int(OcfStatus.ERR_INSTALLED),
                timed_out=False,
                duration=time.monotonic() - began,
                stdout="",
                stderr=f"{_EXIT_REASON} {exc}",
            )
        code = None if timed_out or done.returncode < 0 else done.returncode
        return AgentResult(
            action=action,
            code=code,
            timed_out=timed_out,
            duration=time.monotonic() - began,
            stdout=done.out,
            stderr=done.err,
        )

    async def metadata(self) -> AgentInfo:
        """The agent's parsed `meta-data`; `MetadataError` when it gives none."""
        result = await self.run("meta-data", timeout=METADATA_TIMEOUT)
        if not result.ok:
            # describe() names the action: "meta-data returned 3 (ERR_UNIMPLEMENTED)".
            raise MetadataError(f"agent {self.ref}: {result.describe()}.")
        try:
            return parse_metadata(result.stdout)
        except MetadataError as exc:
            raise MetadataError(f"agent {self.ref}: {exc}") from None

    # The actions by name, for readers of the node role.

    async def start(self, *, timeout: float, fencing_token: int | None = None) -> AgentResult:
        return await self.run("start", timeout=timeout, fencing_token=fencing_token)

    async def stop(self, *, timeout: float, fencing_token: int | None = None) -> AgentResult:
        return await self.run("stop", timeout=timeout, fencing_token=fencing_token)

    async def monitor(
        self,
        *,
        timeout: float,
        depth: int = 0,
        interval: float = 0.0,
        fencing_token: int | None = None,
    ) -> AgentResult:
        return await self.run(
            "monitor",
            timeout=timeout,
            depth=depth,
            interval=interval,
            fencing_token=fencing_token,
        )

    async def promote(self, *, timeout: float, fencing_token: int | None = None) -> AgentResult:
        return await self.run("promote", timeout=timeout, fencing_token=fencing_token)

    async def demote(self, *, timeout: float, fencing_token: int | None = None) -> AgentResult:
        return await self.run("demote", timeout=timeout, fencing_token=fencing_token)

    async def validate_all(self, *, timeout: float) -> AgentResult:
        return await self.run("validate-all", timeout=timeout)


__all__ = [
    "DEFAULT_OCF_ROOT",
    "Agent",
    "AgentNotFound",
    "AgentResult",
    "OcfAgent",
    "resolve_agent",
]
