"""What an OCF agent says about itself: its `meta-data` XML, parsed (pure).

Theory of operation (no I/O, no clock: it takes the XML text the runner got).

An OCF agent prints, for the `meta-data` action, a `<resource-agent>`
document (OCF spec 1.1): its `<parameters>` (name, required, unique,
default), its `<actions>` with hints (`timeout`, `interval`, `depth`,
`role`; one monitor line per depth, and, for promotable agents, one per
role), and optionally a `<special tag="rgmanager">` element whose
`<attributes maxinstances="N"/>` caps how many instances of it may run
(the seed's csnap case). `parse_metadata` turns that into an `AgentInfo`.

Durations in hints are Pacemaker's: a number with an optional unit (`ms`,
`s`, `m`, `h`; none means seconds). A hint that cannot be read is dropped
rather than refused (agents in the wild carry odd ones); a document that is
not a `<resource-agent>` at all raises `MetadataError`.

Agents newer than OCF 1.0 call their reload `reload-agent`; `AgentInfo.has`
answers `reload` for either name, so callers ask one question.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from servergroup.common.errors import RemoteError

#: The optional actions the service manager uses when an agent has them.
OPTIONAL_ACTIONS = ("recover", "reload", "promote", "demote", "notify", "validate-all")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|msec|s|sec|m|min|h|hr)?\s*$")
_UNIT_SECONDS = {
    None: 1.0,
    "s": 1.0,
    "sec": 1.0,
    "ms": 0.001,
    "msec": 0.001,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
}


class MetadataError(RemoteError):
    """An agent's meta-data is not an OCF resource-agent document."""


def parse_duration(text: str) -> float | None:
    """Seconds of a Pacemaker duration (`20s`, `500ms`, `2m`, `15`); None if unreadable."""
    match = _DURATION.match(text)
    if match is None:
        return None
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True, slots=True, kw_only=True)
class ParameterInfo:
    """One parameter the agent takes (`OCF_RESKEY_<name>`)."""

    name: str
    required: bool = False
    unique: bool = False
    default: str | None = None
    shortdesc: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionInfo:
    """One `<action>` line: the agent's hints for it (None where it gives none)."""

    name: str
    timeout: float | None = None
    interval: float | None = None
    depth: int | None = None
    role: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentInfo:
    """An agent's meta-data: its name, parameters, actions and rgmanager's maxinstances."""

    name: str
    parameters: tuple[ParameterInfo, ...]
    actions: tuple[ActionInfo, ...]
    max_instances: int | None = None

    def has(self, action: str) -> bool:
        """True when the agent lists `action` (`reload` also matches `reload-agent`)."""
        names = {a.name for a in self.actions}
        if action == "reload":
            return "reload" in names or "reload-agent" in names
        return action in names

    def parameter(self, name: str) -> ParameterInfo | None:
        for parameter in self.parameters:
            if parameter.name == name:
                return parameter
        return None

    def timeout(self, action: str) -> float | None:
        """The agent's timeout hint for `action` (the first line naming it), None if none."""
        for info in self.actions:
            if info.name == action and info.timeout is not None:
                return info.timeout
        if action == "reload":
            return self.timeout("reload-agent")
        return None

    def monitors(self) -> tuple[ActionInfo, ...]:
        """The monitor hints, one per depth (the first line of each depth wins), by depth."""
        seen: dict[int, ActionInfo] = {}
        for info in self.actions:
            if info.name == "monitor":
                seen.setdefault(info.depth or 0, info)
        return tuple(seen[depth] for depth in sorted(seen))


def _action(element: ET.Element) -> ActionInfo | None:
    name = element.get("name")
    if not name:
        return None
    depth_text = element.get("depth")
    depth = int(depth_text) if depth_text is not None and depth_text.isdigit() else None
    timeout = element.get("timeout")
    interval = element.get("interval")
    return ActionInfo(
        name=name,
        timeout=parse_duration(timeout) if timeout is not None else None,
        interval=parse_duration(interval) if interval is not None else None,
        depth=depth,
        role=element.get("role"),
    )


def _parameter(element: ET.Element) -> ParameterInfo | None:
    name = element.get("name")
    if not name:
        return None
    content = element.find("content")
    shortdesc = element.findtext("shortdesc") or ""
    return ParameterInfo(
        name=name,
        required=element.get("required") == "1",
        unique=element.get("unique") == "1",
        default=content.get("default") if content is not None else None,
        shortdesc=" ".join(shortdesc.split()),
    )


def _max_instances(root: ET.Element) -> int | None:
    for special in root.iter("special"):
        if special.get("tag") != "rgmanager":
            continue
        for attributes in special.iter("attributes"):
            text = attributes.get("maxinstances")
            if text is not None and text.strip().isdigit() and int(text) >= 1:
                return int(text)
    return None


def parse_metadata(text: str) -> AgentInfo:
    """The `AgentInfo` in an agent's meta-data output; `MetadataError` if it is not one."""
    try:
        root = ET.fromstring(text.strip())
    except ET.ParseError as exc:
        raise MetadataError(f"the agent's meta-data is not well-formed XML ({exc}).") from None
    if root.tag != "resource-agent":
        raise MetadataError(
            f"the agent's meta-data has <{root.tag}> where <resource-agent> belongs."
        )
    parameters = tuple(
        p for p in (_parameter(e) for e in root.iterfind("parameters/parameter")) if p is not None
    )
    actions = tuple(a for a in (_action(e) for e in root.iterfind("actions/action")) if a)
    return AgentInfo(
        name=root.get("name") or "",
        parameters=parameters,
        actions=actions,
        max_instances=_max_instances(root),
    )


__all__ = [
    "OPTIONAL_ACTIONS",
    "ActionInfo",
    "AgentInfo",
    "MetadataError",
    "ParameterInfo",
    "parse_duration",
    "parse_metadata",
]
