"""The broadcast keys: one per (group, host), under the group's prefix only."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from servergroup.servers.model import NAME_PATTERN
from servergroup.servers.registry import (
    broadcast_key,
    broadcast_prefix,
    legacy_broadcast_key,
    parse_broadcast_key,
)

names = st.from_regex(NAME_PATTERN, fullmatch=True)


@given(names, names, names)
def test_a_hosts_key_is_under_its_groups_prefix_and_no_other(
    group: str, other: str, host: str
) -> None:
    key = broadcast_key(group, host)
    assert key.startswith(broadcast_prefix(group))
    assert parse_broadcast_key(key) == (group, host)
    # The previous layout's one key per group is under no group's prefix.
    assert not legacy_broadcast_key(group).startswith(broadcast_prefix(other))
    assert parse_broadcast_key(legacy_broadcast_key(group)) is None
    if other != group:
        assert not key.startswith(broadcast_prefix(other))


def test_prefixes_of_groups_whose_names_extend_each_other_do_not_overlap() -> None:
    assert not broadcast_key("ab", "h1").startswith(broadcast_prefix("a"))
    assert not legacy_broadcast_key("a").startswith(broadcast_prefix("a"))
    assert parse_broadcast_key("broadcasts/a/h1/x") is None
    assert parse_broadcast_key("registry/groups/a") is None
