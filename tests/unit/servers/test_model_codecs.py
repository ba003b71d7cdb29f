"""Record codecs: every record round-trips, and no input raises anything but RecordError."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servergroup.servers.model import (
    BroadcastBatch,
    BroadcastItem,
    Desired,
    DriverKind,
    GroupRecord,
    HostRecord,
    Policy,
    Record,
    RecordError,
    Server,
    ServerSpec,
    ServerStatus,
    VmState,
    decode_batch,
    decode_group,
    decode_host,
    decode_spec,
    decode_status,
    encode_batch,
    encode_record,
)

text = st.text(max_size=20)
ints = st.integers(min_value=0, max_value=2**31)

groups = st.builds(
    GroupRecord, name=text, policy=st.sampled_from(Policy), uuid=text, created_at=text
)
specs = st.builds(
    ServerSpec,
    name=text,
    instance=text,
    uuid=text,
    group=text,
    host=text,
    vcpus=ints,
    min_vcpus=ints,
    memory_mb=ints,
    driver=st.sampled_from(DriverKind),
    desired=st.sampled_from(Desired),
    reboot_count=ints,
    live_migration=st.booleans(),
    created_at=text,
)
statuses = st.builds(
    ServerStatus,
    name=text,
    host=text,
    state=st.sampled_from(VmState),
    task_state=st.none() | text,
    online_cpus=st.lists(ints, max_size=8).map(tuple),
    reboot_count=ints,
    launched_at=st.none() | text,
    updated_at=text,
    error=st.none() | text,
)
hosts = st.builds(
    HostRecord,
    name=text,
    channel_dir=text,
    pid=ints,
    started_at=text,
    address=st.none() | text,
    drivers=st.lists(st.sampled_from(DriverKind), max_size=3).map(tuple),
)

CODECS: list[tuple[Any, Any]] = [
    (groups, decode_group),
    (specs, decode_spec),
    (statuses, decode_status),
    (hosts, decode_host),
]
DECODERS = [decode for _, decode in CODECS]


@pytest.mark.parametrize(("records", "decode"), CODECS, ids=lambda x: getattr(x, "__name__", ""))
def test_round_trip(records: Any, decode: Any) -> None:
    @given(records)
    def check(record: Record) -> None:
        raw = encode_record(record)
        assert decode(raw) == record
        assert encode_record(decode(raw)) == raw  # canonical: sorted keys, compact

    check()


@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: d.__name__)
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_record_error(decode: Any, raw: bytes) -> None:
    with contextlib.suppress(RecordError):
        decode(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)


@pytest.mark.parametrize(("records", "decode"), CODECS, ids=lambda x: getattr(x, "__name__", ""))
def test_records_with_a_bad_field_raise_only_record_error(records: Any, decode: Any) -> None:
    @given(records, st.data())
    def check(record: Record, data: st.DataObject) -> None:
        obj = json.loads(encode_record(record))
        key = data.draw(st.sampled_from(sorted(obj)))
        obj[key] = data.draw(json_values)
        try:
            decoded = decode(json.dumps(obj).encode())
        except RecordError:
            return
        # Accepted: then it is a well-typed record that encodes again.
        assert isinstance(decoded, type(record))
        encode_record(decoded)

    check()


def test_missing_field_and_unknown_enum_are_record_errors() -> None:
    with pytest.raises(RecordError, match="group record is not valid"):
        decode_group(b'{"name":"g","uuid":"u","created_at":""}')
    with pytest.raises(RecordError, match="not valid"):
        decode_group(b'{"name":"g","policy":"spread","uuid":"u","created_at":""}')
    with pytest.raises(RecordError, match="not a JSON object"):
        decode_spec(b"[1]")


def test_unknown_keys_are_ignored() -> None:
    record = GroupRecord(name="g", policy=Policy.AFFINITY, uuid="u", created_at="t")
    obj = json.loads(encode_record(record)) | {"added_later": 1}
    assert decode_group(json.dumps(obj).encode()) == record


def test_settled() -> None:
    spec = ServerSpec(name="a", instance="instance-00000001", uuid="u", group="g", host="h0")
    status = ServerStatus(name="a", host="h0", state=VmState.ACTIVE)
    assert not Server(spec=spec).settled()
    assert Server(spec=spec, status=status).settled()
    from dataclasses import replace

    assert not Server(spec=replace(spec, host="h1"), status=status).settled()
    assert not Server(spec=replace(spec, reboot_count=1), status=status).settled()
    assert not Server(spec=replace(spec, desired=Desired.PAUSED), status=status).settled()


def test_driver_kinds_are_their_names_on_the_wire() -> None:
    # Records written before DriverKind existed carry the names "lab" and "qemu".
    raw = (
        b'{"name":"v","instance":"instance-0000abcd","uuid":"u","group":"g","host":"h0",'
        b'"driver":"qemu"}'
    )
    spec = decode_spec(raw)
    assert spec.driver is DriverKind.QEMU
    assert json.loads(encode_record(spec))["driver"] == "qemu"
    assert decode_spec(raw.replace(b',"driver":"qemu"', b"")).driver is DriverKind.LAB
    with pytest.raises(RecordError, match="not valid"):
        decode_spec(raw.replace(b'"qemu"', b'"xen"'))


def test_a_host_of_a_newer_version_keeps_the_drivers_we_know() -> None:
    raw = b'{"name":"h","channel_dir":"/c","pid":1,"started_at":"t","drivers":["xen","qemu"]}'
    assert decode_host(raw).drivers == (DriverKind.QEMU,)
    with pytest.raises(RecordError, match="list of driver names"):
        decode_host(raw.replace(b'["xen","qemu"]', b'"qemu"'))


# -- broadcast batches (their own compact codec) ------------------------------------------

batches = st.builds(
    BroadcastBatch,
    group=text,
    host=text,
    host_total=st.integers(min_value=20, max_value=2**62),  # at least the most items drawn
    sent_at=text,
    items=st.lists(
        st.builds(BroadcastItem, sender=text, sender_instance=text, text=st.text(max_size=200)),
        min_size=1,
        max_size=20,
    ).map(tuple),
)


@given(batches)
def test_batch_round_trip(batch: BroadcastBatch) -> None:
    raw = encode_batch(batch)
    assert decode_batch(raw) == batch
    assert encode_batch(decode_batch(raw)) == raw


@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_record_error_for_a_batch(raw: bytes) -> None:
    with contextlib.suppress(RecordError):
        decode_batch(raw)


@given(batches, st.data())
def test_a_batch_with_a_bad_field_raises_only_record_error(
    batch: BroadcastBatch, data: st.DataObject
) -> None:
    obj = json.loads(encode_batch(batch))
    key = data.draw(st.sampled_from(sorted(obj)))
    obj[key] = data.draw(json_values)
    try:
        decoded = decode_batch(json.dumps(obj).encode())
    except RecordError:
        return
    assert isinstance(decoded, BroadcastBatch)
    encode_batch(decoded)


def test_batch_refusals_say_why() -> None:
    with pytest.raises(RecordError, match="no items"):
        decode_batch(b'{"group":"g","host":"h","host_total":1,"sent_at":"","items":[]}')
    with pytest.raises(RecordError, match="host_total of at least its items"):
        decode_batch(
            b'{"group":"g","host":"h","host_total":1,"sent_at":"","items":[["a","b","c"],'
            b'["a","b","c"]]}'
        )
    with pytest.raises(RecordError, match="no group, host or sent_at"):
        decode_batch(b'{"group":"g","first_seq":1,"sent_at":"","items":[["a","b","c"]]}')
    with pytest.raises(RecordError, match="not \\[sender, instance, text\\]"):
        decode_batch(b'{"group":"g","host":"h","host_total":1,"sent_at":"","items":[["a","b"]]}')
