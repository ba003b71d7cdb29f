"""Placement (`services.placement`): domains, failback, recovery policies, bans, masters."""

from __future__ import annotations

from dataclasses import replace

from servergroup.services.model import (
    AgentRef,
    DomainMember,
    FailoverDomain,
    Recovery,
    Service,
)
from servergroup.services.placement import (
    Decision,
    Demote,
    Disable,
    Failure,
    InstanceId,
    Owner,
    Promote,
    Relocation,
    Restart,
    Snapshot,
    Start,
    Stop,
    StopReason,
    decide,
    next_timer,
)

AGENT = AgentRef(provider="heartbeat", type="Dummy")
NOW = 1000.0


def service(name: str = "web", **changes: object) -> Service:
    return replace(Service(name=name, agent=AGENT, domain="lab"), **changes)  # type: ignore[arg-type]


def lab(
    *, ordered: bool = False, restricted: bool = False, nofailback: bool = False
) -> FailoverDomain:
    return FailoverDomain(
        name="lab",
        members=(
            DomainMember(node="h1", priority=1),
            DomainMember(node="h2", priority=2),
            DomainMember(node="h3", priority=3),
        ),
        ordered=ordered,
        restricted=restricted,
        nofailback=nofailback,
    )


def i(name: str = "web", index: int = 0) -> InstanceId:
    return InstanceId(service=name, index=index)


def snap(
    *, nodes: str = "h1 h2 h3 h4", domain: FailoverDomain | None = None, **rest: object
) -> Snapshot:
    services = rest.pop("services", (service(),))
    return Snapshot(
        nodes=frozenset(nodes.split()),
        services=services,  # type: ignore[arg-type]
        domains={"lab": domain or lab(ordered=True)},
        **rest,  # type: ignore[arg-type]
    )


def acts(decision: Decision) -> list[object]:
    return list(decision.actions)


def test_ordered_picks_the_best_priority_alive_node() -> None:
    assert acts(decide(snap(), NOW)) == [Start(instance=i(), node="h1")]
    assert acts(decide(snap(nodes="h2 h3 h4"), NOW)) == [Start(instance=i(), node="h2")]


def test_an_owned_instance_is_never_started_again() -> None:
    owned = snap(owners={i(): Owner(node="h9", token=5)})  # its node is not even alive
    decision = decide(owned, NOW)
    assert decision.actions == ()
    assert decision.sentence == "1 instance(s) of 1 service(s) placed."


def test_restricted_stays_stopped_when_no_member_is_up() -> None:
    decision = decide(snap(nodes="h4 h5", domain=lab(ordered=True, restricted=True)), NOW)
    assert decision.actions == ()
    assert "web/0 stays stopped: no allowed member of restricted domain 'lab' is up" in (
        decision.sentence
    )
    # Unrestricted: outside the domain when no member is up.
    assert acts(decide(snap(nodes="h5 h4"), NOW)) == [Start(instance=i(), node="h4")]


def test_failback_and_nofailback() -> None:
    running = {i(): Owner(node="h2", token=3)}
    assert acts(decide(snap(owners=running), NOW)) == [
        Stop(instance=i(), node="h2", reason=StopReason.FAILBACK)
    ]
    stays = snap(owners=running, domain=lab(ordered=True, nofailback=True))
    assert decide(stays, NOW).actions == ()
    # Unordered: members rank equal, so no move among them ...
    assert decide(snap(owners=running, domain=lab()), NOW).actions == ()
    # ... but an instance outside the domain comes back to a member.
    outside = {i(): Owner(node="h4", token=3)}
    assert acts(decide(snap(owners=outside, domain=lab()), NOW)) == [
        Stop(instance=i(), node="h4", reason=StopReason.FAILBACK)
    ]


def test_unordered_spreads_by_load_then_name() -> None:
    other = {i("db"): Owner(node="h1", token=1)}
    services = (service(), service("db", domain=None))
    decision = decide(snap(services=services, owners=other, domain=lab()), NOW)
    assert acts(decision) == [Start(instance=i(), node="h2")]


def test_copies_go_to_distinct_nodes_in_priority_order() -> None:
    three = snap(services=(service(instances=3),), nodes="h1 h3")
    assert acts(decide(three, NOW)) == [
        Start(instance=i(index=0), node="h1"),
        Start(instance=i(index=1), node="h3"),
    ]
    assert "web/2 stays stopped" in decide(three, NOW).sentence


def test_restart_in_place_until_max_restarts_then_relocate() -> None:
    svc = service(max_restarts=2, restart_expire_time=60)
    failed = {i(): Owner(node="h1", token=3, failed=True)}

    def with_failures(*ats: float) -> Snapshot:
        failures = tuple(Failure(service="web", node="h1", at=at) for at in ats)
        return snap(services=(svc,), owners=failed, failures=failures)

    assert acts(decide(with_failures(NOW), NOW)) == [Restart(instance=i(), node="h1")]
    assert acts(decide(with_failures(NOW - 10, NOW), NOW)) == [Restart(instance=i(), node="h1")]
    third = with_failures(NOW - 20, NOW - 10, NOW)
    assert acts(decide(third, NOW)) == [Stop(instance=i(), node="h1", reason=StopReason.FAILED)]
    # Once stopped, it starts on the next node; h1 is avoided until its failures expire.
    gone = replace(third, owners={})
    assert acts(decide(gone, NOW)) == [Start(instance=i(), node="h2")]
    assert next_timer(gone, NOW) == NOW - 20 + 60
    assert acts(decide(gone, NOW - 20 + 60)) == [Start(instance=i(), node="h1")]
    # An old failure outside the window does not count.
    assert acts(decide(with_failures(NOW - 100, NOW - 90, NOW), NOW)) == [
        Restart(instance=i(), node="h1")
    ]
    # max_restarts = 0: no threshold.
    forever = replace(third, services=(replace(svc, max_restarts=0),))
    assert acts(decide(forever, NOW)) == [Restart(instance=i(), node="h1")]


def test_an_avoided_node_is_used_when_nothing_else_is_up() -> None:
    svc = service(recovery=Recovery.RELOCATE)
    failures = (Failure(service="web", node="h1", at=NOW),)
    assert acts(decide(snap(services=(svc,), failures=failures, nodes="h1"), NOW)) == [
        Start(instance=i(), node="h1")
    ]


def test_relocate_and_disable_policies() -> None:
    failed = {i(): Owner(node="h1", token=3, failed=True)}
    failures = (Failure(service="web", node="h1", at=NOW),)
    relocate = snap(
        services=(service(recovery=Recovery.RELOCATE),), owners=failed, failures=failures
    )
    assert acts(decide(relocate, NOW)) == [Stop(instance=i(), node="h1", reason=StopReason.FAILED)]
    disable = snap(
        services=(service(recovery=Recovery.DISABLE, instances=2),),
        owners={**failed, i(index=1): Owner(node="h2", token=4)},
        failures=failures,
    )
    decision = decide(disable, NOW)
    assert acts(decision) == [
        Stop(instance=i(), node="h1", reason=StopReason.DISABLED),
        Stop(instance=i(index=1), node="h2", reason=StopReason.DISABLED),
        Disable(service="web"),
    ]
    assert "web is disabled after web/0 failed" in decision.sentence


def test_bans_fatal_disabled_blocked_and_surplus() -> None:
    running = {i(): Owner(node="h1", token=3)}
    banned = snap(owners=running, bans=frozenset({("web", "h1")}))
    assert acts(decide(banned, NOW)) == [Stop(instance=i(), node="h1", reason=StopReason.BANNED)]
    assert acts(decide(replace(banned, owners={}), NOW)) == [Start(instance=i(), node="h2")]
    fatal = snap(owners=running, fatal=frozenset({"web"}))
    assert acts(decide(fatal, NOW)) == [Stop(instance=i(), node="h1", reason=StopReason.FATAL)]
    assert decide(replace(fatal, owners={}), NOW).actions == ()
    off = snap(owners=running, services=(service(enabled=False),))
    assert acts(decide(off, NOW)) == [Stop(instance=i(), node="h1", reason=StopReason.DISABLED)]
    assert acts(decide(snap(owners=running, disabled=frozenset({"web"})), NOW)) == [
        Stop(instance=i(), node="h1", reason=StopReason.DISABLED)
    ]
    blocked = decide(snap(blocked=frozenset({i()})), NOW)
    assert blocked.actions == ()
    assert "web/0 stays stopped: its last stop failed" in blocked.sentence
    surplus = snap(owners={**running, i(index=1): Owner(node="h2", token=4)})
    assert acts(decide(surplus, NOW)) == [
        Stop(instance=i(index=1), node="h2", reason=StopReason.SURPLUS)
    ]
    busy = snap(owners={i(): Owner(node="h1", token=3, busy=True)}, fatal=frozenset({"web"}))
    assert decide(busy, NOW).actions == ()


def test_restricted_domain_stops_an_instance_outside_it() -> None:
    outside = snap(owners={i(): Owner(node="h4", token=3)}, domain=lab(restricted=True))
    assert acts(decide(outside, NOW)) == [
        Stop(instance=i(), node="h4", reason=StopReason.OUTSIDE_DOMAIN)
    ]


def test_server_group_domain_uses_the_groups_hosts() -> None:
    domain = FailoverDomain(name="lab", server_group="csnap", restricted=True)
    hosts = {"csnap": frozenset({"h3", "h4"})}
    assert acts(decide(snap(domain=domain, group_hosts=hosts, nodes="h1 h2 h4"), NOW)) == [
        Start(instance=i(), node="h4")
    ]
    assert decide(snap(domain=domain, group_hosts={}, nodes="h1"), NOW).actions == ()


def test_promotable_one_master_promoted_from_the_best_slave() -> None:
    svc = service("csnap", instances=3, promotable=True)
    slaves = {
        i("csnap", 0): Owner(node="h2", token=4),
        i("csnap", 1): Owner(node="h1", token=5),
        i("csnap", 2): Owner(node="h3", token=6),
    }
    assert acts(decide(snap(services=(svc,), owners=slaves), NOW)) == [
        Promote(instance=i("csnap", 1), node="h1")
    ]
    # A failed master still claims the role: it is restarted, nobody is promoted beside it.
    failed_master = {**slaves, i("csnap", 1): Owner(node="h1", token=5, master=True, failed=True)}
    failures = (Failure(service="csnap", node="h1", at=NOW),)
    assert acts(decide(snap(services=(svc,), owners=failed_master, failures=failures), NOW)) == [
        Restart(instance=i("csnap", 1), node="h1")
    ]
    # Two masters (never from us): all but the best are demoted.
    two = {**slaves, i("csnap", 0): Owner(node="h2", token=4, master=True)}
    two[i("csnap", 1)] = Owner(node="h1", token=5, master=True)
    assert acts(decide(snap(services=(svc,), owners=two), NOW)) == [
        Demote(instance=i("csnap", 0), node="h2")
    ]
    # A master is not moved for failback.
    lone = {i("csnap", 0): Owner(node="h2", token=4, master=True)}
    decision = decide(snap(services=(svc,), owners=lone, nodes="h1 h2"), NOW)
    assert acts(decision) == [Start(instance=i("csnap", 1), node="h1")]


def test_the_sentence_says_what_was_decided() -> None:
    decision = decide(snap(services=(service(instances=2),)), NOW)
    assert decision.sentence == "start web/0 on h1; start web/1 on h2."


def test_failback_only_to_a_node_that_joined_after_the_start() -> None:
    running = {i(): Owner(node="h2", token=3, started_at=10.0)}
    earlier = snap(owners=running, joined_at={"h1": 5.0, "h2": 1.0})
    assert decide(earlier, NOW).actions == ()
    later = snap(owners=running, joined_at={"h1": 20.0, "h2": 1.0})
    assert acts(decide(later, NOW)) == [Stop(instance=i(), node="h2", reason=StopReason.FAILBACK)]


def test_an_operator_relocation_moves_the_instance_where_asked() -> None:
    running = {i(): Owner(node="h1", token=3, started_at=1.0)}
    asked = {i(): Relocation(from_node="h1", to_node="h3")}
    joined = {"h1": 0.0, "h2": 0.0, "h3": 0.0, "h4": 0.0}
    first = snap(owners=running, relocations=asked, joined_at=joined)
    assert acts(decide(first, NOW)) == [Stop(instance=i(), node="h1", reason=StopReason.RELOCATE)]
    second = replace(first, owners={})
    assert acts(decide(second, NOW)) == [Start(instance=i(), node="h3")]
    # Once there (the node role drops the request), failback does not undo it.
    done = replace(first, owners={i(): Owner(node="h3", token=8, started_at=2.0)}, relocations={})
    assert decide(done, NOW).actions == ()
    # Anywhere but here: the best other node.
    anywhere = replace(first, relocations={i(): Relocation(from_node="h1")})
    assert acts(decide(anywhere, NOW)) == [
        Stop(instance=i(), node="h1", reason=StopReason.RELOCATE)
    ]
    assert acts(decide(replace(anywhere, owners={}), NOW)) == [Start(instance=i(), node="h2")]


def test_a_relocation_that_cannot_be_done_leaves_the_instance_running() -> None:
    running = {i(): Owner(node="h1", token=3)}
    outside = snap(
        owners=running,
        domain=lab(ordered=True, restricted=True),
        relocations={i(): Relocation(from_node="h1", to_node="h4")},
    )
    decision = decide(outside, NOW)
    assert decision.actions == ()
    why = "h4 is outside the restricted domain 'lab'"
    assert decision.waiting == {i(): why}
    assert f"the relocation of web/0 waits: {why}" in decision.sentence
    alone = snap(owners=running, nodes="h1", relocations={i(): Relocation(from_node="h1")})
    assert decide(alone, NOW).waiting == {i(): "no other allowed node is free"}
    unrestricted = replace(outside, domains={"lab": lab(ordered=True)})
    gone = replace(unrestricted, relocations={i(): Relocation(from_node="h1", to_node="h9")})
    assert decide(gone, NOW).waiting == {i(): "h9 is not up"}
    banned = replace(gone, relocations=outside.relocations, bans=frozenset({("web", "h4")}))
    assert decide(banned, NOW).waiting == {i(): "web is banned from h4"}
    # A copy of a service of two instances is there already.
    two = service(instances=2)
    taken = snap(
        services=(two,),
        owners={**running, i(index=1): Owner(node="h2", token=4)},
        relocations={i(): Relocation(from_node="h1", to_node="h2")},
    )
    assert decide(taken, NOW).waiting == {
        i(): "h2 already runs a copy of it (copies run on distinct nodes)"
    }
    # Going ahead: nothing waits.
    assert decide(unrestricted, NOW).waiting == {}


CSNAP = service("csnap", instances=3, promotable=True)


def csnap_owners(master: str = "h1", **changes: Owner) -> dict[InstanceId, Owner]:
    """csnap's three copies on h1, h2, h3 (instances 0, 1, 2), the master on `master`."""
    owners = {
        i("csnap", n): Owner(node=f"h{n + 1}", token=4 + n, master=f"h{n + 1}" == master)
        for n in range(3)
    }
    for node, owner in changes.items():
        owners[i("csnap", int(node[1:]) - 1)] = owner
    return owners


def test_moving_a_master_to_a_node_with_a_copy_demotes_it_then_promotes_that_copy() -> None:
    asked = {i("csnap", 0): Relocation(from_node="h1", to_node="h2", master=True)}
    first = snap(services=(CSNAP,), owners=csnap_owners(), relocations=asked)
    decision = decide(first, NOW)
    assert acts(decision) == [Demote(instance=i("csnap", 0), node="h1")]
    assert decision.waiting == {}
    # While the demote runs the old master still claims the role: nothing is promoted.
    demoting = csnap_owners(h1=Owner(node="h1", token=4, master=True, busy=True))
    assert decide(replace(first, owners=demoting), NOW).actions == ()
    # Demoted: the target's copy is promoted, not the best-ranked one (h1's).
    demoted = replace(first, owners=csnap_owners(master=""))
    assert acts(decide(demoted, NOW)) == [Promote(instance=i("csnap", 1), node="h2")]
    # Done (the node roles drop the request): the master stays on h2, h1's copy a slave.
    done = replace(first, owners=csnap_owners(master="h2"), relocations={})
    assert decide(done, NOW).actions == ()
    # A master moved by an old-style request (no `master`): it stays, and says why.
    old = {i("csnap", 0): Relocation(from_node="h1", to_node="h2")}
    old_style = decide(replace(first, relocations=old), NOW)
    assert old_style.actions == ()
    assert "h2 already runs a copy" in old_style.waiting[i("csnap", 0)]


def test_moving_a_master_anywhere_goes_to_the_best_other_copy() -> None:
    asked = {i("csnap", 0): Relocation(from_node="h1", master=True)}
    first = snap(services=(CSNAP,), owners=csnap_owners(), relocations=asked)
    assert acts(decide(first, NOW)) == [Demote(instance=i("csnap", 0), node="h1")]
    demoted = replace(first, owners=csnap_owners(master=""))
    assert acts(decide(demoted, NOW)) == [Promote(instance=i("csnap", 1), node="h2")]


def test_moving_a_master_to_a_free_node_starts_and_promotes_it_there() -> None:
    two = service("csnap", instances=2, promotable=True)
    owners = {
        i("csnap", 0): Owner(node="h1", token=4, master=True),
        i("csnap", 1): Owner(node="h2", token=5),
    }
    asked = {i("csnap", 0): Relocation(from_node="h1", to_node="h3", master=True)}
    nofailback = lab(ordered=True, nofailback=True)
    first = snap(services=(two,), owners=owners, relocations=asked, domain=nofailback)
    assert acts(decide(first, NOW)) == [
        Stop(instance=i("csnap", 0), node="h1", reason=StopReason.RELOCATE)
    ]
    # Stopped: started on h3, and h2's slave is not promoted meanwhile.
    stopped = replace(first, owners={i("csnap", 1): owners[i("csnap", 1)]})
    decision = decide(stopped, NOW)
    assert acts(decision) == [Start(instance=i("csnap", 0), node="h3")]
    assert "promotes on h3 once its copy there runs" in decision.sentence
    starting = {**stopped.owners, i("csnap", 0): Owner(node="h3", token=9, busy=True)}
    assert decide(replace(stopped, owners=starting), NOW).actions == ()
    running = {**stopped.owners, i("csnap", 0): Owner(node="h3", token=9)}
    assert acts(decide(replace(stopped, owners=running), NOW)) == [
        Promote(instance=i("csnap", 0), node="h3")
    ]


def test_a_master_move_that_cannot_go_on_says_why_and_keeps_the_master() -> None:
    asked = {i("csnap", 0): Relocation(from_node="h1", to_node="h2", master=True)}
    failed = csnap_owners(h2=Owner(node="h2", token=5, failed=True))
    decision = decide(snap(services=(CSNAP,), owners=failed, relocations=asked), NOW)
    assert not any(isinstance(a, Demote | Stop) and a.node == "h1" for a in decision.actions)
    assert decision.waiting == {i("csnap", 0): "its copy on h2 has failed"}
    gone = decide(
        snap(services=(CSNAP,), nodes="h1 h3", owners=csnap_owners(), relocations=asked), NOW
    )
    assert gone.waiting == {i("csnap", 0): "h2 is not up"}
    assert not any(isinstance(a, Demote) for a in gone.actions)
    # A copy on the target being started: the move waits for it, quietly.
    busy = csnap_owners(h2=Owner(node="h2", token=5, busy=True))
    quiet = decide(snap(services=(CSNAP,), owners=busy, relocations=asked), NOW)
    assert (quiet.actions, quiet.waiting) == ((), {})
    # The target's copy failed after the demote: the usual choice promotes (no master-less wait).
    after = csnap_owners(master="", h2=Owner(node="h2", token=5, failed=True))
    fallback = decide(
        snap(
            services=(CSNAP,),
            owners=after,
            relocations=asked,
            failures=(Failure(service="csnap", node="h2", at=NOW),),
        ),
        NOW,
    )
    assert Promote(instance=i("csnap", 0), node="h1") in fallback.actions
    # Anywhere, with every other copy failed and no free node.
    anywhere = {i("csnap", 0): Relocation(from_node="h1", master=True)}
    others_failed = csnap_owners(
        h2=Owner(node="h2", token=5, failed=True), h3=Owner(node="h3", token=6, failed=True)
    )
    stuck = decide(
        snap(services=(CSNAP,), nodes="h1 h2 h3", owners=others_failed, relocations=anywhere),
        NOW,
    )
    assert stuck.waiting == {i("csnap", 0): "no other allowed node runs a healthy copy or is free"}


def test_a_promotion_waits_for_a_better_ranked_copy_being_started() -> None:
    svc = service("csnap", instances=3, promotable=True)
    JOINED = dict.fromkeys(("h1", "h2", "h3"), 0.0)  # before the copies started: no failback
    # h3's copy runs, h1's is starting: h1 ranks better, so nobody is promoted yet.
    starting = {
        i("csnap", 0): Owner(node="h1", token=4, busy=True, started_at=NOW),
        i("csnap", 1): Owner(node="h3", token=5, started_at=NOW),
    }
    decision = decide(
        snap(services=(svc,), owners=starting, nodes="h1 h2 h3", joined_at=JOINED), NOW
    )
    assert acts(decision) == [Start(instance=i("csnap", 2), node="h2")]
    assert "csnap promotes once its better-placed copy runs" in decision.sentence
    # A copy proposed this cycle on a better node is waited for the same way.
    one = {i("csnap", 1): Owner(node="h3", token=5, started_at=NOW)}
    assert not any(
        isinstance(a, Promote)
        for a in decide(
            snap(services=(svc,), owners=one, nodes="h1 h3", joined_at=JOINED), NOW
        ).actions
    )
    # Once it runs, the best-ranked is promoted; a worse-ranked start does not delay it.
    running = {**starting, i("csnap", 0): Owner(node="h1", token=4, started_at=NOW)}
    assert Promote(instance=i("csnap", 0), node="h1") in acts(
        decide(snap(services=(svc,), owners=running, nodes="h1 h2 h3", joined_at=JOINED), NOW)
    )


def test_moving_a_master_to_a_free_node_with_a_copy_missing_starts_that_copy_there() -> None:
    """A copy that is to start anyway starts on the target (and is not failed back from it),
    and is promoted there: the master is not stopped and started for nothing."""
    asked = {i("csnap", 1): Relocation(from_node="h2", to_node="h4", master=True)}
    owners = csnap_owners(master="h2")
    del owners[i("csnap", 2)]  # h3's copy stopped; h3 would be its best node
    first = snap(services=(CSNAP,), nodes="h1 h2 h3 h4", owners=owners, relocations=asked)
    assert acts(decide(first, NOW)) == [Start(instance=i("csnap", 2), node="h4")]
    running = {**owners, i("csnap", 2): Owner(node="h4", token=9)}
    assert acts(decide(replace(first, owners=running), NOW)) == [
        Demote(instance=i("csnap", 1), node="h2")
    ]
