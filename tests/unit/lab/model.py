"""A model of what the kernel does with each lab action, for testing `plan.diff` alone.

It follows the kernel where that matters to the plan: a veth pair lives and
dies as a pair, a namespace takes its end of the pair with it, and a fresh
veth starts down with MTU 1500.
"""

from __future__ import annotations

from dataclasses import replace

from servergroup.lab.plan import (
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
    ObservedBridge,
    ObservedHost,
    ObservedLab,
    ObservedLink,
    ObservedPort,
    RemoveAddress,
    RemoveNamespace,
    SetLoss,
    SetShaping,
)


def empty(name: str) -> ObservedLab:
    return ObservedLab(name=name, bridge=None, ports=(), hosts=())


def run(observed: ObservedLab, actions: tuple[Action, ...]) -> ObservedLab:
    for action in actions:
        observed = step(observed, action)
    return observed


def _host(lab: ObservedLab, netns: str) -> ObservedHost:
    return next(h for h in lab.hosts if h.netns == netns)


def _with_host(lab: ObservedLab, host: ObservedHost) -> ObservedLab:
    return replace(lab, hosts=tuple(host if h.netns == host.netns else h for h in lab.hosts))


def _port(lab: ObservedLab, ifname: str) -> ObservedPort:
    return next(p for p in lab.ports if p.ifname == ifname)


def _with_port(lab: ObservedLab, port: ObservedPort) -> ObservedLab:
    return replace(lab, ports=tuple(port if p.ifname == port.ifname else p for p in lab.ports))


def _drop_pair(lab: ObservedLab, pair: str) -> ObservedLab:
    """Remove the veth pair whose root end (and namespace) is called `pair`."""
    lab = replace(lab, ports=tuple(p for p in lab.ports if p.ifname != pair))
    hosts = tuple(
        replace(h, link=None, multicast_route=False, shaping=None) if h.netns == pair else h
        for h in lab.hosts
    )
    return replace(lab, hosts=hosts)


def step(lab: ObservedLab, action: Action) -> ObservedLab:
    match action:
        case CreateBridge(ifname=ifname, mtu=mtu, marker=marker):
            assert lab.bridge is None
            bridge = ObservedBridge(
                ifname=ifname,
                mtu=mtu,
                up=True,
                marker=marker,
                addresses=(),
                multicast_snooping=False,
                nf_call_iptables=False,
            )
            return replace(lab, bridge=bridge)
        case ConfigureBridge(mtu=mtu, marker=marker):
            assert lab.bridge is not None
            bridge = replace(
                lab.bridge,
                mtu=mtu,
                up=True,
                marker=marker,
                multicast_snooping=False,
                nf_call_iptables=False,
            )
            return replace(lab, bridge=bridge)
        case DeleteBridge():
            ports = tuple(replace(p, master=None) for p in lab.ports)
            return replace(lab, bridge=None, ports=ports)
        case AddAddress(netns=None, address=address):
            assert lab.bridge is not None
            assert address not in lab.bridge.addresses
            bridge = replace(lab.bridge, addresses=(*lab.bridge.addresses, address))
            return replace(lab, bridge=bridge)
        case AddAddress(netns=str(netns), address=address):
            host = _host(lab, netns)
            assert host.link is not None
            assert address not in host.link.addresses
            link = replace(host.link, addresses=(*host.link.addresses, address))
            return _with_host(lab, replace(host, link=link))
        case RemoveAddress(netns=None, address=address):
            assert lab.bridge is not None
            addresses = tuple(a for a in lab.bridge.addresses if a != address)
            return replace(lab, bridge=replace(lab.bridge, addresses=addresses))
        case RemoveAddress(netns=str(netns), address=address):
            host = _host(lab, netns)
            assert host.link is not None
            link = replace(
                host.link, addresses=tuple(a for a in host.link.addresses if a != address)
            )
            return _with_host(lab, replace(host, link=link))
        case CreateNamespace(netns=netns):
            assert all(h.netns != netns for h in lab.hosts)
            host = ObservedHost(
                netns=netns,
                loopback_up=False,
                link=None,
                multicast_route=False,
                shaping=None,
                loss=None,
                loss_table=False,
            )
            return replace(lab, hosts=(*lab.hosts, host))
        case RemoveNamespace(netns=netns):
            lab = _drop_pair(lab, netns)
            return replace(lab, hosts=tuple(h for h in lab.hosts if h.netns != netns))
        case CreateVeth(root_ifname=root, netns=netns, ifname=ifname):
            assert all(p.ifname != root for p in lab.ports)
            host = _host(lab, netns)
            assert host.link is None
            port = ObservedPort(ifname=root, mtu=1500, up=False, master=None, shaping=None)
            link = ObservedLink(ifname=ifname, mtu=1500, up=False, addresses=())
            lab = replace(lab, ports=(*lab.ports, port))
            return _with_host(lab, replace(host, link=link))
        case DeleteLink(ifname=ifname):
            pair = ifname if action.netns is None else action.netns
            return _drop_pair(lab, pair)
        case ConfigurePort(ifname=ifname, bridge=bridge, mtu=mtu, up=up):
            assert lab.bridge is not None
            assert lab.bridge.ifname == bridge
            return _with_port(lab, replace(_port(lab, ifname), master=bridge, mtu=mtu, up=up))
        case ConfigureHostLink(netns=netns, mtu=mtu):
            host = _host(lab, netns)
            assert host.link is not None
            link = replace(host.link, mtu=mtu, up=True)
            return _with_host(lab, replace(host, link=link, loopback_up=True))
        case AddMulticastRoute(netns=netns):
            host = _host(lab, netns)
            assert host.link is not None
            assert host.link.up
            return _with_host(lab, replace(host, multicast_route=True))
        case SetShaping(netns=None, ifname=ifname, shaping=shaping):
            return _with_port(lab, replace(_port(lab, ifname), shaping=shaping))
        case SetShaping(netns=str(netns), shaping=shaping):
            return _with_host(lab, replace(_host(lab, netns), shaping=shaping))
        case ClearShaping(netns=None, ifname=ifname):
            return _with_port(lab, replace(_port(lab, ifname), shaping=None))
        case ClearShaping(netns=str(netns)):
            return _with_host(lab, replace(_host(lab, netns), shaping=None))
        case SetLoss(netns=netns, loss=loss):
            return _with_host(lab, replace(_host(lab, netns), loss=loss, loss_table=True))
        case ClearLoss(netns=netns):
            return _with_host(lab, replace(_host(lab, netns), loss=None, loss_table=False))
    raise AssertionError(f"the model has no rule for {action!r}")
