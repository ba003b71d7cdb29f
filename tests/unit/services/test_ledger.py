"""The node's ledger: round trip, atomic replacement, bad files named in one sentence."""

from __future__ import annotations

from pathlib import Path

import pytest

from servergroup.services.ledger import (
    Ledger,
    LedgerEntry,
    LedgerError,
    clear_ledger,
    decode_ledger,
    encode_ledger,
    ledger_path,
    read_ledger,
    write_ledger,
)
from servergroup.services.model import AgentRef, Service
from servergroup.services.placement import InstanceId

WEB = Service(name="web", agent=AgentRef.parse("ocf:heartbeat:Dummy"), parameters={"fake": "x"})


def entry(index: int, token: int, *, master: bool = False) -> LedgerEntry:
    return LedgerEntry(
        instance=InstanceId(service="web", index=index), token=token, service=WEB, master=master
    )


def test_round_trip_and_entries(tmp_path: Path) -> None:
    ledger = Ledger(node="h1", lease=77, pid=123, ocf_root="/usr/lib/ocf")
    ledger = ledger.with_entry(entry(1, 10)).with_entry(entry(0, 9, master=True))
    ledger = ledger.with_entry(entry(1, 11))  # replaces the first
    assert [(e.instance.index, e.token) for e in ledger.entries] == [(0, 9), (1, 11)]
    assert decode_ledger(encode_ledger(ledger)) == ledger
    path = ledger_path(tmp_path, "h1")
    assert read_ledger(path) is None
    write_ledger(path, ledger)
    assert read_ledger(path) == ledger
    write_ledger(path, ledger.without(InstanceId(service="web", index=0)))
    again = read_ledger(path)
    assert again is not None
    assert [e.token for e in again.entries] == [11]
    assert [p.name for p in path.parent.iterdir()] == ["h1.ledger"]  # no temporary left
    clear_ledger(path)
    clear_ledger(path)
    assert read_ledger(path) is None


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"{", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"node": "h", "lease": 1, "pid": 1, "ocf_root": "/"}', "'entries'"),
        (b'{"node": "h", "lease": true, "pid": 1, "ocf_root": "/", "entries": []}', "'lease'"),
        (b'{"node": "h", "lease": 1, "pid": 1, "ocf_root": "/", "entries": [3]}', "not an object"),
        (
            b'{"node": "h", "lease": 1, "pid": 1, "ocf_root": "/", "entries": '
            b'[{"service": "s", "index": 0, "token": 1, "master": false, "definition": {}}]}',
            "bad definition",
        ),
    ],
)
def test_bad_ledgers(raw: bytes, words: str, tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match=words):
        decode_ledger(raw)
    path = tmp_path / "x.ledger"
    path.write_bytes(raw)
    with pytest.raises(LedgerError):
        read_ledger(path)
