"""A node role in this process on the real etcd, with the product's services lease (1 s,
renewed every 0.1 s) and the real journal agent: fencing a copy whose stop failed, and a
definition refused.

Fencing (`services.fencing`): the default (real processes: it must kill this
copy's leftovers and nothing of another node's copy of the same instance), a
command device (a real program), and the node role handing a failed stop
(the journal agent's switch file) to its fencer before it marks the
instance failed-stop. Refusal: a definition whose stop does not fit the
lease is refused by the node role, shown so by `service status`, left so by
`service clear`, and lifted by a definition that fits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from servergroup.common.process import group_members
from servergroup.config import Config
from servergroup.coordination import Coordinator, Session, connect
from servergroup.coordination.etcd_process import EtcdCluster
from servergroup.coordination.types import KeyValue
from servergroup.services import store
from servergroup.services.fencing import (
    CommandFencer,
    FenceChain,
    Fencer,
    FenceRequest,
    KillLeftovers,
)
from servergroup.services.journal import Record, decode_record
from servergroup.services.model import Monitor, Service, encode_service
from servergroup.services.node import NodeRole
from servergroup.services.placement import InstanceId
from tests.fixtures.services import JOURNAL_AGENT, make_ocf_root, until

pytestmark = pytest.mark.timeout(60)

COPY = InstanceId(service="svc", index=0)
TIMINGS = Config().services_coordination  # the product's: 1 s lease, renewed every 0.1 s
REQUEST = FenceRequest(node="n1", instance=COPY, token=7, reason="stop returned 1")


def spawn(instance: str, token: int, script: str = "sleep 60") -> subprocess.Popen[bytes]:
    """A process group as an agent's action leaves it: the instance and token in its env."""
    env = {
        "PATH": os.environ["PATH"],
        "OCF_RESOURCE_INSTANCE": instance,
        "OCF_RESKEY_fencing_token": str(token),
    }
    return subprocess.Popen(["sh", "-c", script], env=env, start_new_session=True)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def test_the_default_kills_this_copys_leftovers_and_claims_nothing(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    # This copy: a leader with a child in its group (what a `start` may leave running).
    mine = spawn("svc:0", 7, "sleep 60 & sleep 60; wait")
    # Another node's copy of the same instance (lab hosts share one PID namespace) has
    # another token; another instance of this node has the same token's digits.
    theirs, other = spawn("svc:0", 8), spawn("svc:1", 7)
    procs += [mine, theirs, other]
    await until(lambda: len(psutil.Process(mine.pid).children()) == 2, "the child", 5.0)
    assert not await KillLeftovers().fence(REQUEST)
    assert mine.wait(timeout=5.0) == -signal.SIGKILL
    await until(lambda: not group_members(mine.pid), "the whole group killed", 5.0)
    assert theirs.poll() is None
    assert other.poll() is None
    # Nothing left: fencing again finds nothing, and still claims nothing.
    assert not await KillLeftovers().fence(REQUEST)


async def test_a_command_device_gets_the_request_and_its_exit_status_decides(
    tmp_path: Path,
) -> None:
    seen = tmp_path / "seen"
    device = tmp_path / "fence-device"
    device.write_text(f'#!/bin/sh\nenv | grep ^SERVERGROUP_FENCE_ | sort > {seen}\nexit "$1"\n')
    device.chmod(0o755)
    assert await CommandFencer([str(device), "0"]).fence(REQUEST)
    assert seen.read_text().splitlines() == [
        "SERVERGROUP_FENCE_INDEX=0",
        "SERVERGROUP_FENCE_INSTANCE=svc:0",
        "SERVERGROUP_FENCE_NODE=n1",
        "SERVERGROUP_FENCE_REASON=stop returned 1",
        "SERVERGROUP_FENCE_SERVICE=svc",
        "SERVERGROUP_FENCE_TOKEN=7",
    ]
    assert not await CommandFencer([str(device), "1"]).fence(REQUEST)
    assert not await CommandFencer([str(tmp_path / "none")]).fence(REQUEST)
    assert not await CommandFencer(["sleep", "30"], timeout=0.3).fence(REQUEST)
    # The default first, then the device: fenced when the device says so.
    assert await FenceChain(KillLeftovers(), CommandFencer([str(device), "0"])).fence(REQUEST)
    assert not await FenceChain(KillLeftovers(), CommandFencer([str(device), "2"])).fence(REQUEST)


# -- the node role ------------------------------------------------------------------------


class Recording:
    """A fencer that records each request and answers through `inner`."""

    def __init__(self, inner: Fencer) -> None:
        self.inner = inner
        self.name = inner.name
        self.requests: list[FenceRequest] = []

    async def fence(self, request: FenceRequest) -> bool:
        self.requests.append(request)
        return await self.inner.fence(request)


@pytest.fixture
async def admin(etcd_server: EtcdCluster, etcd_prefix: str) -> AsyncIterator[Coordinator]:
    c = connect(Config().coordination, endpoints=etcd_server.endpoints, prefix=etcd_prefix)
    yield c
    await c.delete_prefix("")
    await c.close()


@contextlib.asynccontextmanager
async def node_role(
    etcd_server: EtcdCluster, etcd_prefix: str, base: Path, fencer: Fencer
) -> AsyncIterator[tuple[NodeRole, Session]]:
    c = connect(TIMINGS, endpoints=etcd_server.endpoints, prefix=etcd_prefix)
    session = Session(c, TIMINGS, name="services n1")
    role = NodeRole(
        coordinator=c,
        session=session,
        own_session=True,
        node="n1",
        node_ip="127.0.0.1",
        ocf_root=make_ocf_root(base / "ocf"),
        state_dir=base,
        coordination=TIMINGS,
        fencer=fencer,
    )
    await role.start()
    try:
        yield role, session
    finally:
        await role.stop()
        await c.close()


def journal_service(base: Path) -> Service:
    return Service(
        name="svc",
        agent=JOURNAL_AGENT,
        parameters={"node": "n1", "state_dir": str(base), "journal": str(base / "journal")},
        monitors=(Monitor(depth=0, interval=1.0, timeout=0.5),),
        start_timeout=2.0,
        stop_timeout=0.3,
    )


async def failed_stop(admin: Coordinator, base: Path) -> int:
    """Start the copy, make its stop fail, remove the service: its owner must stop it."""
    await admin.put(store.def_key("svc"), encode_service(journal_service(base)))
    owner = await until(lambda: admin.get(store.owner_key(COPY)), "svc:0 owned", 20.0)
    assert isinstance(owner, KeyValue)
    state = base / "sgtest-journal-n1-svc:0.state"
    await until(lambda: state.exists(), "svc:0 started", 10.0)
    (base / "sgtest-journal-n1-svc:0.state.fail-stop").write_text("1")
    await admin.delete(store.def_key("svc"))
    return int(owner.create_revision)


async def test_a_failed_stop_goes_to_the_fencer_then_is_marked_failed_stop(
    admin: Coordinator, etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> None:
    fencer = Recording(KillLeftovers())
    async with node_role(etcd_server, etcd_prefix, tmp_path, fencer):
        token = await failed_stop(admin, tmp_path)
        block = await until(lambda: admin.get(store.blocked_key(COPY)), "svc:0 blocked", 20.0)
        assert isinstance(block, KeyValue)
        record = store.decode_block(block.value)
        assert (record.node, record.token) == ("n1", token)
        assert "stop returned 1" in record.reason
        assert await admin.get(store.owner_key(COPY)) is None
        assert fencer.requests == [
            FenceRequest(node="n1", instance=COPY, token=token, reason=record.reason)
        ]


async def test_a_copy_a_device_fenced_counts_as_stopped(
    admin: Coordinator, etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> None:
    device = tmp_path / "fence-device"
    device.write_text(f'#!/bin/sh\necho "$SERVERGROUP_FENCE_TOKEN" > {tmp_path / "fenced"}\n')
    device.chmod(0o755)
    fencer = Recording(FenceChain(KillLeftovers(), CommandFencer([str(device)])))
    async with node_role(etcd_server, etcd_prefix, tmp_path, fencer):
        token = await failed_stop(admin, tmp_path)

        async def gone() -> bool:
            return await admin.get(store.owner_key(COPY)) is None

        await until(gone, "svc:0's key deleted", 20.0)
        assert (tmp_path / "fenced").read_text().strip() == str(token)
        assert await admin.get(store.blocked_key(COPY)) is None

        async def stop_recorded() -> store.HistoryEntry | None:
            kv = await admin.get(store.history_key("svc"))  # written after the key went
            entries = store.decode_history(kv.value).entries if kv is not None else ()
            return entries[-1] if entries and entries[-1].action == "stop" else None

        last = await until(stop_recorded, "the stop in the history", 10.0)
        assert isinstance(last, store.HistoryEntry)
        assert (last.action, last.token) == ("stop", token)
        assert last.result.startswith("failed (stop returned 1")
        assert "fenced by" in last.result
        assert [r.token for r in fencer.requests] == [token]


# -- a refused definition -----------------------------------------------------------------


async def cli(etcd_server: EtcdCluster, etcd_prefix: str, *args: str) -> str:
    """`servergroup service ...` as a process against the test's etcd and prefix."""
    endpoints = ",".join(str(e) for e in etcd_server.endpoints)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "servergroup", "--endpoints", endpoints, "--prefix", etcd_prefix, "service"),
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "SERVERGROUP_CONFIG": ""},
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_a_definition_whose_stop_does_not_fit_is_refused_until_one_fits(
    admin: Coordinator, etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> None:
    # 0.5 s + the kill grace is more than the 0.55 s a 1 s lease renewed every 0.1 s leaves
    # (a node whose lease is shorter than the operator's sees it so: nothing checked it).
    slow = replace(journal_service(tmp_path), stop_timeout=0.5)
    async with node_role(etcd_server, etcd_prefix, tmp_path, KillLeftovers()) as (role, _):
        await admin.put(store.def_key("svc"), encode_service(slow))

        async def refused() -> store.StateRecord | None:
            kv = await admin.get(store.state_key("svc"))
            state = store.decode_state(kv.value) if kv is not None else None
            return state if state is not None and state.refused else None

        state = await until(refused, "svc refused", 20.0)
        assert isinstance(state, store.StateRecord)
        assert "stop_timeout 0.5 s" in state.reason
        assert "lower stop_timeout or raise lease_ttl" in state.reason
        assert await admin.get(store.owner_key(COPY)) is None
        assert "svc refused" in role.health().sentence

        status = await cli(etcd_server, etcd_prefix, "status", "svc")
        first = status.splitlines()[0]
        assert first.startswith("service svc: refused: service 'svc': stop_timeout 0.5 s")
        assert "refused: refused" not in first
        cleared = await cli(etcd_server, etcd_prefix, "clear", "svc")
        assert "svc: still refused" in cleared
        assert await refused() is not None

        await admin.put(store.def_key("svc"), encode_service(journal_service(tmp_path)))
        await until(lambda: admin.get(store.owner_key(COPY)), "svc started once it fits", 20.0)
        assert await refused() is None
        status = await cli(etcd_server, etcd_prefix, "status", "svc")
        assert status.splitlines()[0] in ("service svc: running", "service svc: stopped")


# -- self-fencing -------------------------------------------------------------------------


async def test_a_node_that_cannot_renew_has_stopped_before_its_lease_can_expire(
    etcd_single: EtcdCluster, tmp_path: Path
) -> None:
    """The invariant of self-fencing, with the product's 1 s lease: the store is frozen
    (SIGSTOP: no renewal answered), and the copy's stop has ended before `valid_until`,
    the earliest moment the store could expire the lease (the send time of the last
    renewal it answered, plus the TTL)."""
    prefix = "/sgtest/fence/"
    admin = connect(TIMINGS, endpoints=etcd_single.endpoints, prefix=prefix)
    member = etcd_single.members[0]
    try:
        async with node_role(etcd_single, prefix, tmp_path, KillLeftovers()) as (_, session):
            await admin.put(store.def_key("svc"), encode_service(journal_service(tmp_path)))
            state = tmp_path / "sgtest-journal-n1-svc:0.state"
            await until(lambda: state.exists(), "svc:0 started", 20.0)
            member.freeze()
            await until(lambda: not state.exists(), "svc:0 stopped by its node", 10.0)
            # Nothing answered a renewal since the freeze: fence_at is final.
            valid_until = session.fence_at + TIMINGS.fence_margin
            offset = time.time() - time.monotonic()
            stops = [
                r
                for r in read_journal(tmp_path / "journal")
                if r.action == "stop" and r.phase.value == "end" and r.code == 0
            ]
            assert len(stops) == 1
            assert stops[0].at - offset < valid_until
    finally:
        member.thaw()
        await admin.close()


def read_journal(path: Path) -> list[Record]:
    return [decode_record(line) for line in path.read_text().splitlines() if line.strip()]
