"""Properties of placement (hypothesis): one owner, restricted, nofailback, one master."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from servergroup.services.model import (
    AgentRef,
    DomainMember,
    FailoverDomain,
    Recovery,
    Service,
)
from servergroup.services.placement import (
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
    decide,
)

NODES = ("h1", "h2", "h3", "h4", "h5")
NOW = 500.0
#: Failed and busy owners get no failback: keep them rare, so healthy ones are common.
rarely = st.sampled_from((False, False, False, True))


@st.composite
def domains(draw: st.DrawFn, name: str) -> FailoverDomain:
    members = draw(st.lists(st.sampled_from(NODES), unique=True, min_size=1, max_size=4))
    return FailoverDomain(
        name=name,
        members=tuple(
            DomainMember(node=n, priority=draw(st.integers(min_value=1, max_value=3)))
            for n in members
        ),
        ordered=draw(st.booleans()),
        restricted=draw(st.booleans()),
        nofailback=draw(st.booleans()),
    )


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    domain_list = [draw(domains(f"d{k}")) for k in range(2)]
    services = []
    for k in range(draw(st.integers(min_value=1, max_value=3))):
        instances = draw(st.integers(min_value=1, max_value=3))
        services.append(
            Service(
                name=f"s{k}",
                agent=AgentRef(provider="heartbeat", type="Dummy"),
                instances=instances,
                promotable=instances >= 2 and draw(st.booleans()),
                recovery=draw(st.sampled_from(Recovery)),
                max_restarts=draw(st.integers(min_value=0, max_value=2)),
                restart_expire_time=draw(st.sampled_from((10.0, 100.0))),
                enabled=draw(st.sampled_from((True, True, True, False))),
                domain=draw(st.sampled_from((None, "d0", "d1"))),
            )
        )
    owners: dict[InstanceId, Owner] = {}
    token = 1
    for svc in services:
        used: set[str] = set()
        for index in range(svc.instances + 1):  # one past: a lowered count leaves surplus
            if not draw(st.booleans()):
                continue
            node = draw(st.sampled_from(NODES))
            if node in used:
                continue
            used.add(node)
            owners[InstanceId(service=svc.name, index=index)] = Owner(
                node=node,
                token=token,
                master=svc.promotable and draw(st.booleans()),
                failed=draw(rarely),
                busy=draw(rarely),
                started_at=draw(st.none() | st.floats(0, NOW)),
            )
            token += 1
    names = [s.name for s in services]
    failures = tuple(
        Failure(service=draw(st.sampled_from(names)), node=draw(st.sampled_from(NODES)), at=at)
        for at in draw(st.lists(st.floats(min_value=NOW - 200, max_value=NOW), max_size=6))
    )
    pairs = st.tuples(st.sampled_from(names), st.sampled_from(NODES))
    return Snapshot(
        nodes=frozenset(draw(st.lists(st.sampled_from(NODES), unique=True, max_size=5))),
        services=tuple(services),
        domains={d.name: d for d in domain_list},
        owners=owners,
        failures=failures,
        bans=frozenset(draw(st.lists(pairs, max_size=3))),
        disabled=frozenset(
            draw(st.lists(st.sampled_from(names), max_size=1)) if draw(rarely) else ()
        ),
        fatal=frozenset(draw(st.lists(st.sampled_from(names), max_size=1)) if draw(rarely) else ()),
        joined_at={n: draw(st.floats(0, NOW)) for n in NODES if draw(st.booleans())},
        relocations={
            InstanceId(service=s, index=n): Relocation(
                from_node=draw(st.sampled_from(NODES)),
                to_node=draw(st.none() | st.sampled_from(NODES)),
            )
            for s, n in draw(
                st.lists(st.tuples(st.sampled_from(names), st.integers(0, 2)), max_size=2)
            )
        },
        blocked=frozenset(
            InstanceId(service=s, index=n)
            for s, n in draw(
                st.lists(st.tuples(st.sampled_from(names), st.integers(0, 2)), max_size=2)
            )
        ),
    )


def by_name(snapshot: Snapshot) -> dict[str, Service]:
    return {s.name: s for s in snapshot.services}


@given(snapshots())
def test_starts_never_make_a_second_owner(snapshot: Snapshot) -> None:
    starts = [a for a in decide(snapshot, NOW).actions if isinstance(a, Start)]
    assert len({a.instance for a in starts}) == len(starts)
    services = by_name(snapshot)
    for start in starts:
        svc = services[start.instance.service]
        assert start.instance not in snapshot.owners
        assert start.instance not in snapshot.blocked
        assert start.instance.index < svc.instances
        assert start.node in snapshot.nodes
        assert (svc.name, start.node) not in snapshot.bans
        assert svc.enabled
        assert svc.name not in snapshot.disabled | snapshot.fatal
    # Copies of one service on distinct nodes, counting those already running.
    for name in services:
        nodes = [o.node for i, o in snapshot.owners.items() if i.service == name]
        nodes += [a.node for a in starts if a.instance.service == name]
        new = [a.node for a in starts if a.instance.service == name]
        assert len(set(new)) == len(new)
        assert not set(new) & {o.node for i, o in snapshot.owners.items() if i.service == name}


@given(snapshots())
def test_restricted_never_starts_outside_its_members(snapshot: Snapshot) -> None:
    services = by_name(snapshot)
    for action in decide(snapshot, NOW).actions:
        if isinstance(action, Start):
            svc = services[action.instance.service]
            domain = snapshot.domains.get(svc.domain) if svc.domain else None
            if domain is not None and domain.restricted:
                assert action.node in {m.node for m in domain.members}


def calm(snapshot: Snapshot) -> Snapshot:
    """`snapshot` with every domain nofailback, every owner healthy, nothing banned or off."""
    return replace(
        snapshot,
        nodes=frozenset(NODES),
        services=tuple(replace(s, enabled=True) for s in snapshot.services),
        domains={n: replace(d, nofailback=True) for n, d in snapshot.domains.items()},
        owners={
            i: replace(o, failed=False, busy=False)
            for i, o in snapshot.owners.items()
            if i.index < by_name(snapshot)[i.service].instances
        },
        bans=frozenset(),
        disabled=frozenset(),
        fatal=frozenset(),
        relocations={},
    )


@given(snapshots().map(calm))
def test_nofailback_never_moves_a_healthy_running_instance(snapshot: Snapshot) -> None:
    services = by_name(snapshot)
    for action in decide(snapshot, NOW).actions:
        assert not isinstance(action, Restart | Disable)  # nothing failed
        if isinstance(action, Stop):
            # Only a restricted domain's rule stops a healthy instance here.
            svc = services[action.instance.service]
            assert svc.domain is not None
            domain = snapshot.domains[svc.domain]
            assert domain.restricted
            assert action.node not in {m.node for m in domain.members}


@given(snapshots())
def test_a_promote_only_when_no_owner_claims_master(snapshot: Snapshot) -> None:
    promotes = Counter(
        a.instance.service for a in decide(snapshot, NOW).actions if isinstance(a, Promote)
    )
    for name, count in promotes.items():
        assert count == 1
        assert not any(o.master for i, o in snapshot.owners.items() if i.service == name)


@given(snapshots(), st.randoms(use_true_random=False))
def test_decisions_are_deterministic(snapshot: Snapshot, rng: random.Random) -> None:
    services = list(snapshot.services)
    failures = list(snapshot.failures)
    owners = list(snapshot.owners.items())
    for items in (services, failures, owners):
        rng.shuffle(items)
    shuffled = Snapshot(
        nodes=frozenset(sorted(snapshot.nodes, reverse=True)),
        services=tuple(services),
        domains=dict(reversed(list(snapshot.domains.items()))),
        owners=dict(owners),
        failures=tuple(failures),
        bans=snapshot.bans,
        disabled=snapshot.disabled,
        fatal=snapshot.fatal,
        blocked=snapshot.blocked,
        joined_at=dict(reversed(list(snapshot.joined_at.items()))),
        relocations=dict(reversed(list(snapshot.relocations.items()))),
    )
    assert decide(snapshot, NOW) == decide(shuffled, NOW)


@given(snapshots(), st.lists(st.sets(st.sampled_from(NODES)), min_size=1, max_size=12))
def test_a_run_of_cycles_keeps_one_owner_and_one_master(
    first: Snapshot, alive_sets: list[set[str]]
) -> None:
    """Carry out every decision while nodes come and go: the invariants hold at every step."""
    clean = {i: o for i, o in first.owners.items() if not o.master}  # start with no master
    owners = {i: Owner(node=o.node, token=o.token) for i, o in clean.items()}
    token = 1000
    disabled = set(first.disabled)
    services = by_name(first)
    for step, alive in enumerate(alive_sets):
        # An owner whose node died loses its key when its lease expires.
        owners = {i: o for i, o in owners.items() if o.node in alive}
        snapshot = Snapshot(
            nodes=frozenset(alive),
            services=first.services,
            domains=first.domains,
            owners=owners,
            failures=first.failures,
            bans=first.bans,
            disabled=frozenset(disabled),
            fatal=first.fatal,
            relocations=first.relocations,
        )
        for action in decide(snapshot, NOW + step).actions:
            if isinstance(action, Start):
                assert action.instance not in owners
                token += 1
                owners[action.instance] = Owner(node=action.node, token=token)
            elif isinstance(action, Stop):
                del owners[action.instance]
            elif isinstance(action, Promote):
                owners[action.instance] = Owner(
                    node=action.node, token=owners[action.instance].token, master=True
                )
            elif isinstance(action, Demote):
                owners[action.instance] = Owner(
                    node=action.node, token=owners[action.instance].token
                )
            elif isinstance(action, Disable):
                disabled.add(action.service)
            else:
                assert isinstance(action, Restart)
        for name, svc in services.items():
            mine = [o for i, o in owners.items() if i.service == name]
            assert len({o.node for o in mine}) == len(mine)
            assert sum(o.master for o in mine) <= (1 if svc.promotable else 0)
