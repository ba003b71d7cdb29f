"""What `service list` and `service status` show, from listings built by hand (pure)."""

from __future__ import annotations

import json

import pytest

from servergroup.coordination.types import KeyValue
from servergroup.services import store
from servergroup.services.client import parse_file
from servergroup.services.model import (
    AgentRef,
    DefinitionError,
    DomainMember,
    FailoverDomain,
    Service,
    encode_service,
    parse_definitions,
)
from servergroup.services.placement import InstanceId
from servergroup.services.status import (
    ServiceState,
    errors_of,
    service_status,
    status_json,
    summaries,
    summary_json,
    unreadable_definitions,
)

WEB = Service(name="web", agent=AgentRef.parse("ocf:heartbeat:Dummy"), instances=2)


def kv(key: str, value: bytes, *, create: int = 5) -> KeyValue:
    return KeyValue(key=key, value=value, create_revision=create, mod_revision=create, version=1)


def owner(
    index: int, node: str, create: int, *, master: bool = False, failed: bool = False
) -> KeyValue:
    return kv(
        store.owner_key(InstanceId(service="web", index=index)),
        store.encode_owner(store.OwnerRecord(node=node, master=master, failed=failed)),
        create=create,
    )


def listing(*items: KeyValue) -> store.Listing:
    return store.read_listing([kv(store.def_key("web"), encode_service(WEB)), *items])


@pytest.mark.parametrize(
    ("items", "state"),
    [
        ((), ServiceState.STOPPED),
        ((owner(0, "h1", 7),), ServiceState.PARTIAL),
        ((owner(0, "h1", 7), owner(1, "h2", 8)), ServiceState.RUNNING),
        ((owner(0, "h1", 7), owner(1, "h2", 8, failed=True)), ServiceState.FAILED),
        (
            (
                kv(
                    store.state_key("web"),
                    store.encode_state(store.StateRecord(disabled=True, at=1.0)),
                ),
            ),
            ServiceState.DISABLED,
        ),
        (
            (
                kv(
                    store.blocked_key(InstanceId(service="web", index=1)),
                    store.encode_block(store.BlockRecord(node="h2", token=3, reason="x", at=1.0)),
                ),
                kv(
                    store.state_key("web"),
                    store.encode_state(store.StateRecord(disabled=True, at=1.0)),
                ),
            ),
            ServiceState.BLOCKED,
        ),
        (
            (
                kv(
                    store.state_key("web"),
                    store.encode_state(store.StateRecord(fatal=True, reason="rc 6", at=1.0)),
                ),
            ),
            ServiceState.FATAL,
        ),
        (
            (
                kv(
                    store.state_key("web"),
                    store.encode_state(
                        store.StateRecord(
                            fatal=True, reason=f"{store.REFUSED}stop_timeout 9 s", at=1.0
                        )
                    ),
                ),
                kv(
                    store.blocked_key(InstanceId(service="web", index=1)),
                    store.encode_block(store.BlockRecord(node="h2", token=3, reason="x", at=1.0)),
                ),
            ),
            ServiceState.REFUSED,
        ),
    ],
)
def test_the_state_word_names_what_to_look_at_first(
    items: tuple[KeyValue, ...], state: ServiceState
) -> None:
    assert summaries(listing(*items))[0].state is state
    status = service_status(listing(*items), "web")
    assert status is not None
    assert status.state is state


def test_the_words_of_a_refusal_and_of_a_failed_stop() -> None:
    assert ServiceState.BLOCKED.value == "failed-stop"
    assert ServiceState.REFUSED.value == "refused"
    refused = store.StateRecord(fatal=True, reason=f"{store.REFUSED}x", at=1.0)
    assert refused.refused
    assert not store.StateRecord(fatal=True, reason="rc 6", at=1.0).refused
    assert not store.StateRecord(fatal=False, reason=f"{store.REFUSED}x", at=1.0).refused


def test_status_gathers_one_service_and_nothing_of_another() -> None:
    master = store.MasterRecord(node="h1", index=0, token=7, address="a:1", at=2.0)
    failure = store.FailureRecord(times=(1.0, 2.0), reason="monitor")
    found = listing(
        owner(0, "h1", 7, master=True),
        kv(store.master_key("web"), store.encode_master(master)),
        kv(store.failure_key("web", "h2"), store.encode_failure(failure)),
        kv(store.failure_key("webby", "h2"), store.encode_failure(failure)),
        kv(store.ban_key("web", "h3"), store.encode_ban(store.BanRecord(reason="rc 5", at=1.0))),
        kv(
            store.relocation_key(InstanceId(service="web", index=0)),
            store.encode_relocation(store.RelocationRecord(from_node="h1", at=1.0)),
        ),
        kv(store.owner_key(InstanceId(service="webby", index=0)), b"junk"),
        kv(store.owner_key(InstanceId(service="web", index=3)), b"junk"),
    )
    status = service_status(found, "web")
    assert status is not None
    assert [(i.index, i.node, i.token, i.master) for i in status.instances] == [
        (0, "h1", 7, True),
        (1, None, None, False),
    ]
    assert status.master == master
    assert status.instances[0].relocation is not None
    assert dict(status.failures) == {"h2": failure}
    assert list(status.bans) == ["h3"]
    assert status.errors == errors_of(found, "web")
    assert len(status.errors) == 1
    assert status.errors[0].startswith("key services/owners/web/3:")
    assert service_status(found, "nothing") is None
    # The JSON is JSON, and says the same.
    shown = json.loads(json.dumps(status_json(status)))
    assert shown["state"] == "partial"
    assert shown["master"]["token"] == 7
    assert shown["failures"]["h2"]["count"] == 2
    assert shown["instances"][0]["relocation"] == {
        "from": "h1",
        "to": None,
        "at": 1.0,
        "master": False,
        "waiting": None,
    }


def test_an_unreadable_definition_is_listed_where_the_service_would_be() -> None:
    found = listing(kv(store.def_key("bad"), b"{"), kv(store.domain_key("d"), b"{"))
    assert list(unreadable_definitions(found)) == ["bad"]
    rows = summaries(found)
    assert [(r.name, r.state) for r in rows] == [
        ("bad", ServiceState.UNREADABLE),
        ("web", ServiceState.STOPPED),
    ]
    assert summary_json(rows[0])["error"].startswith("key services/defs/bad:")
    assert errors_of(found, "d") == ()  # a domain's error is nobody's service error


def test_a_file_may_name_a_stored_domain_but_not_an_unknown_one() -> None:
    text = '[[service]]\nname = "a"\nagent = "ocf:heartbeat:Dummy"\ndomain = "lab"\ninstances = 2\n'
    with pytest.raises(DefinitionError, match="domain 'lab' is not defined"):
        parse_definitions(text)
    parsed = parse_file(text)
    assert parsed.outside == ("lab",)
    two = FailoverDomain(
        name="lab",
        restricted=True,
        members=(DomainMember(node="h1", priority=1), DomainMember(node="h2", priority=2)),
    )
    assert parse_definitions(text, known_domains={"lab": two}).services[0].domain == "lab"
    one = FailoverDomain(name="lab", restricted=True, members=two.members[:1])
    with pytest.raises(DefinitionError, match="instances = 2 cannot run on restricted domain"):
        parse_definitions(text, known_domains={"lab": one})
    # A domain of the file replaces a known one of the same name.
    mine = text + '[[domain]]\nname = "lab"\nnodes = ["h1"]\n'
    assert parse_definitions(mine, known_domains={"lab": one}).domains[0].restricted is False


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (store.StateRecord(disabled=False, reason="operator", at=1.0), None),  # enabled again
        (store.StateRecord(disabled=True, reason="operator", at=1.0), "operator"),
        (store.StateRecord(fatal=True, reason="rc 6", at=1.0), "rc 6"),
        (None, None),
    ],
)
def test_the_reason_is_shown_only_for_a_disabled_or_fatal_service(
    state: store.StateRecord | None, reason: str | None
) -> None:
    items = [owner(0, "h1", 7)]
    if state is not None:
        items.append(kv(store.state_key("web"), store.encode_state(state)))
    status = service_status(listing(*items), "web")
    assert status is not None
    assert (status.reason or None) == reason
    assert status_json(status)["reason"] == reason
