"""The lab's pure core: what a lab should look like, and what to change to get there.

Theory of operation
-------------------
A lab is N hosts, each a network namespace whose `eth0` is one end of a veth
pair; the other end sits in the root namespace, enslaved to the lab's bridge.
The root namespace has an address on the bridge, so lab hosts reach services
it runs (etcd). A host's link may be rate limited (a `tc tbf` qdisc on both
ends, so upload and download are limited alike) and may lose incoming
datagrams at random (an nftables `numgen random` rule in the namespace).

This module turns a `LabSpec` (what the caller asked for) and the /24 given
to the lab into a `LabPlan` (every kernel object, by name). The driver reads
what exists into an `ObservedLab` snapshot; `diff(plan, observed)` returns
the ordered actions that turn the snapshot into the plan, and
`teardown(observed)` those that remove it. Nothing here does I/O, so the
same inputs always give the same actions. An observed state that matches the
plan gives no action: that makes `up` idempotent, and lets the driver verify
its own work by observing again and expecting an empty diff.

Invariants:

- Every kernel object of lab `n` is named from `n`: namespaces and root-side
  veths `n-h<i>`, bridge `n-br`. A lab can therefore be found and removed
  without its state file, and labs with different names never collide.
  Names fit IFNAMSIZ (15 bytes): lab names have at most 8 characters of
  [a-z0-9] (no '-', so `n-h<i>` is unambiguous), and a lab has at most 240
  hosts.
- Each lab owns one /24 of 198.18.0.0/15 (RFC 2544's benchmarking range, never
  routed): the root namespace is .1, host `h<i>` is .(10+i).
- The bridge is created first and removed last, and its alias is a marker
  naming the lab and, for a lab tied to a process's life, that process. So
  whatever a killed process left behind can be found and judged stale.
- Loss is applied to datagrams *arriving* at a host, UDP only by default: the
  multicast capability repairs over TCP, and a lossy repair channel would
  only slow tests down without testing anything new.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from enum import Enum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from servergroup.common import units
from servergroup.common.errors import UsageError
from servergroup.lab.errors import LabError

#: Where every lab address comes from (RFC 2544 benchmarking range).
LAB_RANGE = IPv4Network("198.18.0.0/15")
#: Each lab gets one subnet of this size.
SUBNET_PREFIXLEN = 24
#: Offset of the root namespace's address inside a lab subnet.
ROOT_OFFSET = 1
#: Host `h<i>` gets offset HOST_OFFSET + i.
HOST_OFFSET = 10
MAX_HOSTS = 240
MAX_NAME_LENGTH = 8
DEFAULT_NAME = "sg"
DEFAULT_MTU = 1500
MIN_MTU = 68
MAX_MTU = 65535
#: The host end of its veth, inside the host's namespace.
HOST_IFNAME = "eth0"
#: Multicast routes go out of `eth0` in every host.
MULTICAST_NETWORK = IPv4Network("224.0.0.0/4")
#: The nftables table (family ip) that holds a host's loss rule.
NFT_TABLE = "servergroup_lab"
NFT_CHAIN = "loss"
#: Loss is drawn as `numgen random mod LOSS_MODULUS < threshold`: 0.01 % steps.
LOSS_MODULUS = 10_000
#: A bridge alias starting with this marks a servergroup lab.
MARKER_PREFIX = "servergroup-lab"
#: Rates are kept in whole bytes per second, as tc does; below this tbf is useless.
MIN_RATE = 8_000
MAX_RATE = 10**13
#: Queueing delay a tbf qdisc allows before it drops (sets its byte limit).
TBF_LATENCY_US = 50_000
#: Ethernet header, counted by tbf in every frame.
ETH_HEADER = 14

_NAME_RE = re.compile(rf"[a-z][a-z0-9]{{0,{MAX_NAME_LENGTH - 1}}}")
_HOME_RE = re.compile(r"[0-9a-f]{1,64}")


class LossScope(Enum):
    """Which incoming IPv4 packets the loss rule may drop."""

    UDP = "udp"
    ALL = "all"


@dataclass(frozen=True, slots=True, kw_only=True)
class Owner:
    """The process a lab lives and dies with; start_time tells a reused PID apart."""

    pid: int
    start_time: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Marker:
    """What the bridge alias says about its lab."""

    name: str
    owner: Owner | None
    #: A digest of the state directory that made the lab (None: made before markers had it).
    home: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Loss:
    """Random loss of incoming packets: `per10000` of 10000 are dropped."""

    per10000: int
    scope: LossScope = LossScope.UDP

    @property
    def percent(self) -> float:
        return self.per10000 / 100


@dataclass(frozen=True, slots=True, kw_only=True)
class Shaping:
    """A tbf qdisc: `rate` and `burst` in bytes (per second), queueing delay in µs."""

    rate: int
    burst: int
    latency_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HostSpec:
    """What one host's link should be: rate in bits/s (None: unlimited), loss, up or down."""

    rate: int | None = None
    loss: Loss | None = None
    link_up: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class LabSpec:
    """What the caller asked for; host `h<i>` is `hosts[i - 1]`."""

    name: str
    mtu: int
    hosts: tuple[HostSpec, ...]
    owner: Owner | None = None
    home: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgePlan:
    ifname: str
    mtu: int
    address: IPv4Interface
    marker: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPlan:
    name: str
    index: int
    netns: str
    ifname: str
    root_ifname: str
    address: IPv4Interface
    mtu: int
    link_up: bool
    shaping: Shaping | None
    loss: Loss | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LabPlan:
    """Every kernel object of a lab, by name, as it should be."""

    name: str
    network: IPv4Network
    bridge: BridgePlan
    hosts: tuple[HostPlan, ...]


# --- what exists (filled in by the driver) -----------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedBridge:
    ifname: str
    mtu: int
    up: bool
    marker: str | None
    addresses: tuple[IPv4Interface, ...]
    multicast_snooping: bool
    nf_call_iptables: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedPort:
    """A root-side veth of the lab."""

    ifname: str
    mtu: int
    up: bool
    master: str | None
    shaping: Shaping | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedLink:
    """A host's `eth0`, inside its namespace."""

    ifname: str
    mtu: int
    up: bool
    addresses: tuple[IPv4Interface, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedHost:
    """A lab namespace and what is configured inside it.

    `usable` is False for a namespace name that cannot be entered (a process
    killed while creating it leaves an empty file in /run/netns).
    """

    netns: str
    loopback_up: bool
    link: ObservedLink | None
    multicast_route: bool
    shaping: Shaping | None
    loss: Loss | None
    loss_table: bool
    usable: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedLab:
    """A snapshot of everything on this machine that belongs to lab `name`."""

    name: str
    bridge: ObservedBridge | None
    ports: tuple[ObservedPort, ...]
    hosts: tuple[ObservedHost, ...]

    @property
    def empty(self) -> bool:
        return self.bridge is None and not self.ports and not self.hosts


# --- actions (carried out by the driver, in order) -------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateBridge:
    """Create the bridge up, with multicast snooping and br_netfilter off."""

    ifname: str
    mtu: int
    marker: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigureBridge:
    ifname: str
    mtu: int
    marker: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteBridge:
    ifname: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AddAddress:
    """Add `address` with its subnet's broadcast address (`brd +`)."""

    netns: str | None
    ifname: str
    address: IPv4Interface


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveAddress:
    netns: str | None
    ifname: str
    address: IPv4Interface


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateNamespace:
    netns: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveNamespace:
    """End the processes inside the namespace, then remove it."""

    netns: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateVeth:
    """A veth pair: `root_ifname` in the root namespace, `ifname` inside `netns`."""

    root_ifname: str
    netns: str
    ifname: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteLink:
    netns: str | None
    ifname: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigurePort:
    """Enslave a root-side veth to the bridge; its admin state is the host's link state."""

    ifname: str
    bridge: str
    mtu: int
    up: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigureHostLink:
    """Set the MTU of a host's interface and bring it and loopback up."""

    netns: str
    ifname: str
    mtu: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AddMulticastRoute:
    netns: str
    ifname: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SetShaping:
    netns: str | None
    ifname: str
    shaping: Shaping


@dataclass(frozen=True, slots=True, kw_only=True)
class ClearShaping:
    netns: str | None
    ifname: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SetLoss:
    netns: str
    ifname: str
    loss: Loss


@dataclass(frozen=True, slots=True, kw_only=True)
class ClearLoss:
    netns: str


Action = (
    CreateBridge
    | ConfigureBridge
    | DeleteBridge
    | AddAddress
    | RemoveAddress
    | CreateNamespace
    | RemoveNamespace
    | CreateVeth
    | DeleteLink
    | ConfigurePort
    | ConfigureHostLink
    | AddMulticastRoute
    | SetShaping
    | ClearShaping
    | SetLoss
    | ClearLoss
)


# --- the public view of a lab ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LabHost:
    """One lab host as it is: rate in bits/s (None: unlimited), loss in percent."""

    name: str
    index: int
    netns: str
    interface: str
    root_interface: str
    address: IPv4Address
    network: IPv4Network
    mtu: int
    rate: int | None
    loss: float
    loss_scope: LossScope
    link_up: bool
    #: Frozen by `Lab.freeze` (read from the host's freezer cgroup, not from netlink).
    frozen: bool = False

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready mapping (addresses as strings)."""
        return {
            "name": self.name,
            "netns": self.netns,
            "address": str(self.address),
            "prefixlen": self.network.prefixlen,
            "interface": self.interface,
            "root_interface": self.root_interface,
            "mtu": self.mtu,
            "rate": self.rate,
            "loss": self.loss,
            "loss_scope": self.loss_scope.value,
            "link_up": self.link_up,
            "frozen": self.frozen,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class LabStatus:
    """A lab as it is: its bridge, the root namespace's address on it, and its hosts."""

    name: str
    bridge: str
    network: IPv4Network
    root_address: IPv4Address
    mtu: int
    owner_pid: int | None
    hosts: tuple[LabHost, ...]

    def host(self, name: str) -> LabHost:
        """The host called `name` (`h1`, or its namespace name); UsageError if none."""
        index = parse_host(self.name, name)
        for host in self.hosts:
            if host.index == index:
                return host
        raise UsageError(f"lab {self.name} has no host {name}; it has {_host_range(self)}.")

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready mapping (addresses as strings)."""
        return {
            "name": self.name,
            "bridge": self.bridge,
            "network": str(self.network),
            "root_address": str(self.root_address),
            "mtu": self.mtu,
            "owner_pid": self.owner_pid,
            "hosts": [host.as_dict() for host in self.hosts],
        }


def _host_range(status: LabStatus) -> str:
    if not status.hosts:
        return "no hosts"
    return f"h1..h{len(status.hosts)}" if len(status.hosts) > 1 else "only h1"


# --- names, addresses, markers ---------------------------------------------------------


def validate_name(name: str) -> str:
    """Return `name` if it can name a lab, else raise UsageError."""
    if not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"lab name {name!r} is not valid; use 1 to {MAX_NAME_LENGTH} lowercase letters "
            "and digits, starting with a letter."
        )
    return name


def bridge_name(lab: str) -> str:
    return f"{lab}-br"


def host_name(index: int) -> str:
    return f"h{index}"


def host_netns(lab: str, index: int) -> str:
    """The namespace of host `h<index>`; the root-side veth has the same name."""
    return f"{lab}-h{index}"


def member_index(lab: str, name: str) -> int | None:
    """The host index if `name` is one of lab's namespace or root-side veth names."""
    match = re.fullmatch(rf"{re.escape(lab)}-h([1-9][0-9]*)", name)
    return int(match.group(1)) if match else None


def parse_host(lab: str, host: str) -> int:
    """The index of a host given as `h3`, `3` or `<lab>-h3`; UsageError otherwise."""
    for pattern in (r"h([1-9][0-9]*)", r"([1-9][0-9]*)"):
        match = re.fullmatch(pattern, host)
        if match:
            return int(match.group(1))
    index = member_index(lab, host)
    if index is None:
        raise UsageError(f"{host!r} is not a host name; hosts are called h1, h2, ...")
    return index


def network_at(slot: int) -> IPv4Network:
    """The `slot`-th /24 of the lab range."""
    base = int(LAB_RANGE.network_address) + (slot << (32 - SUBNET_PREFIXLEN))
    return IPv4Network((base, SUBNET_PREFIXLEN))


def lab_network_of(addresses: Iterable[IPv4Interface]) -> IPv4Network | None:
    """The lab subnet an address of the bridge belongs to, if any."""
    for address in addresses:
        if address.ip in LAB_RANGE:
            return IPv4Network((address.ip, SUBNET_PREFIXLEN), strict=False)
    return None


def choose_network(in_use: Iterable[IPv4Interface]) -> IPv4Network:
    """The lowest /24 of the lab range that no address of the root namespace touches."""
    slots = 1 << (SUBNET_PREFIXLEN - LAB_RANGE.prefixlen)
    taken: set[int] = set()
    for address in in_use:
        network = address.network
        if not network.overlaps(LAB_RANGE):
            continue
        if network.prefixlen >= SUBNET_PREFIXLEN:
            taken.add(_slot_of(network.network_address))
        else:
            first = max(int(network.network_address), int(LAB_RANGE.network_address))
            last = min(int(network.broadcast_address), int(LAB_RANGE.broadcast_address))
            taken.update(range(_slot_of(IPv4Address(first)), _slot_of(IPv4Address(last)) + 1))
    for slot in range(slots):
        if slot not in taken:
            return network_at(slot)
    raise UsageError(
        f"every /{SUBNET_PREFIXLEN} of {LAB_RANGE} is in use; take a lab down before "
        "bringing up another."
    )


def _slot_of(address: IPv4Address) -> int:
    return (int(address) - int(LAB_RANGE.network_address)) >> (32 - SUBNET_PREFIXLEN)


def encode_marker(marker: Marker) -> str:
    """The bridge alias for a lab: `servergroup-lab name=sg [owner=PID:START] [home=HEX]`."""
    text = f"{MARKER_PREFIX} name={marker.name}"
    if marker.owner is not None:
        text += f" owner={marker.owner.pid}:{marker.owner.start_time}"
    if marker.home is not None:
        text += f" home={marker.home}"
    return text


def decode_marker(text: str | None) -> Marker | None:
    """The marker in a bridge alias, or None if the alias is not one of ours."""
    if not text:
        return None
    words = text.split()
    if not words or words[0] != MARKER_PREFIX:
        return None
    fields = dict(word.partition("=")[::2] for word in words[1:])
    name = fields.get("name", "")
    if not _NAME_RE.fullmatch(name):
        return None
    owner = None
    if "owner" in fields:
        pid, _, start = fields["owner"].partition(":")
        if not (pid.isdigit() and start.isdigit()):
            return None
        owner = Owner(pid=int(pid), start_time=int(start))
    home = fields.get("home")
    if home is not None and not _HOME_RE.fullmatch(home):
        return None
    return Marker(name=name, owner=owner, home=home)


# --- rates and loss --------------------------------------------------------------------


def parse_rate(value: int | str | None) -> int | None:
    """Bits per second from `1gbit`, `100mbit`, `1.5mbit`, `64kibit` or an integer.

    None or "none" means unlimited. The result is rounded down to whole bytes
    per second, the unit tc works in, so a rate read back compares equal.
    """
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in ("none", "unlimited"):
        return None
    bits = units.parse_rate(value)
    if not MIN_RATE <= bits <= MAX_RATE:
        raise UsageError(
            f"rate {value!r} is out of range; give {format_rate(MIN_RATE)} to "
            f"{format_rate(MAX_RATE)}."
        )
    return bits - bits % 8


def format_rate(bits: int | None) -> str:
    """`1gbit`, `100mbit`, `1500kbit`, `12344bit`, or `unlimited` for None."""
    return "unlimited" if bits is None else units.format_rate(bits)


def parse_loss(value: float | str | None, scope: LossScope = LossScope.UDP) -> Loss | None:
    """Loss from a percentage (`5`, `0.5`, `12.25%`); 0 or None means no loss."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise UsageError(f"loss {value!r} is not a percentage.")
    text = str(value).strip().removesuffix("%")
    try:
        percent = Decimal(text)
    except InvalidOperation:
        raise UsageError(
            f"loss {value!r} is not a percentage; give a number from 0 to 100."
        ) from None
    if not percent.is_finite() or not 0 <= percent <= 100:
        raise UsageError(f"loss {value!r} is out of range; give a percentage from 0 to 100.")
    per10000 = int((percent * 100).to_integral_value())
    return Loss(per10000=per10000, scope=scope) if per10000 else None


def shaping_for(rate: int | None, mtu: int) -> Shaping | None:
    """The tbf that limits a link to `rate` bits/s.

    The bucket holds 4 ms at the rate (enough for the kernel's timer to keep
    up at Gbit/s speeds) but never less than four full frames, so a frame is
    never too big to pass.
    """
    if rate is None:
        return None
    per_second = rate // 8
    return Shaping(
        rate=per_second,
        burst=max(per_second // 250, 4 * (mtu + ETH_HEADER)),
        latency_us=TBF_LATENCY_US,
    )


def same_shaping(wanted: Shaping | None, seen: Shaping | None) -> bool:
    """True if `seen` (read back from tc) is `wanted`, allowing for tc's rounding."""
    if wanted is None or seen is None:
        return wanted is seen
    return (
        wanted.rate == seen.rate
        and _close(wanted.burst, seen.burst)
        and _close(wanted.latency_us, seen.latency_us)
    )


def _close(wanted: int, seen: int) -> bool:
    # tc stores burst and latency as times in its own ticks; reading them back
    # may differ from what was written by a few parts per thousand.
    return abs(wanted - seen) <= max(16, wanted // 200)


# --- spec and plan ---------------------------------------------------------------------


def make_spec(
    name: str,
    *,
    hosts: int,
    mtu: int = DEFAULT_MTU,
    rate: int | str | None = None,
    loss: float | str | None = None,
    loss_scope: LossScope = LossScope.UDP,
    owner: Owner | None = None,
    home: str | None = None,
) -> LabSpec:
    """A validated spec with the same link settings on every host, all links up.

    `home`: the digest of the state directory making it, kept in its marker.
    """
    validate_name(name)
    if isinstance(hosts, bool) or not isinstance(hosts, int) or not 1 <= hosts <= MAX_HOSTS:
        raise UsageError(f"a lab has 1 to {MAX_HOSTS} hosts, not {hosts!r}.")
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not MIN_MTU <= mtu <= MAX_MTU:
        raise UsageError(f"MTU {mtu!r} is out of range; give {MIN_MTU} to {MAX_MTU}.")
    host = HostSpec(rate=parse_rate(rate), loss=parse_loss(loss, loss_scope), link_up=True)
    return LabSpec(name=name, mtu=mtu, hosts=(host,) * hosts, owner=owner, home=home)


def with_host(spec: LabSpec, index: int, host: HostSpec) -> LabSpec:
    """`spec` with host `h<index>` replaced; UsageError if there is no such host."""
    if not 1 <= index <= len(spec.hosts):
        raise UsageError(f"lab {spec.name} has no host h{index}; it has h1..h{len(spec.hosts)}.")
    hosts = list(spec.hosts)
    hosts[index - 1] = host
    return replace(spec, hosts=tuple(hosts))


def plan_lab(spec: LabSpec, network: IPv4Network) -> LabPlan:
    """Every kernel object of the lab `spec` describes, living in `network`."""
    if network.prefixlen != SUBNET_PREFIXLEN or not network.subnet_of(LAB_RANGE):
        raise UsageError(f"{network} is not a /{SUBNET_PREFIXLEN} of {LAB_RANGE}.")
    base = network.network_address
    bridge = BridgePlan(
        ifname=bridge_name(spec.name),
        mtu=spec.mtu,
        address=IPv4Interface((base + ROOT_OFFSET, network.prefixlen)),
        marker=encode_marker(Marker(name=spec.name, owner=spec.owner, home=spec.home)),
    )
    hosts = tuple(
        HostPlan(
            name=host_name(index),
            index=index,
            netns=host_netns(spec.name, index),
            ifname=HOST_IFNAME,
            root_ifname=host_netns(spec.name, index),
            address=IPv4Interface((base + HOST_OFFSET + index, network.prefixlen)),
            mtu=spec.mtu,
            link_up=host.link_up,
            shaping=shaping_for(host.rate, spec.mtu),
            loss=host.loss,
        )
        for index, host in enumerate(spec.hosts, start=1)
    )
    return LabPlan(name=spec.name, network=network, bridge=bridge, hosts=hosts)


# --- diff ------------------------------------------------------------------------------


def diff(plan: LabPlan, observed: ObservedLab) -> tuple[Action, ...]:
    """The actions, in order, that turn `observed` into `plan`; empty if they agree."""
    actions: list[Action] = []
    want = plan.bridge
    bridge = observed.bridge
    if bridge is None:
        actions.append(CreateBridge(ifname=want.ifname, mtu=want.mtu, marker=want.marker))
        bridge = ObservedBridge(
            ifname=want.ifname,
            mtu=want.mtu,
            up=True,
            marker=want.marker,
            addresses=(),
            multicast_snooping=False,
            nf_call_iptables=False,
        )
    for address in bridge.addresses:
        if address != want.address:
            actions.append(RemoveAddress(netns=None, ifname=want.ifname, address=address))
    if want.address not in bridge.addresses:
        actions.append(AddAddress(netns=None, ifname=want.ifname, address=want.address))

    wanted = {host.netns for host in plan.hosts}
    for port in observed.ports:
        if port.ifname not in wanted:
            actions.append(DeleteLink(netns=None, ifname=port.ifname))
    for host in observed.hosts:
        if host.netns not in wanted:
            actions.append(RemoveNamespace(netns=host.netns))

    ports = {port.ifname: port for port in observed.ports}
    hosts = {host.netns: host for host in observed.hosts}
    for host_plan in plan.hosts:
        actions.extend(
            _host_actions(
                host_plan, want.ifname, ports.get(host_plan.root_ifname), hosts.get(host_plan.netns)
            )
        )

    # Last, once every port has its MTU: a bridge takes the smallest MTU of its ports.
    if (
        bridge.mtu != want.mtu
        or not bridge.up
        or bridge.marker != want.marker
        or bridge.multicast_snooping
        or bridge.nf_call_iptables
    ):
        actions.append(ConfigureBridge(ifname=want.ifname, mtu=want.mtu, marker=want.marker))
    return tuple(actions)


def _host_actions(
    plan: HostPlan, bridge: str, port: ObservedPort | None, host: ObservedHost | None
) -> list[Action]:
    actions: list[Action] = []
    if host is not None and not host.usable:
        actions.append(RemoveNamespace(netns=plan.netns))
        host = None
    if host is None:
        actions.append(CreateNamespace(netns=plan.netns))
        host = ObservedHost(
            netns=plan.netns,
            loopback_up=False,
            link=None,
            multicast_route=False,
            shaping=None,
            loss=None,
            loss_table=False,
        )
    link = host.link
    if port is None or link is None:
        # Half a veth pair cannot be repaired: remove what is left, make a new pair.
        if port is not None:
            actions.append(DeleteLink(netns=None, ifname=port.ifname))
        if link is not None:
            actions.append(DeleteLink(netns=plan.netns, ifname=link.ifname))
        actions.append(
            CreateVeth(root_ifname=plan.root_ifname, netns=plan.netns, ifname=plan.ifname)
        )
        port = ObservedPort(ifname=plan.root_ifname, mtu=0, up=False, master=None, shaping=None)
        link = ObservedLink(ifname=plan.ifname, mtu=0, up=False, addresses=())
        host = replace(host, link=link, multicast_route=False, shaping=None)

    if port.mtu != plan.mtu or port.up != plan.link_up or port.master != bridge:
        actions.append(
            ConfigurePort(ifname=plan.root_ifname, bridge=bridge, mtu=plan.mtu, up=plan.link_up)
        )
    if link.mtu != plan.mtu or not link.up or not host.loopback_up:
        actions.append(ConfigureHostLink(netns=plan.netns, ifname=plan.ifname, mtu=plan.mtu))
    for address in link.addresses:
        if address != plan.address:
            actions.append(RemoveAddress(netns=plan.netns, ifname=plan.ifname, address=address))
    if plan.address not in link.addresses:
        actions.append(AddAddress(netns=plan.netns, ifname=plan.ifname, address=plan.address))
    if not host.multicast_route:
        actions.append(AddMulticastRoute(netns=plan.netns, ifname=plan.ifname))

    # The same tbf on both ends: the host's upload and its download.
    for netns, ifname, seen in (
        (plan.netns, plan.ifname, host.shaping),
        (None, plan.root_ifname, port.shaping),
    ):
        if not same_shaping(plan.shaping, seen):
            if plan.shaping is None:
                actions.append(ClearShaping(netns=netns, ifname=ifname))
            else:
                actions.append(SetShaping(netns=netns, ifname=ifname, shaping=plan.shaping))

    if plan.loss is None:
        if host.loss_table:
            actions.append(ClearLoss(netns=plan.netns))
    elif host.loss != plan.loss or not host.loss_table:
        actions.append(SetLoss(netns=plan.netns, ifname=plan.ifname, loss=plan.loss))
    return actions


def teardown(observed: ObservedLab) -> tuple[Action, ...]:
    """The actions that remove every object of the observed lab, bridge last."""
    actions: list[Action] = [DeleteLink(netns=None, ifname=port.ifname) for port in observed.ports]
    actions.extend(RemoveNamespace(netns=host.netns) for host in observed.hosts)
    if observed.bridge is not None:
        actions.append(DeleteBridge(ifname=observed.bridge.ifname))
    return tuple(actions)


def describe(action: Action) -> str:
    """A few words for logs and error messages: `SetLoss sg-h2 eth0`."""
    where = getattr(action, "netns", None)
    what = getattr(action, "ifname", None) or getattr(action, "root_ifname", None)
    return " ".join(str(part) for part in (type(action).__name__, where, what) if part)


# --- reading a lab back ----------------------------------------------------------------


def summarize(observed: ObservedLab) -> LabStatus | None:
    """The lab as users see it, None if nothing of it exists; LabError if it is damaged."""
    if observed.empty:
        return None
    name = observed.name
    bridge = observed.bridge
    if bridge is None:
        raise _damaged(name, f"its bridge {bridge_name(name)} is missing")
    network = lab_network_of(bridge.addresses)
    if network is None:
        raise _damaged(name, f"its bridge {bridge.ifname} has no address in {LAB_RANGE}")
    marker = decode_marker(bridge.marker)
    ports = {port.ifname: port for port in observed.ports}
    by_index = {member_index(name, host.netns): host for host in observed.hosts}
    hosts: list[LabHost] = []
    for index in range(1, len(observed.hosts) + 1):
        host = by_index.get(index)
        if host is None:
            raise _damaged(name, f"host h{index} is missing")
        if not host.usable:
            raise _damaged(name, f"the namespace of host h{index} cannot be entered")
        port = ports.get(host.netns)
        link = host.link
        if port is None or link is None:
            raise _damaged(name, f"host h{index} has no link to the bridge")
        address = next((a for a in link.addresses if a.ip in network), None)
        if address is None:
            raise _damaged(name, f"host h{index} has no address in {network}")
        loss = host.loss
        hosts.append(
            LabHost(
                name=host_name(index),
                index=index,
                netns=host.netns,
                interface=link.ifname,
                root_interface=port.ifname,
                address=address.ip,
                network=network,
                mtu=link.mtu,
                rate=host.shaping.rate * 8 if host.shaping else None,
                loss=loss.percent if loss else 0.0,
                loss_scope=loss.scope if loss else LossScope.UDP,
                link_up=port.up,
            )
        )
    return LabStatus(
        name=name,
        bridge=bridge.ifname,
        network=network,
        root_address=network.network_address + ROOT_OFFSET,
        mtu=bridge.mtu,
        owner_pid=marker.owner.pid if marker and marker.owner else None,
        hosts=tuple(hosts),
    )


def spec_of(observed: ObservedLab) -> LabSpec | None:
    """The spec that would produce the observed lab (None if there is none)."""
    status = summarize(observed)
    if status is None:
        return None
    assert observed.bridge is not None  # summarize checked it
    marker = decode_marker(observed.bridge.marker)
    hosts = tuple(
        HostSpec(
            rate=host.rate,
            loss=parse_loss(host.loss, host.loss_scope),
            link_up=host.link_up,
        )
        for host in status.hosts
    )
    return LabSpec(
        name=status.name,
        mtu=status.mtu,
        hosts=hosts,
        owner=marker.owner if marker else None,
        home=marker.home if marker else None,
    )


def _damaged(name: str, problem: str) -> LabError:
    return LabError(
        f"lab {name} is incomplete ({problem}); bring it up again to repair it or take it down."
    )


def markers_by_name(aliases: Mapping[str, str | None]) -> dict[str, Marker]:
    """Labs found on this machine: bridge name -> alias in, lab name -> marker out."""
    found: dict[str, Marker] = {}
    for ifname, alias in aliases.items():
        marker = decode_marker(alias)
        if marker is not None and ifname == bridge_name(marker.name):
            found[marker.name] = marker
    return found
