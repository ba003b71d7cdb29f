"""Driver: reads a lab's kernel objects and carries out the plan's actions.

Links, addresses, routes and namespaces go through netlink (pyroute2);
qdiscs through `tc` and the loss rule through `nft`, whose command lines are
shorter and clearer than their netlink encodings; the root-side ports get
UDP segmentation offload turned off (ethtool through pyroute2), so a
segmented send is cut into datagrams on the "wire" and the loss rule drops
datagrams one by one. This module decides
nothing: `observe` fills in an `ObservedLab`, `apply` does what
`plan.diff` / `plan.teardown` returned, in order.

pyroute2's synchronous API runs an event loop of its own, which cannot run
inside a thread that already runs one; `off_event_loop` moves a call to a
worker thread in that case, so the blocking lab API also works (blocking)
when called from async code.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns
from pyroute2.ethtool import Ethtool
from pyroute2.netlink.exceptions import NetlinkError

from servergroup.common.errors import MissingDependency, PermissionNeeded, ProcessFailed
from servergroup.common.process import stop_all
from servergroup.common.runner import CommandFailed, CommandNotFound, run
from servergroup.lab.errors import LabError
from servergroup.lab.plan import (
    HOST_IFNAME,
    LOSS_MODULUS,
    MULTICAST_NETWORK,
    NFT_CHAIN,
    NFT_TABLE,
    Action,
    AddAddress,
    AddMulticastRoute,
    ClearLoss,
    ClearShaping,
    ConfigureBridge,
    ConfigureHostLink,
    ConfigurePort,
    CreateBridge,
    CreateNamespace,
    CreateVeth,
    DeleteBridge,
    DeleteLink,
    Loss,
    LossScope,
    Marker,
    ObservedBridge,
    ObservedHost,
    ObservedLab,
    ObservedLink,
    ObservedPort,
    RemoveAddress,
    RemoveNamespace,
    SetLoss,
    SetShaping,
    Shaping,
    bridge_name,
    describe,
    markers_by_name,
    member_index,
)

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Where `ip netns` (and pyroute2) keep named namespaces.
NETNS_DIR = Path("/run/netns")
#: Programs the lab runs, and the Debian package of each.
TOOLS = {"ip": "iproute2", "tc": "iproute2", "nft": "nftables", "nsenter": "util-linux"}
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
IFF_UP = 0x1
MAIN_TABLE = 254
#: How long a tool may take before the lab gives up on it.
TOOL_TIMEOUT = 20.0
#: How long processes in a namespace being removed get to exit on SIGTERM, then SIGKILL.
TERM_TIMEOUT = 1.0
KILL_TIMEOUT = 2.0


# --- preconditions ---------------------------------------------------------------------


def check_privileges() -> None:
    """PermissionNeeded unless this process may create namespaces and configure links."""
    effective = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                effective = int(line.split()[1], 16)
    except OSError:
        effective = 0
    needed = (1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN)
    if effective & needed != needed:
        raise PermissionNeeded(
            "the lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to manage network "
            "namespaces; run it as root."
        )


def check_tools() -> None:
    """MissingDependency naming every program the lab needs that is not on PATH."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        packages = sorted({TOOLS[tool] for tool in missing})
        raise MissingDependency(
            f"the lab needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed; install the Debian package{'s' if len(packages) > 1 else ''} "
            f"{' and '.join(packages)}."
        )


def off_event_loop(func: Callable[P, R]) -> Callable[P, R]:
    """Run `func` in a worker thread when the calling thread runs an event loop."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return func(*args, **kwargs)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="servergroup-lab") as pool:
            return pool.submit(func, *args, **kwargs).result()

    return wrapper


# --- reading -------------------------------------------------------------------------


def list_namespaces() -> list[str]:
    """Names of the named network namespaces on this machine."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def namespace_exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


def root_addresses() -> list[IPv4Interface]:
    """Every IPv4 address of the root namespace (to pick a free lab subnet)."""
    with IPRoute() as ipr:
        return [_interface(msg) for msg in ipr.addr("dump", family=socket.AF_INET)]


def lab_markers() -> dict[str, Marker]:
    """Every lab on this machine, found by its bridge's marker: lab name -> marker."""
    with IPRoute() as ipr:
        aliases = {msg.get("ifname"): msg.get("ifalias") for msg in ipr.link("dump")}
    return markers_by_name(aliases)


def observe(name: str, *, also: Iterable[str] = ()) -> ObservedLab:
    """Everything that belongs to lab `name`: objects named after it, plus `also`."""
    extra = set(also)

    def ours(ifname: str) -> bool:
        return member_index(name, ifname) is not None or ifname in extra

    bridge: ObservedBridge | None = None
    port_msgs: list[Any] = []
    with IPRoute() as ipr:
        links = ipr.link("dump")
        names = {msg["index"]: msg.get("ifname") for msg in links}
        for msg in links:
            ifname = msg.get("ifname")
            if ifname == bridge_name(name):
                addresses = ipr.addr("dump", family=socket.AF_INET, index=msg["index"])
                bridge = _bridge(msg, tuple(_interface(a) for a in addresses))
            elif ours(ifname) and _kind(msg) == "veth":
                port_msgs.append(msg)
    shapings = _shapings(None) if port_msgs else {}
    ports = tuple(
        ObservedPort(
            ifname=msg.get("ifname"),
            mtu=msg.get("mtu"),
            up=bool(msg["flags"] & IFF_UP),
            master=names.get(msg.get("master")) if msg.get("master") else None,
            shaping=shapings.get(msg.get("ifname")),
        )
        for msg in port_msgs
    )
    hosts = tuple(_observe_host(netns) for netns in list_namespaces() if ours(netns))
    return ObservedLab(name=name, bridge=bridge, ports=ports, hosts=hosts)


def _observe_host(netns: str) -> ObservedHost:
    try:
        ipr = IPRoute(netns=netns, flags=0)
    except OSError:
        return ObservedHost(
            netns=netns,
            loopback_up=False,
            link=None,
            multicast_route=False,
            shaping=None,
            loss=None,
            loss_table=False,
            usable=False,
        )
    with ipr:
        links = {msg.get("ifname"): msg for msg in ipr.link("dump")}
        loopback = links.get("lo")
        msg = links.get(HOST_IFNAME)
        link = None
        multicast_route = False
        if msg is not None:
            addresses = ipr.addr("dump", family=socket.AF_INET, index=msg["index"])
            link = ObservedLink(
                ifname=HOST_IFNAME,
                mtu=msg.get("mtu"),
                up=bool(msg["flags"] & IFF_UP),
                addresses=tuple(_interface(a) for a in addresses),
            )
            multicast_route = any(
                route.get("dst") == str(MULTICAST_NETWORK.network_address)
                and route.get("dst_len") == MULTICAST_NETWORK.prefixlen
                and route.get("oif") == msg["index"]
                for route in ipr.route("dump", family=socket.AF_INET, table=MAIN_TABLE)
            )
    shaping = _shapings(netns).get(HOST_IFNAME) if link is not None else None
    loss_table, loss = parse_nft_loss(_run(_in_netns(netns, ["nft", "-j", "list", "ruleset"])))
    return ObservedHost(
        netns=netns,
        loopback_up=loopback is not None and bool(loopback["flags"] & IFF_UP),
        link=link,
        multicast_route=multicast_route,
        shaping=shaping,
        loss=loss,
        loss_table=loss_table,
    )


def _bridge(msg: Any, addresses: tuple[IPv4Interface, ...]) -> ObservedBridge:
    data = msg.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    return ObservedBridge(
        ifname=msg.get("ifname"),
        mtu=msg.get("mtu"),
        up=bool(msg["flags"] & IFF_UP),
        marker=msg.get("ifalias"),
        addresses=addresses,
        multicast_snooping=bool(data.get_attr("IFLA_BR_MCAST_SNOOPING")),
        nf_call_iptables=bool(data.get_attr("IFLA_BR_NF_CALL_IPTABLES")),
    )


def _kind(msg: Any) -> str | None:
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def _interface(msg: Any) -> IPv4Interface:
    return IPv4Interface((msg.get("address"), msg["prefixlen"]))


def _shapings(netns: str | None) -> dict[str, Shaping]:
    where = ["-n", netns] if netns else []
    return parse_tc_shapings(_run(["tc", *where, "-j", "qdisc", "show"]))


def parse_tc_shapings(text: str) -> dict[str, Shaping]:
    """Root tbf qdiscs in `tc -j qdisc show` output: device -> Shaping."""
    found: dict[str, Shaping] = {}
    for qdisc in json.loads(text or "[]"):
        options = qdisc.get("options") or {}
        if qdisc.get("kind") == "tbf" and qdisc.get("root") and "dev" in qdisc:
            found[qdisc["dev"]] = Shaping(
                rate=int(options["rate"]),
                burst=int(options["burst"]),
                latency_us=int(options["lat"]),
            )
    return found


def parse_nft_loss(text: str) -> tuple[bool, Loss | None]:
    """From `nft -j list ruleset`: is our table there, and the loss its rule applies.

    A rule we cannot read as ours gives (True, None), so the plan replaces it.
    """
    present = False
    for item in json.loads(text or "{}").get("nftables", []):
        table = item.get("table")
        if table and table.get("family") == "ip" and table.get("name") == NFT_TABLE:
            present = True
        rule = item.get("rule")
        if not rule or rule.get("table") != NFT_TABLE or rule.get("chain") != NFT_CHAIN:
            continue
        threshold = None
        drawn = False
        drops = False
        scope = LossScope.ALL
        for expr in rule.get("expr", []):
            drops = drops or "drop" in expr
            match = expr.get("match") or {}
            left = match.get("left") or {}
            numgen = left.get("numgen") if isinstance(left, dict) else None
            if numgen:
                drawn = True
                if numgen.get("mode") == "random" and numgen.get("mod") == LOSS_MODULUS:
                    threshold = match.get("right")
            meta = left.get("meta") if isinstance(left, dict) else None
            if meta and meta.get("key") == "l4proto" and match.get("right") == "udp":
                scope = LossScope.UDP
        if drops and not drawn:
            threshold = LOSS_MODULUS  # no draw: everything is dropped (100 %)
        if drops and isinstance(threshold, int) and 0 < threshold <= LOSS_MODULUS:
            return present, Loss(per10000=threshold, scope=scope)
    return present, None


def render_nft_loss(ifname: str, loss: Loss | None) -> str:
    """An nft script that replaces our table atomically; None removes it."""
    # Declaring the table first makes the delete succeed whether or not it existed.
    script = f"table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}\n"
    if loss is None:
        return script
    protocol = "meta l4proto udp " if loss.scope is LossScope.UDP else ""
    # nft refuses a comparison with a value numgen never reaches: a loss of
    # 100 % drops everything, with no draw.
    draw = (
        f"numgen random mod {LOSS_MODULUS} < {loss.per10000} "
        if loss.per10000 < LOSS_MODULUS
        else ""
    )
    # priority -300: before conntrack, so a dropped datagram leaves no trace.
    return script + (
        f"table ip {NFT_TABLE} {{\n"
        f"  chain {NFT_CHAIN} {{\n"
        "    type filter hook prerouting priority -300; policy accept;\n"
        f'    iifname "{ifname}" {protocol}{draw}drop\n'
        "  }\n"
        "}\n"
    )


def render_tbf(netns: str | None, ifname: str, shaping: Shaping | None) -> list[str]:
    """The tc command that sets (or, for None, removes) the tbf on a device."""
    where = ["-n", netns] if netns else []
    if shaping is None:
        return ["tc", *where, "qdisc", "del", "dev", ifname, "root"]
    return [
        "tc", *where, "qdisc", "replace", "dev", ifname, "root", "tbf",
        "rate", f"{shaping.rate * 8}bit",
        "burst", str(shaping.burst),
        "latency", f"{shaping.latency_us}us",
    ]  # fmt: skip


# --- running programs ----------------------------------------------------------------


def netns_command(netns: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs `argv` in the network namespace `netns` only.

    `nsenter --net` joins the namespace and execs `argv` (its PID is the
    command's): the network is the lab host's, everything else (mounts, `/sys`
    and its cgroups, `/proc`, `/etc`) the machine's, as on a host whose
    network is its own. `ip netns exec` would also remount `/sys` for the
    namespace, which hides the cgroup hierarchy a host daemon places its lab
    servers in, so a host daemon could not run there.
    """
    return ["nsenter", f"--net={NETNS_DIR / netns}", "--", *argv]


def _in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def _run(argv: Sequence[str], *, stdin: str | None = None) -> str:
    try:
        return run(argv, timeout=TOOL_TIMEOUT, input=stdin, check=True).out
    except CommandNotFound:
        check_tools()
        raise
    except CommandFailed as exc:
        raise LabError(str(exc)) from None


# --- processes in a namespace --------------------------------------------------------


def namespace_pids(netns: str) -> list[int]:
    """Processes whose network namespace is `netns` (ours excluded)."""
    try:
        ns = os.stat(NETNS_DIR / netns)
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # gone, a zombie, or a kernel thread we may not look at
            continue
        if (st.st_dev, st.st_ino) == (ns.st_dev, ns.st_ino):
            pids.append(int(entry))
    return pids


def end_processes(netns: str) -> int:
    """SIGTERM what runs in `netns`, SIGKILL what is still there; the number ended."""
    try:
        return stop_all(
            lambda: namespace_pids(netns),
            what=f"namespace {netns}",
            term_timeout=TERM_TIMEOUT,
            kill_timeout=KILL_TIMEOUT,
        )
    except ProcessFailed as exc:
        raise LabError(str(exc)) from None


# --- applying ------------------------------------------------------------------------


class _Sockets:
    """Netlink sockets, one per namespace, opened on first use during one `apply`."""

    def __init__(self) -> None:
        self._open: dict[str | None, Any] = {}

    def __call__(self, netns: str | None) -> Any:
        if netns not in self._open:
            self._open[netns] = IPRoute() if netns is None else IPRoute(netns=netns, flags=0)
        return self._open[netns]

    def forget(self, netns: str) -> None:
        ipr = self._open.pop(netns, None)
        if ipr is not None:
            ipr.close()

    def close(self) -> None:
        for ipr in self._open.values():
            ipr.close()
        self._open.clear()


@contextmanager
def _sockets() -> Iterator[_Sockets]:
    sockets = _Sockets()
    try:
        yield sockets
    finally:
        sockets.close()


def apply(actions: Sequence[Action]) -> None:
    """Carry out `actions` in order; LabError on the first that fails."""
    with _sockets() as sockets:
        for action in actions:
            log.debug("lab: %s", action)
            try:
                _apply_one(sockets, action)
            except NetlinkError as exc:
                raise LabError(f"{describe(action)} failed: {os.strerror(exc.code)}.") from None
            except OSError as exc:
                raise LabError(f"{describe(action)} failed: {exc.strerror or exc}.") from None


def _index(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LabError(f"interface {ifname} has vanished.")
    return int(found[0])


def _apply_one(sockets: _Sockets, action: Action) -> None:
    match action:
        case CreateBridge(ifname=ifname, mtu=mtu, marker=marker):
            root = sockets(None)
            root.link(
                "add",
                ifname=ifname,
                kind="bridge",
                mtu=mtu,
                br_stp_state=0,
                br_mcast_snooping=0,  # flood multicast to every port: no IGMP querier here
                br_nf_call_iptables=0,  # the root's firewall has no say in the lab
            )
            root.link("set", index=_index(root, ifname), ifalias=marker, state="up")
        case ConfigureBridge(ifname=ifname, mtu=mtu, marker=marker):
            root = sockets(None)
            index = _index(root, ifname)
            root.link("set", index=index, kind="bridge", br_mcast_snooping=0, br_nf_call_iptables=0)
            root.link("set", index=index, mtu=mtu, ifalias=marker, state="up")
        case DeleteBridge(ifname=ifname) | DeleteLink(netns=None, ifname=ifname):
            _delete_link(sockets(None), ifname)
        case DeleteLink(netns=str(netns), ifname=ifname):
            _delete_link(sockets(netns), ifname)
        case AddAddress(netns=netns, ifname=ifname, address=address):
            ipr = sockets(netns)
            ipr.addr(
                "add",
                index=_index(ipr, ifname),
                address=str(address.ip),
                prefixlen=address.network.prefixlen,
                broadcast=str(address.network.broadcast_address),
            )
        case RemoveAddress(netns=netns, ifname=ifname, address=address):
            ipr = sockets(netns)
            ipr.addr(
                "del",
                index=_index(ipr, ifname),
                address=str(address.ip),
                prefixlen=address.network.prefixlen,
            )
        case CreateNamespace(netns=netns):
            pyroute2_netns.create(netns)
        case RemoveNamespace(netns=netns):
            sockets.forget(netns)
            ended = end_processes(netns)
            if ended:
                log.info("lab: ended %d process(es) in %s", ended, netns)
            with suppress(FileNotFoundError):
                pyroute2_netns.remove(netns)
        case CreateVeth(root_ifname=root_ifname, netns=netns, ifname=ifname):
            sockets(None).link(
                "add",
                ifname=root_ifname,
                kind="veth",
                peer={"ifname": ifname, "net_ns_fd": netns},
            )
        case ConfigurePort(ifname=ifname, bridge=bridge, mtu=mtu, up=up):
            root = sockets(None)
            root.link(
                "set",
                index=_index(root, ifname),
                master=_index(root, bridge),
                mtu=mtu,
                state="up" if up else "down",
            )
            segment_on_the_wire(ifname)
        case ConfigureHostLink(netns=netns, ifname=ifname, mtu=mtu):
            ipr = sockets(netns)
            ipr.link("set", index=_index(ipr, "lo"), state="up")
            ipr.link("set", index=_index(ipr, ifname), mtu=mtu, state="up")
        case AddMulticastRoute(netns=netns, ifname=ifname):
            ipr = sockets(netns)
            ipr.route(
                "replace",
                dst=str(MULTICAST_NETWORK.network_address),
                dst_len=MULTICAST_NETWORK.prefixlen,
                oif=_index(ipr, ifname),
            )
        case SetShaping(netns=netns, ifname=ifname, shaping=shaping):
            _run(render_tbf(netns, ifname, shaping))
        case ClearShaping(netns=netns, ifname=ifname):
            _run(render_tbf(netns, ifname, None))
        case SetLoss(netns=netns, ifname=ifname, loss=loss):
            _run(_in_netns(netns, ["nft", "-f", "-"]), stdin=render_nft_loss(ifname, loss))
        case ClearLoss(netns=netns):
            _run(_in_netns(netns, ["nft", "-f", "-"]), stdin=render_nft_loss(HOST_IFNAME, None))
        case _:
            raise AssertionError(f"no driver for {action!r}")


def segment_on_the_wire(ifname: str) -> None:
    """Make a root-side port cut segmented UDP sends into datagrams as it forwards them.

    A veth passes a sender's segmented send (`UDP_SEGMENT`: many datagrams
    in one buffer) along whole, so the receiving host's loss rule would see,
    and drop, a run of datagrams as one. A port without UDP segmentation
    offload makes the kernel cut the run before it leaves the bridge: each
    datagram then reaches the host, and its loss rule, on its own, as on a
    real wire.
    """
    ethtool = Ethtool()
    try:
        features = ethtool.get_features(ifname)
        feature = features.features.get("tx-udp-segmentation")
        if feature is not None and feature.enable:
            feature.enable = False
            ethtool.set_features(ifname, features)
    finally:
        ethtool.close()


def _delete_link(ipr: Any, ifname: str) -> None:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        return  # deleting one end of a veth pair takes the other end with it
    try:
        ipr.link("del", index=found[0])
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise
