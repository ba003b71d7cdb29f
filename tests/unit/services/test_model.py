"""Service and domain definitions (`services.model`): loading, refusals naming the field, codec."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest

from servergroup.common.errors import ConfigError
from servergroup.services.metadata import ActionInfo, AgentInfo, ParameterInfo
from servergroup.services.model import (
    AgentRef,
    DefinitionError,
    DomainMember,
    Monitor,
    Recovery,
    Service,
    StoredDefinitionError,
    check_stop_fits,
    decode_domain,
    decode_service,
    encode_domain,
    encode_service,
    parse_definitions,
    resolve,
)

GOOD = """
[[domain]]
name = "lab"
ordered = true
restricted = true
nodes = ["h1", {node = "h2", priority = 5}, "h3"]

[[domain]]
name = "web-hosts"
server_group = "web"
nofailback = true

[[service]]
name = "dummy"
agent = "ocf:heartbeat:Dummy"
domain = "lab"
recovery = "relocate"
max_restarts = 2
restart_expire_time = 60
start_timeout = 15
address = "{node_ip}:7000"
parameters = { state = "/tmp/d.state", fake = 3 }
[[service.monitor]]
depth = 10
interval = 5
timeout = 2
[[service.monitor]]
interval = 3
timeout = 1

[[service]]
name = "csnap"
agent = "/opt/agents/csnap"
instances = 3
promotable = true
domain = "web-hosts"
"""


def test_a_good_file_loads_with_every_field() -> None:
    defs = parse_definitions(GOOD)
    lab = defs.domain("lab")
    assert lab is not None
    assert lab.members == (
        DomainMember(node="h1", priority=1),
        DomainMember(node="h2", priority=5),
        DomainMember(node="h3", priority=3),
    )
    assert lab.ordered
    assert lab.restricted
    assert not lab.nofailback
    web = defs.domain("web-hosts")
    assert web is not None
    assert web.server_group == "web"
    assert web.members == ()
    dummy = defs.service("dummy")
    assert dummy is not None
    assert dummy.agent == AgentRef(provider="heartbeat", type="Dummy")
    assert dummy.parameters == {"state": "/tmp/d.state", "fake": "3"}
    assert dummy.monitors == (
        Monitor(depth=0, interval=3, timeout=1),
        Monitor(depth=10, interval=5, timeout=2),
    )
    assert dummy.recovery is Recovery.RELOCATE
    assert (dummy.max_restarts, dummy.restart_expire_time) == (2, 60)
    assert dummy.start_timeout == 15
    assert dummy.stop_timeout is None
    assert dummy.render_address(node="h1", node_ip="198.18.0.2", instance=0, token=9) == (
        "198.18.0.2:7000"
    )
    csnap = defs.service("csnap")
    assert csnap is not None
    assert csnap.agent == AgentRef(path="/opt/agents/csnap")
    assert csnap.instances == 3
    assert csnap.promotable
    assert csnap.enabled
    assert csnap.recovery is Recovery.RESTART
    assert csnap.address is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[service]]\nname = "a"\nagent = "ocf:heartbeat:Dummy"\ninstnces = 2\n', "'instnces'"),
        ('[[service]]\nname = "a"\nagent = "heartbeat:Dummy"\n', "ocf:<provider>:<type>"),
        ('[[service]]\nname = "a"\nagent = "ocf:heart beat:Dummy"\n', "ocf:<provider>:<type>"),
        ('[[service]]\nname = "a"\n', "service 'a': agent is missing"),
        ('[[service]]\nname = "a b"\nagent = "/x"\n', "name 'a b' is not a name"),
        ('[[service]]\nname = "a"\nagent = "/x"\ninstances = 0\n', "instances is 0"),
        (
            '[[service]]\nname = "a"\nagent = "/x"\npromotable = true\n',
            "promotable needs instances >= 2",
        ),
        ('[[service]]\nname = "a"\nagent = "/x"\nrecovery = "pray"\n', "recovery is 'pray'"),
        (
            '[[service]]\nname = "a"\nagent = "/x"\n[[service.monitor]]\ninterval = 5\n'
            "timeout = 5\n",
            "timeout (5 s) must be below the interval (5 s)",
        ),
        (
            '[[service]]\nname = "a"\nagent = "/x"\n[[service.monitor]]\ndepth = 5\ninterval = 5\n'
            "timeout = 1\n",
            "depth is 5",
        ),
        (
            '[[service]]\nname = "a"\nagent = "/x"\n[[service.monitor]]\ninterval = 5\n'
            "timeout = 1\n[[service.monitor]]\ninterval = 9\ntimeout = 1\n",
            "lists one depth twice",
        ),
        ('[[service]]\nname = "a"\nagent = "/x"\nstop_timeout = -1\n', "stop_timeout is -1"),
        ('[[service]]\nname = "a"\nagent = "/x"\nenabled = "yes"\n', "enabled must be true"),
        ('[[service]]\nname = "a"\nagent = "/x"\naddress = "{host}:1"\n', "uses {host}"),
        ('[[service]]\nname = "a"\nagent = "/x"\ndomain = "nowhere"\n', "domain 'nowhere' is not"),
        ('[[service]]\nname = "a"\nagent = "/x"\nparameters = { "a-b" = "1" }\n', "parameters.a-b"),
        (
            '[[service]]\nname = "a"\nagent = "/x"\n[[service]]\nname = "a"\nagent = "/y"\n',
            "service 'a' is defined twice",
        ),
        ('[[domain]]\nname = "d"\nnodes = []\n', "domain 'd': nodes must be a non-empty list"),
        ('[[domain]]\nname = "d"\nnodes = ["a", "a"]\n', "nodes list 'a' twice"),
        (
            '[[domain]]\nname = "d"\nnodes = ["a"]\nserver_group = "g"\n',
            "nodes and server_group exclude each other",
        ),
        (
            '[[domain]]\nname = "d"\nserver_group = "g"\nordered = true\n',
            "ordered needs listed nodes",
        ),
        ('[[domain]]\nname = "d"\nnodes = [{node = "a", priority = 0}]\n', "priority is 0"),
        (
            '[[domain]]\nname = "d"\nrestricted = true\nnodes = ["a"]\n'
            '[[service]]\nname = "s"\nagent = "/x"\ninstances = 2\ndomain = "d"\n',
            "cannot run on restricted domain 'd' of 1 node(s)",
        ),
        ('[services]\nname = "a"\n', "unknown top-level key 'services'"),
        ("[[service]\n", "not valid TOML"),
    ],
)
def test_bad_definitions_are_refused_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definitions(text)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[service]]\nname = "a"\nagent = "/x"\n[[service]]\nname = "web"\nagent = "/x"\n'
            'colour = "red"\n',
            "service 'web' has an unknown key 'colour'.",
        ),
        (
            '[[domain]]\nname = "d"\nnodes = ["a"]\n[[domain]]\nname = "e"\nnodes = ["a"]\n'
            "colour = 1\n",
            "domain 'e' has an unknown key 'colour'.",
        ),
        # No usable name: the table's position in the file.
        (
            '[[service]]\nname = "a"\nagent = "/x"\n[[service]]\ncolour = 1\n',
            "service 2 has an unknown key 'colour'.",
        ),
        ('[[service]]\nname = "a b"\ncolour = 1\n', "service 1 has an unknown key 'colour'."),
    ],
)
def test_a_table_with_an_unknown_key_is_named_by_its_name(text: str, message: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definitions(text)
    assert str(caught.value) == message
    assert isinstance(caught.value, ConfigError)
    assert "\n" not in str(caught.value)


def test_the_codec_round_trips_and_checks_what_it_decodes() -> None:
    defs = parse_definitions(GOOD)
    for service in defs.services:
        assert decode_service(encode_service(service)) == service
    for domain in defs.domains:
        assert decode_domain(encode_domain(domain)) == domain
    with pytest.raises(StoredDefinitionError, match="not JSON"):
        decode_service(b"\xff")
    with pytest.raises(StoredDefinitionError, match="instances is 0"):
        decode_service(b'{"name": "a", "agent": "/x", "instances": 0}')


def _info(*actions: ActionInfo, max_instances: int | None = None) -> AgentInfo:
    return AgentInfo(name="t", parameters=(), actions=actions, max_instances=max_instances)


def test_resolve_takes_the_agent_hints_and_its_limits() -> None:
    defs = parse_definitions(GOOD)
    csnap = defs.service("csnap")
    dummy = defs.service("dummy")
    assert csnap is not None
    assert dummy is not None
    info = _info(
        ActionInfo(name="start", timeout=30),
        ActionInfo(name="stop", timeout=25),
        ActionInfo(name="monitor", depth=0, interval=10, timeout=20),
        ActionInfo(name="monitor", depth=10, interval=11, timeout=5),
        ActionInfo(name="promote", timeout=10),
        ActionInfo(name="demote", timeout=10),
    )
    resolved = resolve(csnap, info)
    assert (resolved.start_timeout, resolved.stop_timeout) == (30, 25)
    # A hint whose timeout is not below its interval is made safe.
    assert resolved.monitors == (
        Monitor(depth=0, interval=10, timeout=5),
        Monitor(depth=10, interval=11, timeout=5),
    )
    # What the service says wins over the hints.
    assert resolve(dummy, info).monitors == dummy.monitors
    assert resolve(dummy, info).start_timeout == 15
    with pytest.raises(DefinitionError, match="above the agent's maxinstances 2"):
        resolve(csnap, _info(*info.actions, max_instances=2))
    with pytest.raises(DefinitionError, match="cannot promote"):
        resolve(csnap, _info(ActionInfo(name="start")))


def test_resolve_checks_the_parameters_against_the_agent() -> None:
    dummy = parse_definitions(GOOD).service("dummy")
    assert dummy is not None
    takes = (ParameterInfo(name="state"), ParameterInfo(name="fake"))
    ok = AgentInfo(name="Dummy", parameters=takes, actions=())
    assert resolve(dummy, ok).parameters == dummy.parameters
    typo = replace(dummy, parameters={"stat": "/tmp/x"})
    with pytest.raises(DefinitionError, match=r"parameters.stat is not a parameter of agent"):
        resolve(typo, ok)
    needs = AgentInfo(
        name="Dummy", parameters=(*takes, ParameterInfo(name="port", required=True)), actions=()
    )
    with pytest.raises(DefinitionError, match=r"parameters.port is required by agent"):
        resolve(dummy, needs)


def test_a_stop_that_cannot_end_before_the_lease_may_expire_is_refused() -> None:
    dummy = parse_definitions(GOOD).service("dummy")
    assert dummy is not None
    fits = partial(
        check_stop_fits, renew_interval=1.0, renew_timeout=1.0, fence_margin=0.5, kill_grace=0.2
    )
    quick = replace(dummy, stop_timeout=2.0)
    fits(quick, lease_ttl=10)  # 2.2 s of 6.5 s
    with pytest.raises(DefinitionError) as caught:
        fits(quick, lease_ttl=5)  # of 1.5 s
    assert str(caught.value) == (
        "service 'dummy': stop_timeout 2 s (with kill grace 2.2 s) does not fit in "
        "the 1.5 s a 5 s lease leaves for stopping; lower stop_timeout or raise lease_ttl."
    )
    # The agent's hint filled in for a file without stop_timeout: the sentence says so.
    with pytest.raises(DefinitionError) as caught:
        fits(quick, lease_ttl=5, agent_default=True)
    assert str(caught.value) == (
        "service 'dummy': stop_timeout 2 s (the agent's default; with kill grace 2.2 s) does "
        "not fit in the 1.5 s a 5 s lease leaves for stopping; set a lower stop_timeout or "
        "raise lease_ttl."
    )
    csnap = replace(dummy, promotable=True, instances=2, stop_timeout=2.0)
    with pytest.raises(DefinitionError, match=r"with demote and kill grace 7\.2 s"):
        fits(csnap, lease_ttl=10, demote_timeout=5.0)
    fits(quick, lease_ttl=10, demote_timeout=5.0)


def test_parameters_may_name_the_node_its_address_the_instance_and_the_state_dir() -> None:
    service = Service(
        name="db",
        agent=AgentRef(provider="sgtest", type="journal"),
        parameters={
            "state": "/run/{node}-{instance}.state",
            "peer": "{node_ip}",
            "raw": "{x} {}",
            "dir": "{state_dir}/services/db-{node}.state",
        },
    )
    rendered = service.render_parameters(
        node="h2", node_ip="198.18.0.12", instance=1, state_dir="/tmp/lab-a"
    )
    assert rendered.parameters == {
        "state": "/run/h2-1.state",
        "peer": "198.18.0.12",
        "raw": "{x} {}",  # other braces are the agent's business
        "dir": "/tmp/lab-a/services/db-h2.state",
    }
    assert service.parameters["state"] == "/run/{node}-{instance}.state"
