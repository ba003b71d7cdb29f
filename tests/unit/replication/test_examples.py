"""The example services, and a service's state travelling in its regions only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servergroup.common.errors import UsageError
from servergroup.replication.checkpoint import Capturer, apply
from servergroup.replication.examples.counter import CounterService
from servergroup.replication.examples.kv import KvService
from servergroup.replication.regions import RegionSet
from servergroup.replication.service import ServiceSpace, load_service
from servergroup.replication.uffd import KernelTracker

pytestmark = pytest.mark.timeout(60)


class TinyKv(KvService):
    capacity = 8  # collisions, tombstones and a full table are all reachable


def ask(service: KvService | CounterService, **request: Any) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(service.handle(json.dumps(request).encode()))
    return answer


@pytest.fixture
def space() -> Iterator[ServiceSpace]:
    regions = RegionSet()
    yield ServiceSpace(regions)
    regions.close()


def test_kv_answers_get_put_delete_scan(space: ServiceSpace) -> None:
    kv = KvService(space)
    assert ask(kv, op="get", key="a") == {"ok": True, "found": False}
    assert ask(kv, op="put", key="a", value="1") == {"ok": True}
    assert ask(kv, op="put", key="b", value="ü" * 200) == {"ok": True}
    assert ask(kv, op="put", key="a", value="2") == {"ok": True}
    assert ask(kv, op="get", key="a") == {"ok": True, "found": True, "value": "2"}
    assert ask(kv, op="get", key="b")["value"] == "ü" * 200
    assert ask(kv, op="scan") == {"ok": True, "keys": ["a", "b"]}
    assert ask(kv, op="delete", key="a") == {"ok": True, "deleted": True}
    assert ask(kv, op="delete", key="a") == {"ok": True, "deleted": False}
    assert ask(kv, op="scan") == {"ok": True, "keys": ["b"]}
    assert kv.count == 1
    assert space.regions.layout == (("kv.slots", 32768 * 512), ("kv.meta", 4096))


def test_kv_refuses_bad_requests_in_one_reply(space: ServiceSpace) -> None:
    kv = TinyKv(space)
    assert kv.handle(b"not json") == b'{"ok":false,"error":"the request is not JSON"}'
    unknown = "unknown op 'frobnicate'; use get, put, delete or scan"
    assert ask(kv, op="frobnicate", key="a") == {"ok": False, "error": unknown}
    assert ask(kv, op="frobnicate") == {"ok": False, "error": unknown}
    assert "over 64 bytes" in ask(kv, op="put", key="k" * 65, value="v")["error"]
    assert "over 440 bytes" in ask(kv, op="put", key="k", value="v" * 441)["error"]
    assert '"key" must be a string' in ask(kv, op="get", key=5)["error"]
    for n in range(8):
        assert ask(kv, op="put", key=f"k{n}", value="v")["ok"]
    assert ask(kv, op="put", key="one more", value="v") == {
        "ok": False,
        "error": "the store is full",
    }
    assert ask(kv, op="put", key="k3", value="changed")["ok"]  # an update still fits


ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "get", "delete", "scan"]),
        st.sampled_from([f"k{n}" for n in range(12)]),
        st.text(max_size=5),
    ),
    max_size=60,
)


@settings(max_examples=60)
@given(ops)
def test_kv_behaves_like_a_dict_through_collisions_and_tombstones(
    steps: list[tuple[str, str, str]],
) -> None:
    regions = RegionSet()
    try:
        run_against_a_dict(TinyKv(ServiceSpace(regions)), steps)
    finally:
        regions.close()  # the service is gone with the call above: nothing maps the regions


def run_against_a_dict(kv: KvService, steps: list[tuple[str, str, str]]) -> None:
    model: dict[str, str] = {}
    for op, key, value in steps:
        if op == "put":
            answer = ask(kv, op=op, key=key, value=value)
            if key in model or len(model) < 8:
                assert answer == {"ok": True}
                model[key] = value
            else:
                assert answer["error"] == "the store is full"
        elif op == "get":
            expected: dict[str, str | bool] = {"ok": True, "found": key in model}
            if key in model:
                expected["value"] = model[key]
            assert ask(kv, op=op, key=key) == expected
        elif op == "delete":
            assert ask(kv, op=op, key=key) == {"ok": True, "deleted": key in model}
            model.pop(key, None)
        else:
            assert ask(kv, op=op) == {"ok": True, "keys": sorted(model)}
        assert kv.count == len(model)


def test_the_counter_counts(space: ServiceSpace) -> None:
    counter = CounterService(space)
    assert ask(counter, op="get") == {"ok": True, "value": 0}
    assert [ask(counter, op="incr")["value"] for _ in range(3)] == [1, 2, 3]
    assert not ask(counter, op="decr")["ok"]


def test_a_backup_built_from_checkpoints_answers_as_the_primary() -> None:
    primary_regions, backup_regions = RegionSet(), RegionSet()
    tracker = KernelTracker()
    try:
        replicate_five_epochs(primary_regions, backup_regions, tracker)
    finally:
        tracker.close()
        primary_regions.close()
        backup_regions.close()


def replicate_five_epochs(
    primary_regions: RegionSet, backup_regions: RegionSet, tracker: KernelTracker
) -> None:
    primary = KvService(ServiceSpace(primary_regions))
    backup = KvService(ServiceSpace(backup_regions))
    assert primary_regions.layout == backup_regions.layout
    for region in primary_regions:
        tracker.track(region)
    capturer = Capturer(primary_regions, tracker)
    apply(backup_regions, capturer.capture(full=True).messages())
    for epoch in range(5):
        for n in range(50):
            ask(primary, op="put", key=f"e{epoch}-{n}", value=str(n * epoch))
        ask(primary, op="delete", key=f"e{epoch}-7")
        captured = capturer.capture(full=False)
        assert 0 < captured.pages < 100  # only what the epoch touched travels
        apply(backup_regions, captured.messages())
        assert ask(backup, op="scan") == ask(primary, op="scan")
        assert backup.count == primary.count
    assert ask(backup, op="get", key="e4-9") == {"ok": True, "found": True, "value": "36"}


def test_services_load_by_short_or_full_name(tmp_path: Path) -> None:
    name, factory = load_service("kv")
    assert name == "servergroup.replication.examples.kv:KvService"
    assert factory is KvService
    assert load_service("servergroup.replication.examples.counter:CounterService")[1] is (
        CounterService
    )
    for spec, reason in [
        ("nothing", "not MODULE:CLASS"),
        ("no.such.module:X", "cannot import"),
        ("json:dumps", "not a class with a handle"),
        ("servergroup.replication.examples.kv:Missing", "not a class with a handle"),
    ]:
        with pytest.raises(UsageError, match=reason):
            load_service(spec)
    space = ServiceSpace(RegionSet(), tmp_path / "disk.img")
    try:
        disk = space.disk(4096)
        assert space.disk_size == 4096
        with pytest.raises(UsageError, match="at most one"):
            space.disk(4096)
        disk.close()
    finally:
        space.regions.close()
    with pytest.raises(UsageError, match="without a place"):
        ServiceSpace(RegionSet()).disk(10)
