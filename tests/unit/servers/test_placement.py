"""Placement: affinity, anti-affinity, explicit hosts, and the sentences of refusals."""

from __future__ import annotations

from dataclasses import replace

import pytest

from servergroup.servers.model import Desired, Policy, Server, ServerSpec, ServerStatus, VmState
from servergroup.servers.placement import PlacementError, choose_host, load_of


def member(name: str, host: str, *, status_host: str | None = None) -> Server:
    spec = ServerSpec(name=name, instance="instance-00000001", uuid=name, group="g", host=host)
    status = (
        ServerStatus(name=name, host=status_host, state=VmState.ACTIVE) if status_host else None
    )
    return Server(spec=spec, status=status)


def choose(
    policy: Policy,
    members: list[Server],
    live: tuple[str, ...] = ("h0", "h1", "h2"),
    load: dict[str, int] | None = None,
    requested: str | None = None,
) -> str:
    return choose_host(
        group="g",
        policy=policy,
        members=members,
        live_hosts=live,
        load=load or {},
        requested=requested,
    )


def test_no_live_host() -> None:
    with pytest.raises(PlacementError, match="no host is running: start one with `servergroup up`"):
        choose(Policy.AFFINITY, [], live=())


def test_affinity_first_member_goes_to_the_least_loaded_host() -> None:
    assert choose(Policy.AFFINITY, [], load={"h0": 2, "h1": 1, "h2": 1}) == "h1"
    assert choose(Policy.AFFINITY, [], requested="h2") == "h2"


def test_affinity_follows_the_members() -> None:
    assert choose(Policy.AFFINITY, [member("a", "h2")], load={"h2": 9}) == "h2"
    # a member moving from h0 to h1: the group's home is where it is going,
    # else the new member would stay behind on h0 while it leaves
    assert choose(Policy.AFFINITY, [member("a", "h1", status_host="h0")]) == "h1"
    with pytest.raises(PlacementError, match="run on h1: h0 would break it"):
        choose(Policy.AFFINITY, [member("a", "h1", status_host="h0")], requested="h0")


def test_affinity_refusals() -> None:
    with pytest.raises(PlacementError, match="run on h2: h1 would break it"):
        choose(Policy.AFFINITY, [member("a", "h2")], requested="h1")
    with pytest.raises(PlacementError, match="run on h5, which is not running"):
        choose(Policy.AFFINITY, [member("a", "h5")])


def test_anti_affinity_spreads() -> None:
    members = [member("a", "h0")]
    assert choose(Policy.ANTI_AFFINITY, members, load={"h1": 3, "h2": 1}) == "h2"
    assert choose(Policy.ANTI_AFFINITY, members, requested="h1") == "h1"


def test_anti_affinity_refusals() -> None:
    members = [member("a", "h0"), member("b", "h1")]
    with pytest.raises(PlacementError, match="h1 already runs one of its servers"):
        choose(Policy.ANTI_AFFINITY, members, requested="h1")
    with pytest.raises(PlacementError, match=r"every running host \(h0, h1\) already runs"):
        choose(Policy.ANTI_AFFINITY, members, live=("h0", "h1"))


def test_anti_affinity_a_moving_member_holds_both_hosts() -> None:
    # a moves from h0 to h1 (spec h1, status h0): neither may take a new member
    moving = [member("a", "h1", status_host="h0")]
    assert choose(Policy.ANTI_AFFINITY, moving) == "h2"
    for host in ("h0", "h1"):
        with pytest.raises(PlacementError, match=f"{host} already runs one of its servers"):
            choose(Policy.ANTI_AFFINITY, moving, requested=host)
    with pytest.raises(PlacementError, match="every running host"):
        choose(Policy.ANTI_AFFINITY, moving, live=("h0", "h1"))


def test_requested_host_must_be_live() -> None:
    with pytest.raises(PlacementError, match="host h9 is not running; running hosts: h0, h1, h2"):
        choose(Policy.ANTI_AFFINITY, [], requested="h9")


def test_load_counts_servers_not_being_deleted() -> None:
    gone = Server(spec=replace(member("c", "h1").spec, desired=Desired.DELETED))
    assert load_of([member("a", "h0"), member("b", "h0"), gone]) == {"h0": 2}


def test_soft_affinity_prefers_the_members_host_but_never_refuses() -> None:
    assert choose(Policy.SOFT_AFFINITY, [member("a", "h2")], load={"h2": 9}) == "h2"
    assert choose(Policy.SOFT_AFFINITY, [member("a", "h5")], load={"h0": 1}) == "h1"
    assert choose(Policy.SOFT_AFFINITY, [member("a", "h2")], requested="h0") == "h0"
    assert choose(Policy.SOFT_AFFINITY, [], load={"h0": 1, "h1": 1}) == "h2"


def test_soft_anti_affinity_spreads_but_never_refuses() -> None:
    members = [member("a", "h0"), member("b", "h1")]
    assert choose(Policy.SOFT_ANTI_AFFINITY, members, load={"h2": 5}) == "h2"
    # every host has a member: the one with the fewest members, then the least loaded
    crowded = [*members, member("c", "h2"), member("d", "h0")]
    assert choose(Policy.SOFT_ANTI_AFFINITY, crowded, load={"h1": 3, "h2": 1}) == "h2"
    assert choose(Policy.SOFT_ANTI_AFFINITY, members, requested="h1") == "h1"
    with pytest.raises(PlacementError, match="host h9 is not running"):
        choose(Policy.SOFT_ANTI_AFFINITY, members, requested="h9")
