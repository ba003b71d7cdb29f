"""The service manager's records: codecs round trip, bad records named, listings decoded."""

from __future__ import annotations

import pytest

from servergroup.coordination.types import KeyValue
from servergroup.services import store
from servergroup.services.model import (
    AgentRef,
    DomainMember,
    FailoverDomain,
    Service,
    encode_domain,
    encode_service,
)
from servergroup.services.placement import InstanceId, Relocation

DUMMY = Service(name="web", agent=AgentRef.parse("ocf:heartbeat:Dummy"))


def kv(key: str, value: bytes, *, create: int = 5, lease: int = 0) -> KeyValue:
    return KeyValue(
        key=key, value=value, create_revision=create, mod_revision=create, version=1, lease=lease
    )


def test_records_round_trip() -> None:
    monitor = store.MonitorResult(depth=10, ok=False, code=None, reason="timed out", at=3.5)
    owner = store.OwnerRecord(
        node="h1",
        master=True,
        failed=True,
        busy=True,
        action="promote",
        started_at=1.0,
        monitors=(monitor,),
        address="198.18.0.2:7000",
    )
    assert store.decode_owner(store.encode_owner(owner)) == owner
    assert store.decode_owner(
        store.encode_owner(store.OwnerRecord(node="h2"))
    ) == store.OwnerRecord(node="h2")
    node = store.NodeRecord(node="h1", ip="198.18.0.2", joined_at=12.25)
    assert store.decode_node(store.encode_node(node)) == node
    master = store.MasterRecord(node="h1", index=0, token=42, address=None, at=2.0)
    assert store.decode_master(store.encode_master(master)) == master
    failure = store.FailureRecord(times=(1.0, 2.0), reason="monitor failed")
    assert store.decode_failure(store.encode_failure(failure)) == failure
    ban = store.BanRecord(reason="not installed", at=1.0, token=7)
    assert store.decode_ban(store.encode_ban(ban)) == ban
    state = store.StateRecord(disabled=True, fatal=False, reason="operator", at=4.0)
    assert store.decode_state(store.encode_state(state)) == state
    block = store.BlockRecord(node="h3", token=9, reason="stop timed out", at=5.0)
    assert store.decode_block(store.encode_block(block)) == block
    relocation = store.RelocationRecord(from_node="h1", to_node=None, at=6.0)
    assert store.decode_relocation(store.encode_relocation(relocation)) == relocation
    moving = store.RelocationRecord(
        from_node="h1", to_node="h2", at=6.0, master=True, waiting="h2 is not up"
    )
    assert store.decode_relocation(store.encode_relocation(moving)) == moving
    # A record written before `master` and `waiting` existed still decodes.
    old = b'{"at":6.0,"from_node":"h1","to_node":null}'
    assert store.decode_relocation(old) == relocation
    entry = store.HistoryEntry(at=1.0, node="h1", index=0, token=9, action="start", result="ok")
    history = store.HistoryRecord().appended(entry)
    assert store.decode_history(store.encode_history(history)) == history


def test_failures_and_history_are_bounded() -> None:
    failure = store.FailureRecord(times=tuple(float(t) for t in range(200)))
    assert len(store.decode_failure(store.encode_failure(failure)).times) == store.FAILURE_LIMIT
    history = store.HistoryRecord()
    for t in range(store.HISTORY_LIMIT + 10):
        history = history.appended(
            store.HistoryEntry(at=float(t), node="h", index=0, token=t, action="start", result="ok")
        )
    assert len(history.entries) == store.HISTORY_LIMIT
    assert history.entries[0].token == 10


@pytest.mark.parametrize(
    ("decode", "raw", "words"),
    [
        (store.decode_owner, b"not json", "not JSON"),
        (store.decode_owner, b"[]", "not a JSON object"),
        (store.decode_owner, b'{"node": 3}', "'node'"),
        (store.decode_owner, b'{"node": "h", "master": "yes"}', "'master'"),
        (store.decode_owner, b'{"node": "h", "monitors": [1]}', "monitor result"),
        (store.decode_master, b'{"node": "h", "index": -1, "token": 1, "at": 1}', "'index'"),
        (store.decode_failure, b'{"times": ["x"]}', "'times'"),
        (store.decode_node, b'{"node": "h", "joined_at": true}', "'joined_at'"),
        (store.decode_history, b'{"entries": {}}', "'entries'"),
    ],
)
def test_bad_records_are_one_sentence(decode: object, raw: bytes, words: str) -> None:
    with pytest.raises(store.ServiceRecordError, match=words):
        decode(raw)  # type: ignore[operator]


def test_listing_and_snapshot() -> None:
    domain = FailoverDomain(name="d", members=(DomainMember(node="h1", priority=1),), ordered=True)
    web = Service(name="web", agent=AgentRef.parse("ocf:heartbeat:Dummy"), domain="d")
    off = Service(name="off", agent=AgentRef.parse("ocf:heartbeat:Dummy"), enabled=False)
    instance = InstanceId(service="web", index=0)
    items = [
        kv(store.def_key("web"), encode_service(web)),
        kv(store.def_key("off"), encode_service(off)),
        kv(store.domain_key("d"), encode_domain(domain)),
        kv(
            store.node_key("h1"),
            store.encode_node(store.NodeRecord(node="h1", joined_at=1.0)),
            lease=3,
        ),
        kv(
            store.owner_key(instance),
            store.encode_owner(store.OwnerRecord(node="h1", started_at=2.0)),
            create=77,
            lease=3,
        ),
        kv(
            store.failure_key("web", "h2"),
            store.encode_failure(store.FailureRecord(times=(5.0, 6.0))),
        ),
        kv(store.ban_key("web", "h3"), store.encode_ban(store.BanRecord(reason="r", at=1.0))),
        kv(store.state_key("off"), store.encode_state(store.StateRecord(disabled=False, at=1.0))),
        kv(
            store.blocked_key(InstanceId(service="web", index=1)),
            store.encode_block(store.BlockRecord(node="h2", token=3, reason="r", at=1.0)),
        ),
        kv(
            store.relocation_key(instance),
            store.encode_relocation(store.RelocationRecord(from_node="h1", to_node="h2", at=1.0)),
        ),
        kv(store.owner_key(InstanceId(service="web", index=2)), b"garbage"),
        kv("services/owners/web/x", b"{}"),
    ]
    listing = store.read_listing(items, revision=99)
    assert listing.owners[instance].token == 77
    assert len(listing.errors) == 2
    assert all(error.startswith("key services/owners/web/") for error in listing.errors)
    assert not listing.disabled(off)  # an operator's enable overrides the definition
    snap = store.snapshot(listing)
    assert snap.nodes == frozenset({"h1"})
    assert [s.name for s in snap.services] == ["off", "web"]
    assert snap.owners[instance].token == 77
    assert [f.at for f in snap.failures] == [5.0, 6.0]
    assert snap.bans == frozenset({("web", "h3")})
    assert snap.blocked == frozenset({InstanceId(service="web", index=1)})
    assert snap.relocations[instance] == Relocation(from_node="h1", to_node="h2")
    assert snap.joined_at == {"h1": 1.0}
    assert snap.disabled == frozenset()


def test_key_helpers() -> None:
    assert store.owner_key(InstanceId(service="s", index=1)) == "services/owners/s/1"
    assert all(k.startswith("services/") for k in store.service_keys("s"))


def test_a_relocation_is_over_once_what_it_moves_runs_elsewhere() -> None:
    zero, one = InstanceId(service="db", index=0), InstanceId(service="db", index=1)

    def owners(**nodes: tuple[str, bool, bool]) -> store.Listing:
        items = [
            kv(
                store.owner_key(InstanceId(service="db", index=int(name[1:]))),
                store.encode_owner(store.OwnerRecord(node=node, master=master, busy=busy)),
                create=10 + int(name[1:]),
            )
            for name, (node, master, busy) in nodes.items()
        ]
        return store.read_listing(items)

    plain = store.RelocationRecord(from_node="h1", to_node="h2", at=1.0)
    assert store.relocated_to(owners(i0=("h1", False, False)), zero, plain) is None
    assert store.relocated_to(owners(i0=("h2", False, True)), zero, plain) == "h2"
    assert store.relocated_to(owners(), zero, plain) is None
    master = store.RelocationRecord(from_node="h1", to_node="h2", at=1.0, master=True)
    # Instance 0 stays on h1 (demoted): over once h2's copy is master, its promote done.
    asked = owners(i0=("h1", True, False), i1=("h2", False, False))
    assert store.relocated_to(asked, zero, master) is None
    demoted = owners(i0=("h1", False, False), i1=("h2", False, False))
    assert store.relocated_to(demoted, zero, master) is None
    promoting = owners(i0=("h1", False, False), i1=("h2", True, True))
    assert store.relocated_to(promoting, zero, master) is None
    promoted = owners(i0=("h1", False, False), i1=("h2", True, False))
    assert store.relocated_to(promoted, zero, master) == "h2"
    assert store.relocated_to(promoted, one, master) == "h2"
