"""What the driver writes to and reads from `tc` and `nft`, and the lab's state records.

The `tc` and `nft` texts below are what iproute2 6.1 and nftables 1.0.6
print; the integration tests check the same code against the real tools.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from servergroup.common.errors import UsageError
from servergroup.common.process import process_start_time
from servergroup.lab.netns import (
    parse_nft_loss,
    parse_tc_shapings,
    render_nft_loss,
    render_tbf,
)
from servergroup.lab.plan import Loss, LossScope, Owner, Shaping
from servergroup.lab.state import (
    LabRecord,
    decode_record,
    encode_record,
    owner_alive,
    owner_of,
    read_record,
    write_record,
)

TC_JSON = json.dumps(
    [
        {"kind": "noqueue", "handle": "0:", "dev": "lo", "root": True, "options": {}},
        {
            "kind": "tbf",
            "handle": "8001:",
            "dev": "sg-h1",
            "root": True,
            "refcnt": 3,
            "options": {"rate": 12500000, "burst": 125000, "lat": 50000},
        },
        {
            "kind": "tbf",
            "handle": "8002:",
            "dev": "sg-h2",
            "parent": "1:1",
            "options": {"rate": 1, "burst": 1, "lat": 1},
        },
    ]
)


def test_parse_tc_finds_root_tbfs_only() -> None:
    assert parse_tc_shapings(TC_JSON) == {
        "sg-h1": Shaping(rate=12_500_000, burst=125_000, latency_us=50_000)
    }
    assert parse_tc_shapings("") == {}


def test_render_tbf() -> None:
    shaping = Shaping(rate=125_000_000, burst=500_000, latency_us=50_000)
    assert " ".join(render_tbf("sg-h1", "eth0", shaping)) == (
        "tc -n sg-h1 qdisc replace dev eth0 root tbf rate 1000000000bit burst 500000 "
        "latency 50000us"
    )
    assert " ".join(render_tbf(None, "sg-h1", None)) == "tc qdisc del dev sg-h1 root"


def _ruleset(*rules: list[dict[str, object]], table: bool = True) -> str:
    items: list[dict[str, object]] = [{"metainfo": {"version": "1.0.6"}}]
    if table:
        items.append({"table": {"family": "ip", "name": "servergroup_lab", "handle": 2}})
    for expr in rules:
        items.append(
            {"rule": {"family": "ip", "table": "servergroup_lab", "chain": "loss", "expr": expr}}
        )
    return json.dumps({"nftables": items})


IIF: dict[str, object] = {
    "match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}
}
UDP: dict[str, object] = {
    "match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}
}


def _numgen(threshold: int, mod: int = 10000) -> dict[str, object]:
    numgen = {"numgen": {"mode": "random", "mod": mod, "offset": 0}}
    return {"match": {"op": "<", "left": numgen, "right": threshold}}


def test_parse_nft_loss() -> None:
    udp = _ruleset([IIF, UDP, _numgen(5000), {"drop": None}])
    assert parse_nft_loss(udp) == (True, Loss(per10000=5000, scope=LossScope.UDP))
    everything = _ruleset([IIF, _numgen(1), {"drop": None}])
    assert parse_nft_loss(everything) == (True, Loss(per10000=1, scope=LossScope.ALL))
    assert parse_nft_loss(_ruleset(table=False)) == (False, None)
    assert parse_nft_loss(_ruleset()) == (True, None)  # an empty table is still ours
    foreign = _ruleset([IIF, _numgen(50, mod=100), {"drop": None}])
    assert parse_nft_loss(foreign) == (True, None)  # not our modulus: replace it
    assert parse_nft_loss('{"nftables": []}') == (False, None)
    # 100 %: a drop with no draw (nft refuses `< 10000` with `mod 10000`).
    assert parse_nft_loss(_ruleset([IIF, UDP, {"drop": None}])) == (
        True,
        Loss(per10000=10000, scope=LossScope.UDP),
    )
    assert parse_nft_loss(_ruleset([IIF, UDP, {"accept": None}])) == (True, None)


def test_render_nft_loss() -> None:
    script = render_nft_loss("eth0", Loss(per10000=150, scope=LossScope.UDP))
    assert script.startswith("table ip servergroup_lab {}\ndelete table ip servergroup_lab\n")
    assert 'iifname "eth0" meta l4proto udp numgen random mod 10000 < 150 drop' in script
    assert "priority -300" in script
    everything = render_nft_loss("eth0", Loss(per10000=150, scope=LossScope.ALL))
    assert "l4proto" not in everything
    whole = render_nft_loss("eth0", Loss(per10000=10000, scope=LossScope.UDP))
    assert 'iifname "eth0" meta l4proto udp drop' in whole
    assert "numgen" not in whole
    assert render_nft_loss("eth0", None) == (
        "table ip servergroup_lab {}\ndelete table ip servergroup_lab\n"
    )


# --- state records -----------------------------------------------------------------


def _record(owner: Owner | None) -> LabRecord:
    return LabRecord(
        name="sg",
        network=IPv4Network("198.18.3.0/24"),
        owner=owner,
        bridge="sg-br",
        namespaces=("sg-h1", "sg-h2"),
        links=("sg-h1", "sg-h2"),
        complete=True,
        updated_at=1.7e9,
    )


@pytest.mark.parametrize("owner", [None, Owner(pid=12, start_time=34)])
def test_record_round_trip(owner: Owner | None, tmp_path: Path) -> None:
    record = _record(owner)
    assert decode_record(encode_record(record)) == record
    path = tmp_path / "lab" / "sg.json"
    write_record(path, record)
    assert read_record(path) == record
    assert [p.name for p in path.parent.iterdir()] == ["sg.json"]  # no temporary left


@pytest.mark.parametrize(
    "text", ["", "[]", "{}", '{"format": 2}', '{"format": 1, "name": "sg"}', "not json"]
)
def test_garbage_records(text: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError, json's included
        decode_record(text)
    path = tmp_path / "sg.json"
    path.write_text(text)
    assert read_record(path) is None
    assert read_record(tmp_path / "missing.json") is None


def test_process_identity() -> None:
    me = owner_of(os.getpid())
    assert me.start_time == process_start_time(os.getpid())
    assert owner_alive(me)
    assert not owner_alive(Owner(pid=me.pid, start_time=me.start_time + 1))  # a reused PID
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_start_time(child.pid) is None
    with pytest.raises(UsageError, match=f"process {child.pid} is not running"):
        owner_of(child.pid)


def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    owner = owner_of(child.pid)
    assert owner_alive(owner)
    assert child.stdin is not None
    child.stdin.close()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
    assert not owner_alive(owner)
    child.wait()
