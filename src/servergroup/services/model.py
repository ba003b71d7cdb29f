"""Service and failover-domain definitions: TOML in, validated, frozen; JSON for the store (pure).

Theory of operation (no I/O, no clock: callers hand in text and bytes).

A definitions file holds `[[service]]` and `[[domain]]` tables.
`parse_definitions(text)` reads it with `tomllib` and checks everything that
can be checked without the agent at hand, so that a bad file is refused
whole, at load, with one sentence naming the table and field
(`DefinitionError`, a `ConfigError`). What needs the agent's `meta-data`
(default timeouts and monitors, `maxinstances`, whether it can promote) is
checked by `resolve(service, info)` once the runner has read it.

**A service** (`Service`) names its agent (`ocf:<provider>:<type>`,
resolved under `OCF_ROOT`, or an absolute path to an executable), its
parameters (`OCF_RESKEY_<name>`, strings), its monitors (one per depth: 0
running, 10 master/medium, 20 internally consistent, each with an interval
and a timeout; none given means the agent's own hints), start and stop
timeouts (None: the agent's hints), `instances` (default 1), `promotable`,
its recovery policy, whether it is `enabled`, an optional `domain` and an
optional `address` template the master publishes.

- `instances` copies run on distinct nodes (an agent keeps per-resource
  state, such as Dummy's state file, that two copies on one node would
  share). `promotable` means one copy is promoted to master and the others
  stay slaves; **a promotable service needs `instances >= 2`**: with one
  copy there is no slave to promote when the master goes, and a plain
  service with a start-time role does the same job, so the combination is
  refused rather than given a second meaning.
- Recovery (rgmanager's, REFERENCE.md): `restart` restarts on the same node
  until more than `max_restarts` failures fall within
  `restart_expire_time`, then relocates; `max_restarts = 0` means no
  threshold (restart on the same node for ever, rgmanager's reading).
  `relocate` moves at the first failure; `disable` stops the service and
  leaves it disabled.
- Timings are refused when unsafe: every timeout and interval positive, and
  a monitor's timeout strictly below its interval (a check still running
  when the next one is due would pile checks on a sick agent).
- `address` is a `str.format` template over `{node}`, `{node_ip}`,
  `{instance}` and `{token}`; any other field is refused. Parameter values
  may hold `{node}`, `{node_ip}`, `{instance}` and `{state_dir}`, which the
  node role fills in (`Service.render_parameters`); other braces are left.

**A failover domain** (`FailoverDomain`) is either an ordered list of nodes
with priorities (`nodes = ["a", "b"]`, priority = position, or
`nodes = [{node = "a", priority = 1}, ...]`; lower number wins, as in
rgmanager) or `server_group = "<group>"`: the hosts that run that server
group's members (the seed's "use the service group to specify the failover
domain"), which the node role resolves at each cycle. Flags keep rgmanager's
meaning: `ordered` (prefer the best-priority member that is up),
`restricted` (never run outside the members; stay stopped when none is up),
`nofailback` (a running instance is not moved back when a better member
returns). A server-group domain has no priorities, so `ordered` is refused
there. A restricted domain with listed nodes must list at least
`instances` nodes for every service that uses it.

**Self-fencing budget.** `check_stop_fits` refuses a service whose demote,
stop and kill grace cannot all end before its node's lease may expire, with
the coordination timings it is given (docs/design/services.md).

**Storage.** `encode_service` / `encode_domain` give compact JSON with
sorted keys in the very shape of the TOML tables, and `decode_service` /
`decode_domain` run the same checks on the way back, so what decodes is
valid and `decode(encode(x)) == x`. Bytes in the store that are not a
definition raise `StoredDefinitionError` (a remote error: someone else wrote
them).
"""

from __future__ import annotations

import enum
import json
import re
import string
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from servergroup.common.errors import ConfigError, RemoteError
from servergroup.services.metadata import AgentInfo

#: Names of services, domains, nodes and groups: they become etcd key segments.
NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
#: Parameter names become environment variable names (`OCF_RESKEY_<name>`).
PARAMETER_PATTERN: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_AGENT_PART: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

#: Monitor depths (OCF_CHECK_LEVEL): running, master (medium), internally consistent.
DEPTHS: Final = (0, 10, 20)
#: Fields an address template may use.
ADDRESS_FIELDS: Final = frozenset({"node", "node_ip", "instance", "token"})

#: Used when neither the service nor the agent gives one (seconds).
FALLBACK_TIMEOUT: Final = 20.0
FALLBACK_MONITOR_INTERVAL: Final = 10.0
DEFAULT_MAX_RESTARTS: Final = 3
DEFAULT_RESTART_EXPIRE_TIME: Final = 300.0


class DefinitionError(ConfigError):
    """A service or domain definition is invalid; the message names the table and field."""


class StoredDefinitionError(RemoteError):
    """Bytes in the store are not a service or domain definition."""


class Recovery(enum.Enum):
    """What to do when an instance fails (rgmanager's recovery policies)."""

    RESTART = "restart"
    RELOCATE = "relocate"
    DISABLE = "disable"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRef:
    """Which agent runs a service: `ocf:<provider>:<type>`, or an absolute path."""

    provider: str | None = None
    type: str | None = None
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> AgentRef:
        """The agent named by `text`; `ValueError` (one sentence) if it is neither form."""
        if text.startswith("/"):
            if "\0" in text or text.endswith("/"):
                raise ValueError(f"agent path {text!r} does not name a file")
            return cls(path=text)
        parts = text.split(":")
        if len(parts) == 3 and parts[0] == "ocf" and all(_AGENT_PART.match(p) for p in parts[1:]):
            return cls(provider=parts[1], type=parts[2])
        raise ValueError(f"agent {text!r} is neither ocf:<provider>:<type> nor an absolute path")

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        return f"ocf:{self.provider}:{self.type}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Monitor:
    """One recurring monitor: its depth (OCF_CHECK_LEVEL), interval and timeout (seconds)."""

    depth: int = 0
    interval: float
    timeout: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """A service definition (see the module's docstring for each field's meaning)."""

    name: str
    agent: AgentRef
    parameters: Mapping[str, str] = field(default_factory=dict)
    monitors: tuple[Monitor, ...] = ()
    start_timeout: float | None = None
    stop_timeout: float | None = None
    instances: int = 1
    promotable: bool = False
    recovery: Recovery = Recovery.RESTART
    max_restarts: int = DEFAULT_MAX_RESTARTS
    restart_expire_time: float = DEFAULT_RESTART_EXPIRE_TIME
    enabled: bool = True
    domain: str | None = None
    address: str | None = None

    def render_parameters(
        self, *, node: str, node_ip: str, instance: int, state_dir: str
    ) -> Service:
        """This service with `{node}`, `{node_ip}`, `{instance}` and `{state_dir}` replaced
        in its parameters (`state_dir`: the node's daemon's state directory).

        Only those literal fields are replaced (any other brace is the agent's
        business), so that nodes sharing one filesystem, as lab hosts do, can
        give each copy a state file of its own, and labs (or clusters) sharing
        one machine, each with its own state directory, one of their own.
        """
        fields = {
            "{node}": node,
            "{node_ip}": node_ip,
            "{instance}": str(instance),
            "{state_dir}": state_dir,
        }
        rendered = {}
        for name, value in self.parameters.items():
            for field_text, replacement in fields.items():
                value = value.replace(field_text, replacement)
            rendered[name] = value
        return replace(self, parameters=rendered)

    def render_address(self, *, node: str, node_ip: str, instance: int, token: int) -> str | None:
        """The published address for an instance on `node`, None without a template."""
        if self.address is None:
            return None
        return self.address.format(node=node, node_ip=node_ip, instance=instance, token=token)


@dataclass(frozen=True, slots=True, kw_only=True)
class DomainMember:
    """A node of a failover domain; a lower priority number is preferred."""

    node: str
    priority: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverDomain:
    """Where a service may run (see the module's docstring); `members` or `server_group`."""

    name: str
    members: tuple[DomainMember, ...] = ()
    server_group: str | None = None
    ordered: bool = False
    restricted: bool = False
    nofailback: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Definitions:
    """A whole definitions file: services and domains, each name once."""

    services: tuple[Service, ...] = ()
    domains: tuple[FailoverDomain, ...] = ()

    def service(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    def domain(self, name: str) -> FailoverDomain | None:
        return next((d for d in self.domains if d.name == name), None)


# --- reading tables ---------------------------------------------------------------------


class _Table:
    """One TOML table being read: typed getters whose errors name `where` and the key."""

    def __init__(self, where: str, data: object, allowed: Iterable[str]) -> None:
        if not isinstance(data, dict):
            raise DefinitionError(f"{where} must be a table.")
        self.where = where
        self.data: dict[str, object] = data
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise DefinitionError(f"{where} has an unknown key {unknown[0]!r}.")

    def fail(self, key: str, what: str) -> DefinitionError:
        return DefinitionError(f"{self.where}: {key} {what}.")

    def has(self, key: str) -> bool:
        return key in self.data

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.data.get(key, default)
        if value is not None and not isinstance(value, str):
            raise self.fail(key, "must be a string")
        return value

    def name(self, key: str) -> str:
        value = self.string(key)
        if value is None:
            raise self.fail(key, "is missing")
        if not NAME_PATTERN.match(value):
            raise self.fail(key, f"{value!r} is not a name (letters, digits, '_', '.', '-')")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "must be an integer")
        if value < minimum:
            raise self.fail(key, f"is {value}; it must be at least {minimum}")
        return value

    def seconds(self, key: str, default: float | None) -> float | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, "must be a number of seconds")
        if not value > 0 or value == float("inf"):
            raise self.fail(key, f"is {value}; it must be a positive number of seconds")
        return float(value)


_SERVICE_KEYS = (
    "name",
    "agent",
    "parameters",
    "monitor",
    "start_timeout",
    "stop_timeout",
    "instances",
    "promotable",
    "recovery",
    "max_restarts",
    "restart_expire_time",
    "enabled",
    "domain",
    "address",
)


def _monitor(where: str, data: object) -> Monitor:
    table = _Table(where, data, ("depth", "interval", "timeout"))
    depth = table.integer("depth", 0, minimum=0)
    if depth not in DEPTHS:
        raise table.fail("depth", f"is {depth}; it must be one of 0, 10, 20")
    interval = table.seconds("interval", None)
    timeout = table.seconds("timeout", None)
    if interval is None or timeout is None:
        raise table.fail("interval" if interval is None else "timeout", "is missing")
    if timeout >= interval:
        raise table.fail("timeout", f"({timeout:g} s) must be below the interval ({interval:g} s)")
    return Monitor(depth=depth, interval=interval, timeout=timeout)


def _address(table: _Table) -> str | None:
    template = table.string("address")
    if template is None:
        return None
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise table.fail("address", f"{template!r} is not a template ({exc})") from None
    bad = sorted(used - ADDRESS_FIELDS)
    if bad:
        raise table.fail(
            "address", f"uses {{{bad[0]}}}; only {{node}}, {{node_ip}}, {{instance}}, {{token}}"
        )
    return template


def _named(kind: str, position: int, data: object) -> str:
    """How a table is named in a refusal: by its name when it has a valid one, else by
    its position in the file (`service 2`)."""
    name = data.get("name") if isinstance(data, dict) else None
    if isinstance(name, str) and NAME_PATTERN.match(name):
        return f"{kind} {name!r}"
    return f"{kind} {position}"


def _service(data: object, where: str) -> Service:
    table = _Table(where, data, _SERVICE_KEYS)
    name = table.name("name")
    table.where = f"service {name!r}"
    agent_text = table.string("agent")
    if agent_text is None:
        raise table.fail("agent", "is missing")
    try:
        agent = AgentRef.parse(agent_text)
    except ValueError as exc:
        raise DefinitionError(f"{table.where}: {exc}.") from None
    raw_parameters = table.data.get("parameters", {})
    if not isinstance(raw_parameters, dict):
        raise table.fail("parameters", "must be a table of strings")
    parameters: dict[str, str] = {}
    for key, value in raw_parameters.items():
        if not PARAMETER_PATTERN.match(key):
            raise table.fail(f"parameters.{key}", "is not a valid parameter name")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise table.fail(f"parameters.{key}", "must be a string or a number")
        parameters[key] = value if isinstance(value, str) else str(value)
    raw_monitors = table.data.get("monitor", [])
    if not isinstance(raw_monitors, list):
        raise table.fail("monitor", "must be an array of tables ([[service.monitor]])")
    monitors = tuple(
        _monitor(f"{table.where}: monitor {i + 1}", m) for i, m in enumerate(raw_monitors)
    )
    depths = [m.depth for m in monitors]
    if len(set(depths)) != len(depths):
        raise table.fail("monitor", "lists one depth twice")
    instances = table.integer("instances", 1, minimum=1)
    promotable = table.boolean("promotable", False)
    if promotable and instances < 2:
        raise table.fail(
            "promotable", "needs instances >= 2 (a master and at least one slave to promote)"
        )
    recovery_text = table.string("recovery", Recovery.RESTART.value)
    try:
        recovery = Recovery(recovery_text)
    except ValueError:
        raise table.fail(
            "recovery", f"is {recovery_text!r}; it must be restart, relocate or disable"
        ) from None
    expire = table.seconds("restart_expire_time", DEFAULT_RESTART_EXPIRE_TIME)
    assert expire is not None
    domain = table.name("domain") if table.has("domain") else None
    return Service(
        name=name,
        agent=agent,
        parameters=parameters,
        monitors=tuple(sorted(monitors, key=lambda m: m.depth)),
        start_timeout=table.seconds("start_timeout", None),
        stop_timeout=table.seconds("stop_timeout", None),
        instances=instances,
        promotable=promotable,
        recovery=recovery,
        max_restarts=table.integer("max_restarts", DEFAULT_MAX_RESTARTS, minimum=0),
        restart_expire_time=expire,
        enabled=table.boolean("enabled", True),
        domain=domain,
        address=_address(table),
    )


def _member(where: str, position: int, data: object) -> DomainMember:
    if isinstance(data, str):
        data = {"node": data, "priority": position}
    table = _Table(f"{where}: node {position}", data, ("node", "priority"))
    return DomainMember(
        node=table.name("node"), priority=table.integer("priority", position, minimum=1)
    )


def _domain(data: object, where: str) -> FailoverDomain:
    table = _Table(
        where, data, ("name", "nodes", "server_group", "ordered", "restricted", "nofailback")
    )
    name = table.name("name")
    table.where = f"domain {name!r}"
    ordered = table.boolean("ordered", False)
    group = table.name("server_group") if table.has("server_group") else None
    raw_nodes = table.data.get("nodes")
    if group is not None and raw_nodes is not None:
        raise table.fail("nodes", "and server_group exclude each other; give one")
    members: tuple[DomainMember, ...] = ()
    if group is None:
        if not isinstance(raw_nodes, list) or not raw_nodes:
            raise table.fail("nodes", "must be a non-empty list (or give server_group)")
        members = tuple(_member(table.where, i + 1, n) for i, n in enumerate(raw_nodes))
        nodes = [m.node for m in members]
        twice = next((n for n in nodes if nodes.count(n) > 1), None)
        if twice is not None:
            raise table.fail("nodes", f"list {twice!r} twice")
    elif ordered:
        raise table.fail("ordered", "needs listed nodes with priorities, not a server_group")
    return FailoverDomain(
        name=name,
        members=members,
        server_group=group,
        ordered=ordered,
        restricted=table.boolean("restricted", False),
        nofailback=table.boolean("nofailback", False),
    )


def _check_together(
    services: tuple[Service, ...],
    domains: tuple[FailoverDomain, ...],
    outside: Mapping[str, FailoverDomain] | None = None,
) -> None:
    for kind, names in (
        ("service", [s.name for s in services]),
        ("domain", [d.name for d in domains]),
    ):
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice is not None:
            raise DefinitionError(f"{kind} {twice!r} is defined twice.")
    by_name = {d.name: d for d in domains}
    for service in services:
        if service.domain is None:
            continue
        domain = by_name.get(service.domain)
        if domain is None and outside is not None:
            domain = outside.get(service.domain)
        if domain is None:
            raise DefinitionError(
                f"service {service.name!r}: domain {service.domain!r} is not defined."
            )
        if domain.restricted and domain.members and len(domain.members) < service.instances:
            raise DefinitionError(
                f"service {service.name!r}: instances = {service.instances} cannot run on "
                f"restricted domain {domain.name!r} of {len(domain.members)} node(s)."
            )


def _items(data: dict[str, Any], key: str) -> list[object]:
    items = data.get(key, [])
    if not isinstance(items, list):
        raise DefinitionError(f"{key} must be an array of tables ([[{key}]]).")
    return items


def parse_definitions(
    text: str, *, known_domains: Mapping[str, FailoverDomain] | None = None
) -> Definitions:
    """Every service and domain in a definitions file's text; `DefinitionError` if any is bad.

    A service may name a domain of the file or, when given, one of
    `known_domains` (those already stored: `service add` passes them); a
    domain of the file takes the place of a known one of the same name.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DefinitionError(f"the definitions are not valid TOML: {exc}.") from None
    unknown = sorted(set(data) - {"service", "domain"})
    if unknown:
        raise DefinitionError(
            f"unknown top-level key {unknown[0]!r}; use [[service]] and [[domain]] tables."
        )
    domains = tuple(
        _domain(d, _named("domain", i + 1, d)) for i, d in enumerate(_items(data, "domain"))
    )
    services = tuple(
        _service(s, _named("service", i + 1, s)) for i, s in enumerate(_items(data, "service"))
    )
    _check_together(services, domains, known_domains)
    return Definitions(services=services, domains=domains)


def check_domain_reference(service: Service, domains: Mapping[str, FailoverDomain]) -> None:
    """Refuse `service` when it names a domain not in `domains` or too small for it."""
    _check_together((service,), tuple(domains.values()))


# --- the agent's defaults -----------------------------------------------------------------


def resolve(service: Service, info: AgentInfo) -> Service:
    """`service` with the agent's hints filled in, checked against what the agent can do.

    Fills start/stop timeouts and, when the service lists no monitors, the
    agent's monitor hints (interval and timeout per depth; a hint whose
    timeout is not below its interval gets a timeout of half the interval).
    Refuses `instances` above the agent's rgmanager `maxinstances`, a
    promotable service whose agent has no promote or demote, a parameter the
    agent does not take (a typo would otherwise be silently ignored by the
    agent) and a required parameter left out.
    """
    where = f"service {service.name!r}"
    if info.parameters:  # an agent that lists none is not checked
        known = {p.name for p in info.parameters}
        unknown = sorted(set(service.parameters) - known)
        if unknown:
            raise DefinitionError(
                f"{where}: parameters.{unknown[0]} is not a parameter of agent {service.agent}."
            )
        missing = sorted(
            p.name for p in info.parameters if p.required and p.name not in service.parameters
        )
        if missing:
            raise DefinitionError(
                f"{where}: parameters.{missing[0]} is required by agent {service.agent}."
            )
    if info.max_instances is not None and service.instances > info.max_instances:
        raise DefinitionError(
            f"{where}: instances = {service.instances} is above the agent's "
            f"maxinstances {info.max_instances}."
        )
    if service.promotable and not (info.has("promote") and info.has("demote")):
        raise DefinitionError(f"{where}: promotable, but agent {service.agent} cannot promote.")
    monitors = service.monitors
    if not monitors:
        found = []
        for hint in info.monitors():
            depth = hint.depth or 0
            if depth not in DEPTHS:
                continue
            interval = hint.interval or FALLBACK_MONITOR_INTERVAL
            timeout = hint.timeout or FALLBACK_TIMEOUT
            if timeout >= interval:
                timeout = interval / 2  # keep checks from piling up (see the module's docstring)
            found.append(Monitor(depth=depth, interval=interval, timeout=timeout))
        monitors = tuple(found) or (
            Monitor(
                depth=0, interval=FALLBACK_MONITOR_INTERVAL, timeout=FALLBACK_MONITOR_INTERVAL / 2
            ),
        )
    return replace(
        service,
        monitors=monitors,
        start_timeout=service.start_timeout or info.timeout("start") or FALLBACK_TIMEOUT,
        stop_timeout=service.stop_timeout or info.timeout("stop") or FALLBACK_TIMEOUT,
    )


# --- the self-fencing budget -------------------------------------------------------------


def stop_budget(service: Service, *, kill_grace: float, demote_timeout: float = 0.0) -> float:
    """Seconds a node may need to take `service` down: demote (if promotable), stop, kill."""
    demote = demote_timeout if service.promotable else 0.0
    return demote + (service.stop_timeout or FALLBACK_TIMEOUT) + kill_grace


def check_stop_fits(
    service: Service,
    *,
    lease_ttl: float,
    renew_interval: float,
    renew_timeout: float,
    fence_margin: float,
    kill_grace: float,
    demote_timeout: float = 0.0,
    agent_default: bool = False,
) -> None:
    """Refuse a service whose stop cannot be over before its node's lease may expire.

    A node must have stopped its instances by the time the store may expire
    its lease (docs/design/services.md, self-fencing); what the TTL leaves
    for that, after two renewal intervals, a renewal's timeout and the fence
    margin, must hold `stop_budget`. `agent_default`: the definition gives
    no `stop_timeout` and the agent's hint was filled in (the sentence says
    so: the operator never wrote that number).
    """
    spare = lease_ttl - 2 * renew_interval - renew_timeout - fence_margin
    budget = stop_budget(service, kill_grace=kill_grace, demote_timeout=demote_timeout)
    if budget > spare:
        stop = service.stop_timeout or FALLBACK_TIMEOUT
        source = "the agent's default; " if agent_default else ""
        added = "demote and kill grace" if service.promotable else "kill grace"
        remedy = "set a lower stop_timeout" if agent_default else "lower stop_timeout"
        raise DefinitionError(
            f"service {service.name!r}: stop_timeout {stop:g} s "
            f"({source}with {added} {budget:g} s) does not fit in the {spare:g} s a "
            f"{lease_ttl:g} s lease leaves for stopping; {remedy} or raise lease_ttl."
        )


class LeaseTimings(Protocol):
    """The session timings of a node role's instances (`Config.services_coordination`)."""

    @property
    def lease_ttl(self) -> int: ...
    @property
    def renew_interval(self) -> float: ...
    @property
    def renew_timeout(self) -> float: ...
    @property
    def fence_margin(self) -> float: ...


def check_lease_fits(
    service: Service, timings: LeaseTimings, *, kill_grace: float, agent_default: bool = False
) -> None:
    """`check_stop_fits` for a resolved service under `timings`, as the node role checks it.

    A promote runs within the start timeout and a demote within the stop
    timeout (a `Service` has no demote timeout of its own), each with the
    kill grace after it. `service add` and `validate` check the same, so a
    definition that every node would refuse is refused at once.
    `agent_default`: the stop timeout is the agent's hint, not the file's.
    """
    check_stop_fits(
        service,
        lease_ttl=timings.lease_ttl,
        renew_interval=timings.renew_interval,
        renew_timeout=timings.renew_timeout,
        fence_margin=timings.fence_margin,
        kill_grace=kill_grace,
        demote_timeout=(service.stop_timeout or 0.0) + kill_grace,
        agent_default=agent_default,
    )


# --- JSON for the store -------------------------------------------------------------------


def service_table(service: Service) -> dict[str, object]:
    """The service as the TOML table that defines it (defaults included)."""
    table: dict[str, object] = {
        "name": service.name,
        "agent": str(service.agent),
        "parameters": dict(service.parameters),
        "monitor": [
            {"depth": m.depth, "interval": m.interval, "timeout": m.timeout}
            for m in service.monitors
        ],
        "instances": service.instances,
        "promotable": service.promotable,
        "recovery": service.recovery.value,
        "max_restarts": service.max_restarts,
        "restart_expire_time": service.restart_expire_time,
        "enabled": service.enabled,
    }
    optional = {
        "start_timeout": service.start_timeout,
        "stop_timeout": service.stop_timeout,
        "domain": service.domain,
        "address": service.address,
    }
    table.update({k: v for k, v in optional.items() if v is not None})
    return table


def domain_table(domain: FailoverDomain) -> dict[str, object]:
    """The domain as the TOML table that defines it."""
    table: dict[str, object] = {
        "name": domain.name,
        "ordered": domain.ordered,
        "restricted": domain.restricted,
        "nofailback": domain.nofailback,
    }
    if domain.server_group is not None:
        table["server_group"] = domain.server_group
    else:
        table["nodes"] = [{"node": m.node, "priority": m.priority} for m in domain.members]
    return table


def _encode(table: dict[str, object]) -> bytes:
    return json.dumps(table, sort_keys=True, separators=(",", ":")).encode()


def _decode(data: bytes, kind: str, build: Callable[[object, str], Any]) -> Any:
    try:
        table = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise StoredDefinitionError(f"a stored {kind} definition is not JSON.") from None
    try:
        return build(table, f"stored {kind}")
    except DefinitionError as exc:
        raise StoredDefinitionError(f"a stored {kind} definition is invalid: {exc}") from None


def encode_service(service: Service) -> bytes:
    return _encode(service_table(service))


def decode_service(data: bytes) -> Service:
    service: Service = _decode(data, "service", _service)
    return service


def encode_domain(domain: FailoverDomain) -> bytes:
    return _encode(domain_table(domain))


def decode_domain(data: bytes) -> FailoverDomain:
    domain: FailoverDomain = _decode(data, "domain", _domain)
    return domain


__all__ = [
    "ADDRESS_FIELDS",
    "DEPTHS",
    "AgentRef",
    "DefinitionError",
    "Definitions",
    "DomainMember",
    "FailoverDomain",
    "LeaseTimings",
    "Monitor",
    "Recovery",
    "Service",
    "StoredDefinitionError",
    "check_domain_reference",
    "check_lease_fits",
    "check_stop_fits",
    "decode_domain",
    "decode_service",
    "domain_table",
    "encode_domain",
    "encode_service",
    "parse_definitions",
    "resolve",
    "service_table",
    "stop_budget",
]
