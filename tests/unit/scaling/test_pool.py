"""The host's CPU pool (pure): who has which CPU, and what is free."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servergroup.scaling.pool import NoFreeCpu, Pool


def check(pool: Pool) -> None:
    """The invariants of the module docstring."""
    used = [c for m in pool.placements.values() for c in m.values()]
    assert len(used) == len(set(used)), "a CPU has two vCPUs"
    assert set(pool.used) | set(pool.free) == set(pool.cpus)
    assert not set(pool.used) & set(pool.free)
    assert set(used) <= set(pool.cpus)


def test_a_server_gets_the_lowest_free_cpus_and_gives_them_back() -> None:
    pool = Pool.of([4, 5, 6]).adopt("a", [0, 1])
    assert dict(pool.placed("a")) == {0: 4, 1: 5}
    assert pool.free == (6,)
    pool = pool.release("a")
    assert pool.free == (4, 5, 6)
    assert pool.placements == {}


def test_scale_down_frees_the_cpu_and_the_offline_vcpu_runs_where_vcpu_0_runs() -> None:
    pool = Pool.of([0, 1]).adopt("a", [0, 1])
    pool = pool.give_back("a", 1)
    assert pool.free == (1,)
    assert pool.affinity("a", 1, online=[0]) == (0,)
    pool, cpu = pool.take("a", 1)
    assert cpu == 1
    assert pool.affinity("a", 1, online=[0, 1]) == (1,)
    assert pool.free == ()


def test_scale_up_with_no_free_cpu_changes_nothing() -> None:
    pool = Pool.of([0, 1]).adopt("a", [0, 1]).adopt("b", [0, 1])
    assert pool.shared("b", [0, 1]) == (0, 1)
    assert pool.affinity("b", 1, online=[0, 1]) == (0, 1)  # shared: the whole pool
    down = pool.give_back("b", 1)  # a shared vCPU frees nothing
    assert down == pool
    with pytest.raises(NoFreeCpu):
        down.take("b", 1)


def test_adoption_keeps_the_pins_it_finds_when_they_are_free() -> None:
    pool = Pool.of([0, 1, 2, 3]).adopt("a", [0, 1], current={0: [2], 1: [0, 1, 2, 3]})
    assert dict(pool.placed("a")) == {0: 2, 1: 0}
    # A pin onto a CPU someone else has is not kept.
    pool = pool.adopt("b", [0], current={0: [2]})
    assert dict(pool.placed("b")) == {0: 1}
    check(pool)
    # Without room for every vCPU, vCPU 0 comes first (offline vCPUs run where it runs).
    pool = Pool.of([0, 1]).adopt("w", [0]).adopt("s", [0, 1], current={0: [0], 1: [1]})
    assert dict(pool.placed("s")) == {0: 1}
    assert pool.shared("s", [0, 1]) == (1,)


servers = st.sampled_from(["a", "b", "c"])
ops: st.SearchStrategy[list[tuple[str, str, frozenset[int] | set[int]]]] = st.lists(
    st.one_of(
        st.tuples(st.just("adopt"), servers, st.sets(st.integers(0, 5), max_size=6)),
        st.tuples(st.just("release"), servers, st.just(frozenset())),
        st.tuples(st.just("take"), servers, st.sets(st.integers(0, 5), min_size=1, max_size=1)),
        st.tuples(st.just("give"), servers, st.sets(st.integers(0, 5), min_size=1, max_size=1)),
    ),
    max_size=40,
)


@given(cpus=st.sets(st.integers(0, 7), max_size=8), steps=ops)
def test_never_two_vcpus_on_one_cpu_and_free_plus_used_is_the_pool(
    cpus: set[int], steps: list[tuple[str, str, set[int]]]
) -> None:
    pool = Pool.of(cpus)
    for op, server, vcpus in steps:
        before = pool
        if op == "adopt":
            pool = pool.adopt(server, vcpus)
            assert len(pool.placed(server)) == min(len(vcpus), len(before.release(server).free))
        elif op == "release":
            pool = pool.release(server)
            assert not pool.placed(server)
        elif op == "take":
            (vcpu,) = vcpus
            try:
                pool, cpu = pool.take(server, vcpu)
            except NoFreeCpu:
                assert not before.free
                assert vcpu not in before.placed(server)
                assert pool == before  # nothing changed
            else:
                assert pool.placed(server)[vcpu] == cpu
                assert cpu in before.free or before.placed(server).get(vcpu) == cpu
        else:
            (vcpu,) = vcpus
            pool = pool.give_back(server, vcpu)
            assert vcpu not in pool.placed(server)
            freed = set(pool.free) - set(before.free)
            assert freed == (
                {before.placed(server)[vcpu]} if vcpu in before.placed(server) else set()
            )
        check(pool)
