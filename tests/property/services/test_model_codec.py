"""Properties of the definitions codec (hypothesis): round trip, garbage raises only our error."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from servergroup.services.model import (
    AgentRef,
    DomainMember,
    FailoverDomain,
    Monitor,
    Recovery,
    Service,
    StoredDefinitionError,
    decode_domain,
    decode_service,
    encode_domain,
    encode_service,
)

names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,10}\Z")
seconds = st.floats(min_value=0.01, max_value=1e6, allow_nan=False)


@st.composite
def monitors(draw: st.DrawFn) -> tuple[Monitor, ...]:
    depths = draw(st.lists(st.sampled_from((0, 10, 20)), unique=True, max_size=3))
    found = []
    for depth in sorted(depths):
        interval = draw(st.floats(min_value=0.02, max_value=1e5))
        timeout = draw(st.floats(min_value=0.01, max_value=interval, exclude_max=True))
        found.append(Monitor(depth=depth, interval=interval, timeout=timeout))
    return tuple(found)


@st.composite
def services(draw: st.DrawFn) -> Service:
    promotable = draw(st.booleans())
    agent = draw(
        st.builds(lambda p, t: AgentRef(provider=p, type=t), names, names)
        | st.builds(lambda n: AgentRef(path=f"/opt/{n}"), names)
    )
    return Service(
        name=draw(names),
        agent=agent,
        parameters=draw(
            st.dictionaries(st.from_regex(r"\A[a-z_][a-z0-9_]{0,8}\Z"), st.text(max_size=8))
        ),
        monitors=draw(monitors()),
        start_timeout=draw(st.none() | seconds),
        stop_timeout=draw(st.none() | seconds),
        instances=draw(st.integers(min_value=2 if promotable else 1, max_value=9)),
        promotable=promotable,
        recovery=draw(st.sampled_from(Recovery)),
        max_restarts=draw(st.integers(min_value=0, max_value=50)),
        restart_expire_time=draw(seconds),
        enabled=draw(st.booleans()),
        domain=draw(st.none() | names),
        address=draw(st.sampled_from([None, "{node_ip}:7000", "{node}/{instance}#{token}"])),
    )


@st.composite
def domains(draw: st.DrawFn) -> FailoverDomain:
    if draw(st.booleans()):
        return FailoverDomain(
            name=draw(names),
            server_group=draw(names),
            restricted=draw(st.booleans()),
            nofailback=draw(st.booleans()),
        )
    nodes = draw(st.lists(names, unique=True, min_size=1, max_size=6))
    return FailoverDomain(
        name=draw(names),
        members=tuple(
            DomainMember(node=n, priority=draw(st.integers(min_value=1, max_value=100)))
            for n in nodes
        ),
        ordered=draw(st.booleans()),
        restricted=draw(st.booleans()),
        nofailback=draw(st.booleans()),
    )


@given(services())
def test_a_service_round_trips(service: Service) -> None:
    assert decode_service(encode_service(service)) == service


@given(domains())
def test_a_domain_round_trips(domain: FailoverDomain) -> None:
    assert decode_domain(encode_domain(domain)) == domain


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_garbage_raises_only_our_error(data: bytes) -> None:
    for decode in (decode_service, decode_domain):
        with contextlib.suppress(StoredDefinitionError):
            decode(data)
