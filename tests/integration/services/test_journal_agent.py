"""The journaling test agent (`ocf:sgtest:journal` in tests/fixtures/ocf) and the checker.

The fault tests of the node role and `bench/failover.py` will run this agent
on every node; here two "nodes" (two bindings of it with their own state
files) hand an instance over by hand, once cleanly and once with an
overlap, and `services.journal.check` tells the two apart.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servergroup.services.journal import check, decode_record, intervals
from servergroup.services.model import AgentRef
from servergroup.services.ocf import OcfAgent
from servergroup.services.ocf_codes import OcfStatus, Severity

pytestmark = pytest.mark.timeout(60)

FIXTURE_ROOT = Path(__file__).resolve().parents[2] / "fixtures" / "ocf"
JOURNAL = AgentRef(provider="sgtest", type="journal")


def on(node: str, tmp_path: Path) -> OcfAgent:
    return OcfAgent(
        JOURNAL,
        instance="db:0",
        parameters={
            "state": str(tmp_path / f"{node}.state"),
            "journal": str(tmp_path / "journal"),
            "node": node,
        },
        ocf_root=FIXTURE_ROOT,
    )


def journal(tmp_path: Path) -> list[str]:
    return (tmp_path / "journal").read_text().splitlines()


async def test_a_clean_handover_checks_clean(tmp_path: Path) -> None:
    h1, h2 = on("h1", tmp_path), on("h2", tmp_path)
    assert (await h1.start(timeout=5, fencing_token=10)).ok
    assert (await h1.promote(timeout=5, fencing_token=10)).ok
    assert (await h1.monitor(timeout=5)).status is OcfStatus.RUNNING_MASTER
    assert (await h1.demote(timeout=5, fencing_token=10)).ok
    assert (await h1.stop(timeout=5, fencing_token=10)).ok
    assert (await h1.monitor(timeout=5)).status is OcfStatus.NOT_RUNNING
    assert (await h2.start(timeout=5, fencing_token=12)).ok
    assert (await h2.promote(timeout=5, fencing_token=12)).ok
    records = [decode_record(line) for line in journal(tmp_path)]
    assert [(r.node, r.action, r.phase.value, r.token) for r in records][:2] == [
        ("h1", "start", "begin", 10),
        ("h1", "start", "end", 10),
    ]
    assert len(records) == 12
    assert check(records) == []
    assert [(i.subject, i.node, i.end_at is None) for i in intervals(records)] == [
        ("db master", "h1", False),
        ("db master", "h2", True),
        ("db:0", "h1", False),
        ("db:0", "h2", True),
    ]


async def test_two_owners_show_in_the_journal(tmp_path: Path) -> None:
    h1, h2 = on("h1", tmp_path), on("h2", tmp_path)
    await h1.start(timeout=5, fencing_token=10)
    await h2.start(timeout=5, fencing_token=11)
    await h1.stop(timeout=5, fencing_token=10)
    violations = check(decode_record(line) for line in journal(tmp_path))
    assert len(violations) == 1
    assert "db:0 was held by h1 (token 10) and h2 (token 11) at once" in violations[0].sentence
    assert violations[0].seconds > 0


async def test_faults_on_demand(tmp_path: Path) -> None:
    h1 = on("h1", tmp_path)
    (tmp_path / "h1.state.fail-start").write_text("5\n")
    failed = await h1.start(timeout=5, fencing_token=3)
    assert failed.status is OcfStatus.ERR_INSTALLED
    assert failed.severity is Severity.HARD
    assert failed.exit_reason == "start fails as the test asked"
    (tmp_path / "h1.state.fail-start").unlink()
    (tmp_path / "h1.state.hang-stop").touch()
    assert (await h1.start(timeout=5, fencing_token=3)).ok
    hung = await h1.stop(timeout=0.3, fencing_token=3)
    assert hung.timed_out
    # A failed start counts as an owner until a stop succeeds; the hung stop never ended.
    records = [decode_record(line) for line in journal(tmp_path)]
    assert [i.end_at for i in intervals(records)] == [None]
