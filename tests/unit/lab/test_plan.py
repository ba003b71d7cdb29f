"""The lab's pure core: names, addresses, rates, loss, and diffs against scripted states."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servergroup.common.errors import UsageError
from servergroup.lab.errors import LabError
from servergroup.lab.plan import (
    LAB_RANGE,
    MAX_HOSTS,
    MAX_NAME_LENGTH,
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
    HostSpec,
    LabSpec,
    Loss,
    LossScope,
    Marker,
    ObservedHost,
    ObservedLab,
    Owner,
    RemoveNamespace,
    SetLoss,
    SetShaping,
    Shaping,
    choose_network,
    decode_marker,
    describe,
    diff,
    encode_marker,
    format_rate,
    make_spec,
    member_index,
    network_at,
    parse_host,
    parse_loss,
    parse_rate,
    plan_lab,
    same_shaping,
    shaping_for,
    spec_of,
    summarize,
    teardown,
    validate_name,
    with_host,
)
from tests.unit.lab import model

NET = IPv4Network("198.18.0.0/24")


def realized(spec: LabSpec, network: IPv4Network = NET) -> ObservedLab:
    """What the kernel holds after a lab was built from nothing."""
    plan = plan_lab(spec, network)
    return model.run(model.empty(spec.name), diff(plan, model.empty(spec.name)))


# --- names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sg", "a", "t1x9", "abcdefgh"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "Sg", "1sg", "s-g", "abcdefghi", "s g", "sg\n"])
def test_invalid_names_are_one_sentence(name: str) -> None:
    with pytest.raises(UsageError, match=r"^lab name .* not valid; .*\.$"):
        validate_name(name)


def test_every_interface_name_fits_ifnamsiz() -> None:
    spec = make_spec("a" * MAX_NAME_LENGTH, hosts=MAX_HOSTS)
    plan = plan_lab(spec, NET)
    names = (
        [plan.bridge.ifname] + [h.root_ifname for h in plan.hosts] + [h.ifname for h in plan.hosts]
    )
    assert max(len(n) for n in names) <= 15


def test_host_references() -> None:
    assert parse_host("sg", "h3") == 3
    assert parse_host("sg", "3") == 3
    assert parse_host("sg", "sg-h12") == 12
    for bad in ("h0", "x1", "other-h1", "h", ""):
        with pytest.raises(UsageError):
            parse_host("sg", bad)
    assert member_index("sg", "sg-h2") == 2
    assert member_index("sg", "sg-br") is None
    assert member_index("sg", "sgx-h2") is None
    assert member_index("s", "sg-h2") is None


# --- addresses -------------------------------------------------------------------------


def test_addresses_follow_the_layout() -> None:
    plan = plan_lab(make_spec("sg", hosts=3), network_at(5))
    assert plan.network == IPv4Network("198.18.5.0/24")
    assert plan.bridge.address == IPv4Interface("198.18.5.1/24")
    assert [str(h.address) for h in plan.hosts] == [
        "198.18.5.11/24",
        "198.18.5.12/24",
        "198.18.5.13/24",
    ]
    assert [h.name for h in plan.hosts] == ["h1", "h2", "h3"]
    assert [h.netns for h in plan.hosts] == ["sg-h1", "sg-h2", "sg-h3"]


def test_the_last_slot_is_at_the_end_of_the_range() -> None:
    assert network_at(511) == IPv4Network("198.19.255.0/24")


def test_choose_network_takes_the_lowest_free_slot() -> None:
    assert choose_network([]) == IPv4Network("198.18.0.0/24")
    used = [IPv4Interface("198.18.0.1/24"), IPv4Interface("198.18.1.7/24")]
    assert choose_network(used) == IPv4Network("198.18.2.0/24")
    # addresses outside the range do not matter; a narrow one blocks its /24
    used = [IPv4Interface("10.0.0.1/8"), IPv4Interface("198.18.0.200/30")]
    assert choose_network(used) == IPv4Network("198.18.1.0/24")
    # a wide one blocks every /24 it covers
    assert choose_network([IPv4Interface("198.18.0.1/16")]) == IPv4Network("198.19.0.0/24")


def test_choose_network_when_full() -> None:
    with pytest.raises(UsageError, match=r"every /24 of 198\.18\.0\.0/15 is in use"):
        choose_network([IPv4Interface("198.18.0.1/15")])


def test_plan_refuses_a_network_outside_the_range() -> None:
    with pytest.raises(UsageError):
        plan_lab(make_spec("sg", hosts=1), IPv4Network("10.0.0.0/24"))
    with pytest.raises(UsageError):
        plan_lab(make_spec("sg", hosts=1), IPv4Network("198.18.0.0/23"))


# --- markers ---------------------------------------------------------------------------


def test_marker_round_trip() -> None:
    for marker in (
        Marker(name="sg", owner=None),
        Marker(name="t1", owner=Owner(pid=4321, start_time=987654)),
        Marker(name="t2", owner=Owner(pid=1, start_time=2), home="0123456789abcdef"),
        Marker(name="t3", owner=None, home="fe"),
    ):
        assert decode_marker(encode_marker(marker)) == marker


@pytest.mark.parametrize(
    "alias",
    [
        None,
        "",
        "something else",
        "servergroup-lab",
        "servergroup-lab name=Bad",
        "servergroup-lab name=sg owner=x:1",
        "servergroup-lab name=sg home=NOTHEX",
    ],
)
def test_foreign_aliases_are_not_markers(alias: str | None) -> None:
    assert decode_marker(alias) is None


# --- rates and loss --------------------------------------------------------------------


# The spellings themselves are common.units' (tests/unit/common/test_units.py); the lab
# adds "none", whole bytes per second (what tc keeps) and its range.
@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("1gbit", 10**9),
        ("1.5mbit", 1_500_000),
        (1_000_001, 1_000_000),  # rounded down to whole bytes per second
        ("none", None),
        ("unlimited", None),
        (None, None),
    ],
)
def test_parse_rate(text: str | int | None, bits: int | None) -> None:
    assert parse_rate(text) == bits


@pytest.mark.parametrize("text", ["fast", "1gbps", "10", "-1mbit", "1 gbits", "", True, 10**14])
def test_bad_rates_say_so(text: str | int) -> None:
    with pytest.raises(UsageError, match="rate"):
        parse_rate(text)


def test_bytes_per_second_gets_a_hint() -> None:
    with pytest.raises(UsageError, match="bps' means bytes"):
        parse_rate("100mbps")


def test_format_rate() -> None:
    assert format_rate(10**9) == "1gbit"
    assert format_rate(1_500_000) == "1500kbit"
    assert format_rate(12_344) == "12344bit"
    assert format_rate(None) == "unlimited"


@given(st.integers(min_value=8_000, max_value=10**13))
def test_formatted_rates_parse_back(bits: int) -> None:
    bits -= bits % 8
    assert parse_rate(format_rate(bits)) == bits


@pytest.mark.parametrize(
    ("value", "per10000"),
    [
        (50, 5000),
        ("1.5", 150),
        ("12.25%", 1225),
        (0.01, 1),
        (100, 10000),
        ("0", None),
        (None, None),
    ],
)
def test_parse_loss(value: float | str | None, per10000: int | None) -> None:
    loss = parse_loss(value)
    assert (loss.per10000 if loss else None) == per10000


@pytest.mark.parametrize("value", ["-1", "101", "lots", "nan", True])
def test_bad_loss_says_so(value: str | bool) -> None:
    with pytest.raises(UsageError, match="loss"):
        parse_loss(value)


def test_shaping_bucket() -> None:
    gigabit = shaping_for(10**9, 1500)
    assert gigabit == Shaping(rate=125_000_000, burst=500_000, latency_us=50_000)
    slow = shaping_for(1_000_000, 9000)  # four jumbo frames beat 4 ms at 1 Mbit/s
    assert slow is not None
    assert slow.burst == 4 * 9014
    assert shaping_for(None, 1500) is None


def test_shaping_tolerates_tc_rounding() -> None:
    wanted = Shaping(rate=97_222_222, burst=388_888, latency_us=50_000)
    assert same_shaping(wanted, Shaping(rate=97_222_222, burst=388_791, latency_us=49_999))
    assert not same_shaping(wanted, Shaping(rate=97_222_221, burst=388_888, latency_us=50_000))
    assert not same_shaping(wanted, Shaping(rate=97_222_222, burst=300_000, latency_us=50_000))
    assert not same_shaping(wanted, None)
    assert same_shaping(None, None)


# --- specs -----------------------------------------------------------------------------


def test_make_spec_checks_its_arguments() -> None:
    with pytest.raises(UsageError, match="1 to 240 hosts"):
        make_spec("sg", hosts=0)
    with pytest.raises(UsageError, match="1 to 240 hosts"):
        make_spec("sg", hosts=MAX_HOSTS + 1)
    with pytest.raises(UsageError, match="MTU"):
        make_spec("sg", hosts=1, mtu=67)
    with pytest.raises(UsageError, match="MTU"):
        make_spec("sg", hosts=1, mtu=65536)
    spec = make_spec("sg", hosts=2, rate="1gbit", loss=5, loss_scope=LossScope.ALL)
    assert spec.hosts == (HostSpec(rate=10**9, loss=Loss(per10000=500, scope=LossScope.ALL)),) * 2


def test_with_host_checks_the_index() -> None:
    spec = make_spec("sg", hosts=2)
    changed = with_host(spec, 2, HostSpec(link_up=False))
    assert changed.hosts[1].link_up is False
    assert changed.hosts[0].link_up is True
    with pytest.raises(UsageError, match="no host h3"):
        with_host(spec, 3, HostSpec())


# --- diffs against scripted states -----------------------------------------------------


def test_a_new_lab_is_built_bridge_first() -> None:
    spec = make_spec("sg", hosts=2, rate="100mbit", loss=1)
    actions = diff(plan_lab(spec, NET), model.empty("sg"))
    assert actions[0] == CreateBridge(ifname="sg-br", mtu=1500, marker="servergroup-lab name=sg")
    assert actions[1] == AddAddress(
        netns=None, ifname="sg-br", address=IPv4Interface("198.18.0.1/24")
    )
    shaping = shaping_for(10**8, 1500)
    assert shaping is not None
    assert actions[2:11] == (
        CreateNamespace(netns="sg-h1"),
        CreateVeth(root_ifname="sg-h1", netns="sg-h1", ifname="eth0"),
        ConfigurePort(ifname="sg-h1", bridge="sg-br", mtu=1500, up=True),
        ConfigureHostLink(netns="sg-h1", ifname="eth0", mtu=1500),
        AddAddress(netns="sg-h1", ifname="eth0", address=IPv4Interface("198.18.0.11/24")),
        AddMulticastRoute(netns="sg-h1", ifname="eth0"),
        SetShaping(netns="sg-h1", ifname="eth0", shaping=shaping),
        SetShaping(netns=None, ifname="sg-h1", shaping=shaping),
        SetLoss(netns="sg-h1", ifname="eth0", loss=Loss(per10000=100)),
    )
    assert len(actions) == 2 + 2 * 9


def test_a_built_lab_needs_nothing() -> None:
    spec = make_spec("sg", hosts=3, mtu=9000, rate="1gbit", loss=2)
    assert diff(plan_lab(spec, NET), realized(spec)) == ()


def test_a_rate_change_only_reshapes() -> None:
    before = make_spec("sg", hosts=2, rate="100mbit")
    after = make_spec("sg", hosts=2, rate="1gbit")
    actions = diff(plan_lab(after, NET), realized(before))
    assert {type(a) for a in actions} == {SetShaping}
    assert sorted((a.netns or "", a.ifname) for a in actions if isinstance(a, SetShaping)) == [
        ("", "sg-h1"),
        ("", "sg-h2"),
        ("sg-h1", "eth0"),
        ("sg-h2", "eth0"),
    ]


def test_removing_the_rate_clears_both_ends() -> None:
    before = make_spec("sg", hosts=1, rate="100mbit")
    actions = diff(plan_lab(make_spec("sg", hosts=1), NET), realized(before))
    assert actions == (
        ClearShaping(netns="sg-h1", ifname="eth0"),
        ClearShaping(netns=None, ifname="sg-h1"),
    )


def test_loss_change_and_removal() -> None:
    before = make_spec("sg", hosts=1, loss=5)
    assert diff(plan_lab(make_spec("sg", hosts=1, loss=10), NET), realized(before)) == (
        SetLoss(netns="sg-h1", ifname="eth0", loss=Loss(per10000=1000)),
    )
    assert diff(plan_lab(make_spec("sg", hosts=1), NET), realized(before)) == (
        ClearLoss(netns="sg-h1"),
    )


def test_link_down_touches_only_that_port() -> None:
    spec = make_spec("sg", hosts=3)
    down = with_host(spec, 2, HostSpec(link_up=False))
    assert diff(plan_lab(down, NET), realized(spec)) == (
        ConfigurePort(ifname="sg-h2", bridge="sg-br", mtu=1500, up=False),
    )


def test_shrinking_removes_the_extra_hosts_only() -> None:
    actions = diff(plan_lab(make_spec("sg", hosts=2), NET), realized(make_spec("sg", hosts=4)))
    assert actions == (
        DeleteLink(netns=None, ifname="sg-h3"),
        DeleteLink(netns=None, ifname="sg-h4"),
        RemoveNamespace(netns="sg-h3"),
        RemoveNamespace(netns="sg-h4"),
    )


def test_an_mtu_change_reaches_every_link_and_the_bridge_last() -> None:
    spec = make_spec("sg", hosts=2, rate="1gbit")
    actions = diff(plan_lab(make_spec("sg", hosts=2, mtu=9000, rate="1gbit"), NET), realized(spec))
    kinds = [type(a) for a in actions]
    assert kinds.count(ConfigurePort) == 2
    assert kinds.count(ConfigureHostLink) == 2
    assert actions[-1] == ConfigureBridge(
        ifname="sg-br", mtu=9000, marker="servergroup-lab name=sg"
    )
    # with a rate of 1 Gbit/s the bucket is 4 ms of traffic, bigger than any frame,
    # so the MTU does not change the tbf
    assert SetShaping not in kinds


def test_tc_rounding_does_not_cause_churn() -> None:
    spec = make_spec("sg", hosts=1, rate="777777777")
    observed = realized(spec)
    host = observed.hosts[0]
    assert host.shaping is not None
    rounded = replace(host.shaping, burst=host.shaping.burst - 97, latency_us=49_999)
    observed = replace(observed, hosts=(replace(host, shaping=rounded),))
    assert diff(plan_lab(spec, NET), observed) == ()


def test_half_a_veth_pair_is_replaced() -> None:
    spec = make_spec("sg", hosts=1)
    observed = realized(spec)
    broken = replace(observed, hosts=(replace(observed.hosts[0], link=None),))
    actions = diff(plan_lab(spec, NET), broken)
    assert actions[:2] == (
        DeleteLink(netns=None, ifname="sg-h1"),
        CreateVeth(root_ifname="sg-h1", netns="sg-h1", ifname="eth0"),
    )
    assert diff(plan_lab(spec, NET), model.run(broken, actions)) == ()


def test_a_namespace_that_cannot_be_entered_is_made_again() -> None:
    spec = make_spec("sg", hosts=2)
    observed = realized(spec)
    h1, h2 = observed.hosts
    broken = ObservedHost(
        netns=h2.netns,
        loopback_up=False,
        link=None,
        multicast_route=False,
        shaping=None,
        loss=None,
        loss_table=False,
        usable=False,
    )
    observed = replace(observed, hosts=(h1, broken))
    with pytest.raises(LabError, match="namespace of host h2 cannot be entered"):
        summarize(observed)
    actions = diff(plan_lab(spec, NET), observed)
    assert actions[:4] == (
        RemoveNamespace(netns="sg-h2"),
        CreateNamespace(netns="sg-h2"),
        DeleteLink(netns=None, ifname="sg-h2"),
        CreateVeth(root_ifname="sg-h2", netns="sg-h2", ifname="eth0"),
    )
    assert diff(plan_lab(spec, NET), model.run(observed, actions)) == ()


def test_a_foreign_address_is_removed() -> None:
    spec = make_spec("sg", hosts=1)
    observed = realized(spec)
    bridge = observed.bridge
    assert bridge is not None
    extra = IPv4Interface("198.18.0.99/24")
    observed = replace(observed, bridge=replace(bridge, addresses=(*bridge.addresses, extra)))
    actions = diff(plan_lab(spec, NET), observed)
    assert [describe(a) for a in actions] == ["RemoveAddress sg-br"]


def test_teardown_removes_everything_bridge_last() -> None:
    observed = realized(make_spec("sg", hosts=2, rate="1gbit", loss=3))
    actions = teardown(observed)
    assert actions[-1] == DeleteBridge(ifname="sg-br")
    assert model.run(observed, actions).empty
    assert teardown(model.empty("sg")) == ()


# --- properties: any reshape converges in one pass -------------------------------------

host_specs = st.builds(
    HostSpec,
    rate=st.one_of(st.none(), st.sampled_from([10**6, 10**8, 10**9, 777_777_776])),
    loss=st.one_of(
        st.none(),
        st.builds(Loss, per10000=st.integers(1, 10_000), scope=st.sampled_from(list(LossScope))),
    ),
    link_up=st.booleans(),
)
specs = st.builds(
    LabSpec,
    name=st.just("sg"),
    mtu=st.sampled_from([1500, 9000, 68, 65535]),
    hosts=st.lists(host_specs, min_size=1, max_size=5).map(tuple),
    owner=st.one_of(st.none(), st.builds(Owner, pid=st.integers(1, 99), start_time=st.just(7))),
)


@given(specs, specs)
def test_any_lab_reshapes_into_any_other_in_one_pass(before: LabSpec, after: LabSpec) -> None:
    observed = realized(before)
    plan = plan_lab(after, NET)
    reshaped = model.run(observed, diff(plan, observed))
    assert diff(plan, reshaped) == ()
    assert spec_of(reshaped) == after


@given(specs)
def test_teardown_of_any_lab_leaves_nothing(spec: LabSpec) -> None:
    observed = realized(spec)
    assert model.run(observed, teardown(observed)).empty


# --- reading a lab back ----------------------------------------------------------------


def test_summarize_reports_hosts() -> None:
    spec = make_spec(
        "sg", hosts=2, mtu=9000, rate="1gbit", loss="2.5", owner=Owner(pid=42, start_time=1)
    )
    status = summarize(realized(spec))
    assert status is not None
    assert status.bridge == "sg-br"
    assert status.root_address == IPv4Address("198.18.0.1")
    assert status.owner_pid == 42
    h2 = status.host("h2")
    assert (h2.address, h2.mtu, h2.rate, h2.loss, h2.link_up) == (
        IPv4Address("198.18.0.12"),
        9000,
        10**9,
        2.5,
        True,
    )
    assert status.as_dict()["hosts"] == [h.as_dict() for h in status.hosts]
    assert h2.as_dict()["address"] == "198.18.0.12"
    with pytest.raises(UsageError, match="no host h3"):
        status.host("h3")


def test_summarize_nothing() -> None:
    assert summarize(model.empty("sg")) is None
    assert spec_of(model.empty("sg")) is None


def test_summarize_refuses_damaged_labs() -> None:
    observed = realized(make_spec("sg", hosts=3))
    no_bridge = replace(observed, bridge=None)
    with pytest.raises(LabError, match=r"^lab sg is incomplete \(its bridge sg-br is missing\)"):
        summarize(no_bridge)
    gap = replace(observed, hosts=tuple(h for h in observed.hosts if h.netns != "sg-h2"))
    with pytest.raises(LabError, match=r"host h2 is missing"):
        summarize(gap)
    assert observed.bridge is not None
    no_address = replace(observed, bridge=replace(observed.bridge, addresses=()))
    with pytest.raises(LabError, match=r"no address in 198\.18\.0\.0/15"):
        summarize(no_address)


def test_lab_range_is_the_benchmarking_range() -> None:
    assert IPv4Network("198.18.0.0/15") == LAB_RANGE
