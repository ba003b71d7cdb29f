"""Every parser of text a user types: any text gives a value or one of our errors, never another."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servergroup.common import units
from servergroup.common.errors import ServergroupError
from servergroup.common.exporter import parse_listen
from servergroup.config import Endpoint, parse_endpoints
from servergroup.multicast.config import parse_ip, parse_rate
from servergroup.replication.front import parse_address
from servergroup.replication.hooks import parse_failure_point

pytestmark = pytest.mark.timeout(120)

PARSERS: dict[str, Callable[[str], object]] = {
    "size": units.parse_size,
    "rate": units.parse_rate,
    "image rate": parse_rate,
    "etcd endpoints": parse_endpoints,
    "etcd endpoint": Endpoint.parse,
    "IPv4 address": lambda text: parse_ip(text, "LOCAL_IP"),
    "HOST:PORT": parse_address,
    "--metrics": parse_listen,
    "failure point": parse_failure_point,
}

#: Arbitrary text, and text made of what these formats are made of (so that it gets far).
TEXT = st.one_of(
    st.text(),
    st.text(alphabet="0123456789.:[]/@%kKmMgGiBb -+eE_xhtps", max_size=40),
)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_any_text_gives_a_value_or_our_error(name: str) -> None:
    parse = PARSERS[name]

    @settings(max_examples=400, deadline=None)
    @given(TEXT)
    def check(text: str) -> None:
        said = "parsed"
        try:
            parse(text)
        except ServergroupError as exc:
            said = str(exc)
        assert said  # a refusal is one sentence for the user, never empty

    check()


@pytest.mark.parametrize("text", ["http://[", "http://[::1", "[::1]:2379]", "https://[zz]:1"])
def test_a_broken_ipv6_endpoint_is_refused_in_one_sentence(text: str) -> None:
    with pytest.raises(ServergroupError, match=r"is not of the form host:port|invalid port"):
        Endpoint.parse(text)
