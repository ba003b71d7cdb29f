"""Typed, frozen configuration, read once at the edge.

Sources, lowest precedence first: built-in defaults, a TOML file
(`--config`, `$SERVERGROUP_CONFIG`, or `/etc/servergroup/servergroup.toml`
when it exists), environment variables `SERVERGROUP_*`, command-line
options. Everything is validated here, so runtime code never meets an unsafe
or malformed setting: a bad value is one `ConfigError` sentence naming it.

Example file::

    state_dir = "/var/lib/servergroup"

    [coordination]  # an etcd cluster of your own (none: the managed local etcd)
    endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379", "https://10.0.0.3:2379"]
    ca_file = "/etc/servergroup/etcd/ca.crt"          # trusts the members' certificates
    cert_file = "/etc/servergroup/etcd/client.crt"    # our client certificate ...
    key_file = "/etc/servergroup/etcd/client.key"     # ... and its key
    prefix = "/servergroup/v1/"
    lease_ttl = 2
    renew_interval = 0.25

A plain `http://` endpoint that is not on loopback is refused (anyone on
the network could read and write the store) unless `insecure = true`.

    [etcd]          # the managed local etcd, used when no endpoint is set
    client_port = 12379
    peer_port = 12380

    [services]      # the service manager's node role
    enabled = true
    ocf_root = "/usr/lib/ocf"
    lease_ttl = 1   # the lease its instances are held on (stops must fit in it)
    renew_interval = 0.1

    [api]           # the host daemon's HTTP API and /metrics (docs/design/api.md)
    enabled = true
    bind = "127.0.0.1"
    port = 8470
    token_file = "/etc/servergroup/api-token"   # required when bind is not loopback
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from servergroup.common.errors import ConfigError

DEFAULT_PREFIX = "/servergroup/v1/"
SYSTEM_CONFIG = Path("/etc/servergroup/servergroup.toml")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One etcd client URL, parsed; `secure`: `https://` (TLS), else plain `http://`."""

    host: str
    port: int
    secure: bool = False

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse `http://host:port`, `https://host:port`, `host:port` or `host` (port 2379)."""
        raw = text.strip()
        if not raw:
            raise ConfigError("an etcd endpoint is empty; give host:port or https://host:port.")
        if "://" not in raw:
            raw = "http://" + raw
        try:
            parts = urlsplit(raw)
        except ValueError:  # an unclosed [ of an IPv6 address, and the like
            raise ConfigError(f"etcd endpoint {text!r} is not of the form host:port.") from None
        if parts.scheme not in ("http", "https"):
            raise ConfigError(
                f"etcd endpoint {text!r} uses {parts.scheme}://, but only http:// and "
                "https:// are supported."
            )
        try:
            port = parts.port if parts.port is not None else 2379
        except ValueError:
            port = 0
        if not 1 <= port <= 65535:
            raise ConfigError(f"etcd endpoint {text!r} has an invalid port.")
        if not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(f"etcd endpoint {text!r} is not of the form host:port.")
        return cls(host=parts.hostname, port=port, secure=parts.scheme == "https")

    @property
    def loopback(self) -> bool:
        """True when the host is `localhost` or a loopback address (127.0.0.0/8, ::1)."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: it may resolve anywhere
            return False

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.secure else 'http'}://{host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CoordinationConfig:
    """How to reach the store and how sessions keep their lease.

    Safety rule (checked in `validate`): a session must be able to try to renew
    twice, each attempt bounded by `renew_timeout`, before it reaches its
    self-fencing deadline `lease_ttl - fence_margin`, the moment it stops
    acting as an owner. Otherwise one slow renewal would fence a healthy
    owner, or worse, an owner could act after its lease is gone.
    """

    endpoints: tuple[Endpoint, ...] = ()  # empty: the managed local etcd
    prefix: str = DEFAULT_PREFIX
    lease_ttl: int = 1  # whole seconds: etcd grants leases in seconds
    renew_interval: float = 0.2
    fence_margin: float = 0.2
    renew_timeout: float = 0.25  # one lease renewal attempt
    request_timeout: float = 1.0  # one attempt of any other request at one member
    operation_timeout: float = 10.0  # all attempts of one operation, over all members
    #: TLS with `https://` endpoints: the CA that signed the members' certificates
    #: (empty: the CAs gRPC trusts by default), and our client certificate and key
    #: (both or neither; needed when the members run with `--client-cert-auth`).
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    #: Allow plain `http://` endpoints that are not on loopback.
    insecure: bool = False

    @property
    def tls(self) -> bool:
        """True when the endpoints speak TLS (`https://`)."""
        return any(e.secure for e in self.endpoints)

    def validate(self) -> CoordinationConfig:
        self._validate_tls()
        if not self.prefix.startswith("/") or not self.prefix.endswith("/"):
            raise ConfigError(f"coordination prefix {self.prefix!r} must start and end with '/'.")
        if self.lease_ttl < 1:
            raise ConfigError(f"lease_ttl is {self.lease_ttl}s; etcd's smallest lease is 1 s.")
        for name in (
            "renew_interval",
            "fence_margin",
            "renew_timeout",
            "request_timeout",
            "operation_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds.")
        budget = self.lease_ttl - self.fence_margin
        needed = 2 * self.renew_interval + self.renew_timeout
        if needed > budget:
            raise ConfigError(
                f"unsafe timings: 2 x renew_interval ({self.renew_interval}s) + renew_timeout "
                f"({self.renew_timeout}s) = {needed:g}s exceeds lease_ttl - fence_margin "
                f"= {budget:g}s; lower renew_interval or raise lease_ttl."
            )
        if self.fence_margin < 0.05:
            raise ConfigError("fence_margin must be at least 0.05 s to cover scheduling delays.")
        return self

    def _validate_tls(self) -> None:
        if len({e.secure for e in self.endpoints}) > 1:
            raise ConfigError(
                "coordination endpoints mix http:// and https://; give every member's "
                "URL with the same scheme."
            )
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path and not os.path.isabs(path):
                raise ConfigError(f"coordination {name} {path!r} must be an absolute path.")
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError(
                "coordination cert_file and key_file go together: give both or neither."
            )
        files = [n for n in ("ca_file", "cert_file", "key_file") if getattr(self, n)]
        if files and self.endpoints and not self.tls:
            raise ConfigError(
                f"coordination {files[0]} is set but the endpoints are plain http://; "
                "use https:// endpoints for TLS, or drop the certificate settings."
            )
        if self.insecure:
            return
        for endpoint in self.endpoints:
            if not endpoint.secure and not endpoint.loopback:
                raise ConfigError(
                    f"etcd endpoint {endpoint} is plain http on a non-loopback address, "
                    "where anyone on the network could read and write the store; use "
                    "https:// with coordination ca_file, cert_file and key_file, or set "
                    "coordination insecure = true (SERVERGROUP_ETCD_INSECURE=1) to allow it."
                )


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalEtcdConfig:
    """The managed single-member etcd started when no endpoint is configured."""

    binary: str = "etcd"
    host: str = "127.0.0.1"
    client_port: int = 12379
    peer_port: int = 12380
    start_timeout: float = 15.0

    def validate(self) -> LocalEtcdConfig:
        for name in ("client_port", "peer_port"):
            port = getattr(self, name)
            if not 1 <= port <= 65535:
                raise ConfigError(f"etcd {name} {port} is not a TCP port number.")
        if self.client_port == self.peer_port:
            raise ConfigError("etcd client_port and peer_port must differ.")
        if not self.start_timeout > 0:
            raise ConfigError("etcd start_timeout must be a positive number of seconds.")
        return self


#: The default, least and most of `servers.channel_queue_limit` (bytes). The least is
#: one line of the channel protocol (65 536 bytes), so that any one message fits.
DEFAULT_CHANNEL_QUEUE_LIMIT = 4 << 20
MIN_CHANNEL_QUEUE_LIMIT = 64 << 10
MAX_CHANNEL_QUEUE_LIMIT = 1 << 30


@dataclass(frozen=True, slots=True, kw_only=True)
class ServersConfig:
    """How hosts look after servers."""

    #: How long a host's lease must have been gone before its servers are
    #: rebuilt elsewhere (groups with `evacuate = "auto"`); 0 rebuilds at once.
    evacuation_grace: float = 5.0
    #: Whether a lab server's guest agent runs the scale agent at `cgcs.scale` (off: a
    #: program of the server's own may bind that address, as the original scale agent did).
    lab_scale_agent: bool = True
    #: Bytes that may wait for one guest's channel before its messages are dropped
    #: (counted, and seen by its apps as a gap in `seq`): what a receiver that stalls
    #: while the group sends at full speed can catch up on. 4 MiB is about two seconds
    #: of 8 000 broadcasts/s of 100-byte texts; a frozen guest costs the host no more.
    channel_queue_limit: int = DEFAULT_CHANNEL_QUEUE_LIMIT

    def validate(self) -> ServersConfig:
        if not 0 <= self.evacuation_grace <= 86400:
            raise ConfigError(
                "servers evacuation_grace must be between 0 and 86400 seconds; "
                f"got {self.evacuation_grace:g}."
            )
        if not MIN_CHANNEL_QUEUE_LIMIT <= self.channel_queue_limit <= MAX_CHANNEL_QUEUE_LIMIT:
            raise ConfigError(
                f"servers channel_queue_limit must be between {MIN_CHANNEL_QUEUE_LIMIT} and "
                f"{MAX_CHANNEL_QUEUE_LIMIT} bytes; got {self.channel_queue_limit}."
            )
        return self


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalingConfig:
    """vCPU scaling on this host."""

    #: The host CPUs this host's servers' vCPUs are placed on, as a CPU list
    #: ("0-3,6"); empty: every CPU the host daemon may run on.
    cpu_pool: str = ""

    def validate(self) -> ScalingConfig:
        text = self.cpu_pool.strip()
        for part in text.split(",") if text else ():
            low, dash, high = part.partition("-")
            if (
                not low.isdigit()
                or (dash and not high.isdigit())
                or (dash and int(high) < int(low))
            ):
                raise ConfigError(
                    f"scaling cpu_pool {self.cpu_pool!r} is not a CPU list such as 0-3,6."
                )
        return self


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicesConfig:
    """The service manager's node role on this host (docs/design/services.md)."""

    #: Whether this host runs service instances (its host daemon has the node role).
    enabled: bool = True
    #: Where `ocf:<provider>:<type>` agents live (`$OCF_ROOT/resource.d/...`).
    ocf_root: str = "/usr/lib/ocf"
    #: This node's address for `{node_ip}` in address templates and parameters;
    #: empty: the host daemon's `--migration-address` (a lab host's own address).
    node_ip: str = ""
    #: The lease (whole seconds) the node role holds its instances on: a session
    #: of its own, with renewal timings of its own, because a node that cannot
    #: renew must have stopped its instances before the lease can expire
    #: (self-fencing), so every stop must fit in what the lease leaves
    #: (docs/design/services.md, "Self-fencing"). Longer buys slower stops and
    #: costs failover time when a whole host is lost (it is what that failover
    #: waits for).
    lease_ttl: int = 1
    #: How often the node role renews that lease, how long one renewal may take,
    #: and how long before the lease's proven end it stops acting: renewals ten
    #: times a second leave a 1 s lease room for stops of up to 0.45 s.
    renew_interval: float = 0.1
    renew_timeout: float = 0.15
    fence_margin: float = 0.1

    def validate(self) -> ServicesConfig:
        if not self.ocf_root.startswith("/"):
            raise ConfigError(f"services ocf_root {self.ocf_root!r} must be an absolute path.")
        if self.lease_ttl < 1:
            raise ConfigError(
                f"services lease_ttl is {self.lease_ttl}s; etcd's smallest lease is 1 s."
            )
        return self


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiConfig:
    """The host daemon's HTTP API (docs/design/api.md)."""

    #: Whether the host daemon serves the API (and `/metrics`).
    enabled: bool = True
    #: The address it listens on; anything but loopback needs `token_file`.
    bind: str = "127.0.0.1"
    #: Its TCP port; 0: one the kernel chooses (the log line says which).
    port: int = 8470
    #: A file whose first line is the bearer token; actions always need it, and
    #: reads too when `bind` is not loopback. Empty: no token (actions refused).
    token_file: str = ""

    def validate(self) -> ApiConfig:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"api port {self.port} is not a TCP port (0 to 65535).")
        try:
            address = ipaddress.ip_address(self.bind)
        except ValueError:
            raise ConfigError(
                f"api bind {self.bind!r} is not an IP address such as 127.0.0.1."
            ) from None
        if self.token_file and not self.token_file.startswith("/"):
            raise ConfigError(f"api token_file {self.token_file!r} must be an absolute path.")
        if self.enabled and not address.is_loopback and not self.token_file:
            raise ConfigError(
                f"api bind {self.bind} is not loopback, so it needs a bearer token: "
                "set [api] token_file to a file holding one."
            )
        return self

    @property
    def loopback(self) -> bool:
        """Whether the API listens on loopback only."""
        return ipaddress.ip_address(self.bind).is_loopback


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_STATE_HOME/servergroup`, else `/var/lib/servergroup` as root, else ~/.local/state."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_STATE_HOME")
    # The XDG base directory spec: a relative path in the variable is invalid; ignore it.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "servergroup"
    if os.geteuid() == 0:
        return Path("/var/lib/servergroup")
    return Path.home() / ".local" / "state" / "servergroup"


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything servergroup reads from outside, validated."""

    state_dir: Path = field(default_factory=default_state_dir)
    coordination: CoordinationConfig = field(default_factory=CoordinationConfig)
    etcd: LocalEtcdConfig = field(default_factory=LocalEtcdConfig)
    servers: ServersConfig = field(default_factory=ServersConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    services: ServicesConfig = field(default_factory=ServicesConfig)
    api: ApiConfig = field(default_factory=ApiConfig)

    def __post_init__(self) -> None:
        try:
            self.services_coordination  # noqa: B018 (validated at load)
        except ConfigError as exc:
            raise ConfigError(f"[services]: {exc}") from None

    @property
    def services_coordination(self) -> CoordinationConfig:
        """The coordination timings of the node role's own session (`[services]`'s lease)."""
        return dataclasses.replace(
            self.coordination,
            lease_ttl=self.services.lease_ttl,
            renew_interval=self.services.renew_interval,
            renew_timeout=self.services.renew_timeout,
            fence_margin=self.services.fence_margin,
        ).validate()

    @property
    def managed_etcd(self) -> bool:
        """True when servergroup runs its own local etcd (no endpoint configured)."""
        return not self.coordination.endpoints


def parse_endpoints(text: str | list[str] | tuple[str, ...]) -> tuple[Endpoint, ...]:
    """Parse a comma-separated string or a list of endpoints."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(Endpoint.parse(str(item)) for item in items if str(item).strip())


def _coerce(section: str, name: str, value: Any, default: Any) -> Any:
    """`value` (a TOML value, or a string from the environment) as the type of `default`.

    Strict: a value of another kind (a fraction for a whole number, a boolean
    for a number, NaN or infinity for a duration) is refused, not converted.
    """
    if name == "endpoints":
        if not isinstance(value, str | list | tuple):
            raise ConfigError(f"{section}.{name} must be a list of endpoints.")
        return parse_endpoints(value)
    invalid = ConfigError(
        f"{section + '.' if section else ''}{name} = {value!r} is not a valid value."
    )
    if isinstance(default, bool):
        words = {"1": True, "true": True, "yes": True, "on": True}
        words |= {"0": False, "false": False, "no": False, "off": False}
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in words:
            return words[value.lower()]
        raise invalid
    if isinstance(value, bool):  # bool is an int to Python, never to a user
        raise invalid
    if isinstance(default, int):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise invalid from None
        raise invalid
    if isinstance(default, float):
        if not isinstance(value, int | float | str):
            raise invalid
        try:
            number = float(value)
        except ValueError:
            raise invalid from None
        if not math.isfinite(number):
            raise invalid
        return number
    if isinstance(value, str | Path):
        return str(value)
    raise invalid


def _section(cls: type[Any], section: str, values: Mapping[str, Any]) -> Any:
    base = cls()
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown setting {section}.{unknown[0]}; known: {', '.join(sorted(known))}."
        )
    kwargs = {k: _coerce(section, k, v, getattr(base, k)) for k, v in values.items()}
    return dataclasses.replace(base, **kwargs).validate()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist.") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}.") from None


ENV_MAP = {
    "SERVERGROUP_STATE_DIR": ("", "state_dir"),
    "SERVERGROUP_ETCD_ENDPOINTS": ("coordination", "endpoints"),
    "SERVERGROUP_PREFIX": ("coordination", "prefix"),
    "SERVERGROUP_LEASE_TTL": ("coordination", "lease_ttl"),
    "SERVERGROUP_ETCD_CA": ("coordination", "ca_file"),
    "SERVERGROUP_ETCD_CERT": ("coordination", "cert_file"),
    "SERVERGROUP_ETCD_KEY": ("coordination", "key_file"),
    "SERVERGROUP_ETCD_INSECURE": ("coordination", "insecure"),
    "SERVERGROUP_ETCD_PORT": ("etcd", "client_port"),
    "SERVERGROUP_ETCD_PEER_PORT": ("etcd", "peer_port"),
    "SERVERGROUP_EVACUATION_GRACE": ("servers", "evacuation_grace"),
    "SERVERGROUP_LAB_SCALE_AGENT": ("servers", "lab_scale_agent"),
    "SERVERGROUP_CHANNEL_QUEUE_LIMIT": ("servers", "channel_queue_limit"),
    "SERVERGROUP_CPU_POOL": ("scaling", "cpu_pool"),
    "SERVERGROUP_SERVICES": ("services", "enabled"),
    "SERVERGROUP_OCF_ROOT": ("services", "ocf_root"),
    "SERVERGROUP_SERVICES_LEASE_TTL": ("services", "lease_ttl"),
    "SERVERGROUP_API": ("api", "enabled"),
    "SERVERGROUP_API_BIND": ("api", "bind"),
    "SERVERGROUP_API_PORT": ("api", "port"),
    "SERVERGROUP_API_TOKEN_FILE": ("api", "token_file"),
}


def load_config(
    path: Path | None = None,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build the validated `Config` from file, environment and `overrides`.

    `overrides` maps a section ("" for top level, "coordination", "etcd") to
    settings; a value of None means "not given" and is ignored.
    """
    env = os.environ if env is None else env
    layers: dict[str, dict[str, Any]] = {
        "": {},
        "coordination": {},
        "etcd": {},
        "servers": {},
        "scaling": {},
        "services": {},
        "api": {},
    }
    if path is None and env.get("SERVERGROUP_CONFIG"):
        path = Path(env["SERVERGROUP_CONFIG"])
    if path is None and SYSTEM_CONFIG.exists():
        path = SYSTEM_CONFIG
    if path is not None:
        data = _read_toml(path)
        for key, value in data.items():
            if key in ("coordination", "etcd", "servers", "scaling", "services", "api"):
                if not isinstance(value, dict):
                    raise ConfigError(f"[{key}] in {path} must be a table.")
                layers[key].update(value)
            elif key == "state_dir":
                layers[""][key] = value
            else:
                raise ConfigError(f"unknown setting {key!r} in {path}.")
    for var, (section, name) in ENV_MAP.items():
        if env.get(var):
            layers[section][name] = env[var]
    for section, values in (overrides or {}).items():
        if section not in layers:
            raise ConfigError(f"unknown config section {section!r}.")
        layers[section].update({k: v for k, v in values.items() if v is not None})
    state_dir: Path | None = None
    if "state_dir" in layers[""]:
        text = _coerce("", "state_dir", layers[""]["state_dir"], "")
        if not text:
            raise ConfigError("state_dir is empty; give a directory.")
        state_dir = Path(text)
    return Config(
        state_dir=state_dir if state_dir is not None else default_state_dir(env),
        coordination=_section(CoordinationConfig, "coordination", layers["coordination"]),
        etcd=_section(LocalEtcdConfig, "etcd", layers["etcd"]),
        servers=_section(ServersConfig, "servers", layers["servers"]),
        scaling=_section(ScalingConfig, "scaling", layers["scaling"]),
        services=_section(ServicesConfig, "services", layers["services"]),
        api=_section(ApiConfig, "api", layers["api"]),
    )


__all__ = [
    "DEFAULT_PREFIX",
    "ApiConfig",
    "Config",
    "CoordinationConfig",
    "Endpoint",
    "LocalEtcdConfig",
    "ScalingConfig",
    "ServersConfig",
    "ServicesConfig",
    "default_state_dir",
    "load_config",
    "parse_endpoints",
]
