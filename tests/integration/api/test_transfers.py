"""Image transfers recorded in etcd: real `image send|receive` on lab hosts, a real etcd.

The sender (h1) and receivers (h2, h3) reach an etcd that serves the lab
bridge's root address, as lab host daemons do. The records they write are
read back as the API and the dashboard's feed read them. With etcd frozen
(SIGSTOP: it neither answers nor refuses) in the middle of a transfer, the
transfer still completes, whole, and the sender says so once in its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from servergroup.api.app import ApiContext, build_app
from servergroup.api.auth import Access
from servergroup.api.events import read_snapshot
from servergroup.config import CoordinationConfig
from servergroup.coordination import EtcdCoordinator
from servergroup.coordination.etcd_process import EtcdCluster, EtcdProcess, cluster_specs
from servergroup.lab import Lab
from servergroup.transfers import read_transfers
from servergroup.transfers import record as rec
from tests.fixtures.daemons import show_log_on_failure
from tests.fixtures.lab import LabFactory
from tests.fixtures.services import until
from tests.integration.multicast.conftest import Transfer

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

SMALL_BUFFER = ["--buffer-packets", "256"]  # a progress callback every ~350 KiB


@dataclasses.dataclass
class Recorded:
    transfer: Transfer
    etcd: EtcdCluster
    prefix: str
    coordinator: EtcdCoordinator


@pytest.fixture
async def recorded(
    lab: LabFactory,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Recorded]:
    """A 3-host lab, an etcd its hosts reach, and `image` processes pointed at it."""
    the_lab: Lab = lab(3)
    status = the_lab.status()
    assert status is not None
    root = str(status.root_address)
    (spec,) = cluster_specs(tmp_path / "etcd", 1, name_prefix="xfer")
    member = EtcdProcess(
        dataclasses.replace(spec, extra_client_hosts=(root,)), log_path=tmp_path / "etcd.log"
    )
    show_log_on_failure(request.node, "etcd", tmp_path / "etcd.log")
    etcd = EtcdCluster([member])
    await asyncio.to_thread(etcd.start, 20.0)
    prefix = f"/sgtest/xfer-{secrets.token_hex(4)}/"
    # The image processes read these like any command (the transfer fixture copies os.environ).
    monkeypatch.setenv("SERVERGROUP_ETCD_ENDPOINTS", f"http://{root}:{spec.client_port}")
    monkeypatch.setenv("SERVERGROUP_PREFIX", prefix)
    monkeypatch.setenv("SERVERGROUP_ETCD_INSECURE", "1")  # plain http on the lab bridge
    t = Transfer(the_lab, tmp_path, request)
    c = EtcdCoordinator(etcd.endpoints, prefix=prefix, config=CoordinationConfig(prefix=prefix))
    try:
        yield Recorded(transfer=t, etcd=etcd, prefix=prefix, coordinator=c)
    finally:
        t.kill_all()
        if member.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member.pid, signal.SIGCONT)
        await c.close()
        etcd.kill()
        shutil.rmtree(spec.data_dir, ignore_errors=True)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """3 MiB and 1234 bytes: several buffers of 256 packets."""
    path = tmp_path / "image.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 1234))
    return path


async def transfers(c: EtcdCoordinator) -> list[rec.Transfer]:
    return await read_transfers(c)


async def test_a_transfer_is_recorded_and_served(recorded: Recorded, image: Path) -> None:
    t, c = recorded.transfer, recorded.coordinator
    size = len(image_bytes := image.read_bytes())  # noqa: ASYNC240  (a small file, once)
    metrics = t.tmp_path / "send.prom"
    sender = t.sender(2, image, *SMALL_BUFFER, "--metrics-file", str(metrics))
    ep = rec.endpoint(t.server, 18383)

    # The sender waits for its clients: its record says so before any byte goes out.
    async def waiting() -> bool:
        found = await transfers(c)
        return bool(found) and found[0].sender is not None and found[0].sender.done_bytes == 0

    await until(waiting, "the sender's record, running", 30)
    (first,) = await transfers(c)
    assert first.endpoint == ep
    assert first.sender is not None
    assert first.sender.state is rec.TransferState.RUNNING
    assert first.sender.size == size
    assert first.sender.expected_clients == 2
    kv = await c.get(rec.sender_key(ep))
    assert kv is not None
    assert kv.lease != 0

    procs = t.receivers()
    assert sender.wait(60) == 0, sender.stderr()
    for name, proc in procs.items():
        assert proc.wait(20) == 0, proc.stderr()
        assert t.output(name) == image_bytes

    (done,) = await transfers(c)
    s = done.sender
    assert s is not None
    assert s.transfer_id == first.sender.transfer_id
    assert s.state is rec.TransferState.FINISHED
    assert s.ended_at is not None
    assert s.size == s.done_bytes == size
    assert sorted(row.status for row in s.clients) == ["finished", "finished"]
    assert sorted(r.address for r in done.receivers) == sorted(t.address(h) for h in ("h2", "h3"))
    for r in done.receivers:
        assert r.state is rec.TransferState.FINISHED
        assert r.received_bytes == r.size == size

    # The API serves them (the same read), in its OpenAPI document too.
    app = build_app(ApiContext(coordinator=c, host="test", access=Access(), health=lambda: {}))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as http:
        listing = (await http.get("/transfers")).json()
        assert [x["endpoint"] for x in listing] == [ep]
        assert listing[0]["state"] == "finished"
        assert listing[0]["progress"] == 1.0
        assert len(listing[0]["receivers"]) == 2
        assert not listing[0]["stale"]
        one = await http.get(f"/transfers/{ep}")
        assert one.status_code == 200
        assert one.json()["sender"]["size"] == size
        assert (await http.get("/transfers/10.9.9.9:1")).status_code == 404
        assert (await http.get("/transfers/nonsense")).status_code == 422
        paths = (await http.get("/openapi.json")).json()["paths"]
        assert "/transfers" in paths
        assert "/transfers/{endpoint}" in paths
    snapshot = await read_snapshot(c, "test")
    assert snapshot["transfers"][0]["endpoint"] == ep

    # The sender's metrics, for node_exporter's textfile collector.
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics.read_text())
        for sample in family.samples
    }
    assert samples["servergroup_transfer_bytes_total"] == size

    # A second transfer from the same endpoint replaces the record; the first one's
    # receivers go (h3's: not a client of this one). Its receiver starts first and may
    # finish before the sender's first record: it is kept.
    receiver = t.receiver("h2")
    again = t.sender(1, image, *SMALL_BUFFER)
    assert again.wait(60) == 0, again.stderr()
    assert receiver.wait(20) == 0, receiver.stderr()
    (x,) = await transfers(c)
    assert x.sender is not None
    assert x.sender.transfer_id != s.transfer_id
    assert x.sender.state is rec.TransferState.FINISHED
    assert [r.address for r in x.receivers] == [t.address("h2")]
    assert x.receivers[0].state is rec.TransferState.FINISHED
    assert x.receivers[0].started_at > s.ended_at


async def test_etcd_frozen_during_a_transfer_neither_fails_nor_stops_it(
    recorded: Recorded, image: Path
) -> None:
    t, c = recorded.transfer, recorded.coordinator
    (member,) = recorded.etcd.members
    # ~3 s at 8 Mbit/s: long enough to freeze etcd in the middle.
    sender = t.sender(2, image, *SMALL_BUFFER, "--rate", "8m")
    procs = t.receivers()

    async def moving() -> bool:
        found = await transfers(c)
        return bool(found) and found[0].sender is not None and found[0].sender.done_bytes > 0

    await until(moving, "the transfer under way", 30)
    assert member.pid is not None
    os.kill(member.pid, signal.SIGSTOP)
    try:
        assert sender.wait(60) == 0, sender.stderr()
        for proc in procs.values():
            assert proc.wait(20) == 0, proc.stderr()
    finally:
        os.kill(member.pid, signal.SIGCONT)
    for host in ("h2", "h3"):
        assert t.output(host) == image.read_bytes()  # noqa: ASYNC240
    log = sender.stderr()
    assert log.count("not written") == 1, log  # said once, however many writes failed
    assert "Traceback" not in log

    # etcd back: the last record it got is there, still running (its writer is gone);
    # nothing was written after the freeze.
    (x,) = await transfers(c)
    assert x.sender is not None
    assert x.sender.state is rec.TransferState.RUNNING
