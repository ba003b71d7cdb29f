"""An OCF agent in memory, for tests of the node role: the `Agent` protocol without processes.

Theory of operation
-------------------
`MemoryAgent` behaves as the real agents the contract suite
(`tests/integration/services/test_agent_contract.py`) runs it beside:
Dummy when it is not promotable, Stateful when it is. Its resource state
(stopped, started, promoted) lives in a `MemoryResource` that several
agents may share, as two runs of a real agent share its state file. Every
action is recorded in the resource's `journal` with the fencing token it
was given, which is what an exactly-one checker reads.

Tests script failures with `fail_next(action, code)` (`code` None: the
action times out, at once; no clock is read). A scripted result replaces
the action's effect: a failed start leaves the resource as it was.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from servergroup.services.metadata import ActionInfo, AgentInfo, ParameterInfo
from servergroup.services.ocf import AgentResult
from servergroup.services.ocf_codes import OcfStatus


class Role(enum.Enum):
    STOPPED = "stopped"
    STARTED = "started"
    PROMOTED = "promoted"


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalEntry:
    action: str
    code: int | None
    fencing_token: int | None


@dataclass(slots=True)
class MemoryResource:
    """What the agent manages: its role, and what was done to it."""

    role: Role = Role.STOPPED
    journal: list[JournalEntry] = field(default_factory=list)


_UNIMPLEMENTED = int(OcfStatus.ERR_UNIMPLEMENTED)


class MemoryAgent:
    """An `Agent` whose resource is a `MemoryResource` (see the module's docstring)."""

    def __init__(self, *, promotable: bool = False, resource: MemoryResource | None = None) -> None:
        self.promotable = promotable
        self.resource = resource if resource is not None else MemoryResource()
        self._scripted: dict[str, deque[int | None]] = {}

    def fail_next(self, action: str, code: int | None) -> None:
        """The next `action` ends with `code` (None: a timeout) instead of doing its work."""
        self._scripted.setdefault(action, deque()).append(code)

    def _effect(self, action: str) -> int:
        role = self.resource.role
        if action == "start":
            if role is Role.STOPPED:
                self.resource.role = Role.STARTED
            return int(OcfStatus.SUCCESS)
        if action == "stop":
            self.resource.role = Role.STOPPED
            return int(OcfStatus.SUCCESS)
        if action == "monitor":
            if role is Role.STOPPED:
                return int(OcfStatus.NOT_RUNNING)
            return int(OcfStatus.RUNNING_MASTER if role is Role.PROMOTED else OcfStatus.SUCCESS)
        if action in ("promote", "demote"):
            if not self.promotable:
                return _UNIMPLEMENTED
            if role is Role.STOPPED:
                return int(OcfStatus.NOT_RUNNING)
            self.resource.role = Role.PROMOTED if action == "promote" else Role.STARTED
            return int(OcfStatus.SUCCESS)
        if action in ("validate-all", "meta-data", "notify", "reload"):
            return int(OcfStatus.SUCCESS)
        return _UNIMPLEMENTED

    async def run(
        self,
        action: str,
        *,
        timeout: float,
        depth: int | None = None,
        interval: float = 0.0,
        fencing_token: int | None = None,
    ) -> AgentResult:
        scripted = self._scripted.get(action)
        code = scripted.popleft() if scripted else self._effect(action)
        self.resource.journal.append(
            JournalEntry(action=action, code=code, fencing_token=fencing_token)
        )
        return AgentResult(
            action=action,
            code=code,
            timed_out=code is None,
            duration=timeout if code is None else 0.0,
            stdout="",
            stderr="",
        )

    async def metadata(self) -> AgentInfo:
        actions = [
            ActionInfo(name="start", timeout=20.0),
            ActionInfo(name="stop", timeout=20.0),
            ActionInfo(name="monitor", timeout=20.0, interval=10.0, depth=0),
            ActionInfo(name="validate-all", timeout=20.0),
        ]
        if self.promotable:
            actions += [
                ActionInfo(name="promote", timeout=10.0),
                ActionInfo(name="demote", timeout=10.0),
            ]
        return AgentInfo(
            name="memory",
            parameters=(ParameterInfo(name="state"),),
            actions=tuple(actions),
        )


__all__ = ["JournalEntry", "MemoryAgent", "MemoryResource", "Role"]
