"""Group messaging under load, on the real setup: no silent loss, one order (issue 12).

Each test runs `servergroup up` (real host daemons, the managed etcd), lab
servers of one group, and one load app per server
(tests/integration/groups/load.py: a real process in the server's
namespace, the client library's blocking `broadcast()`); the checker then
reads what every app logged:

- a burst of 10 000 from one app: every other member gets every broadcast
  once, in the same order; all acknowledged, none refused;
- 4 apps in 4 servers sending 10 000 each at once: the same. (10 000 each,
  not 2 500: the issue asks for it, and the test takes about 25 s on a
  2-CPU machine shared with other work, so the file stays near a minute
  and a half.)
- a paused member during a burst (20 000): the others get everything; after unpause
  it gets what fitted its bound and sees the gap (its client counts
  `missed`), nothing twice or out of order;
- kill -9 of the sending host's daemon mid-burst: every broadcast
  acknowledged to the sender reaches the members on the other host, none
  twice; the sender's acknowledged + refused + unconfirmed is what it sent.
- a host daemon frozen (SIGSTOP) mid-burst of 4 apps for longer than its
  lease: its apps' broadcasts are refused while it has no session, and
  after it thaws the backlog its members get at once may overflow what
  their agents hold; nothing of that is silent: every acknowledged
  broadcast a member lacks is in its client's `missed` count, and nothing
  comes twice or out of order.

No timing is asserted (bench/messaging.py measures it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import pytest

from tests.fixtures.setup import Setup, SetupFactory
from tests.integration.daemons.test_restarts import daemon_pid, kill_host_daemon, wait_gone
from tests.integration.groups.load import (
    AppLog,
    Load,
    SenderCounts,
    Stats,
    check,
    expected_counts,
)

pytestmark = pytest.mark.timeout(150)

BURST = 10_000
PAUSED_BURST = 2 * BURST
SEND_TIMEOUT = 120.0
#: The tests that want every broadcast acknowledged run the hosts on a 3 s lease, not
#: the default 1 s: on a shared machine etcd or a daemon stalls for over a second now
#: and then (both hosts timed out on etcd at once in a run), the host loses its session
#: and rightly refuses its apps' broadcasts meanwhile, which these tests do not look at
#: (test_frozen_host_daemon_mid_burst_loses_nothing_silently does, on the 1 s lease).
STEADY = {"SERVERGROUP_LEASE_TTL": "3"}


class LoadFactory(Protocol):
    def __call__(self, setup: Setup, placement: Mapping[str, str]) -> Load: ...


@pytest.fixture
def load_in(short_dir: Path) -> Iterator[LoadFactory]:
    """Create group `g` with `placement` (server -> host) and start a load app in each."""
    started: list[Load] = []

    def make(setup: Setup, placement: Mapping[str, str]) -> Load:
        setup.run("group", "create", "g", "--policy", "soft-anti-affinity")
        for name, host in placement.items():
            setup.run("server", "create", name, "--group", "g", "--host", host)
        load = Load.start(setup, placement, short_dir / f"load{len(started)}")
        started.append(load)
        return load

    try:
        yield make
    finally:
        for load in started:
            load.close()


def all_acknowledged(count: int) -> SenderCounts:
    return SenderCounts(
        sent=count, acknowledged=count, refused=0, unconfirmed=0, pending=0, nacks_seen=0
    )


@contextlib.contextmanager
def paused(setup: Setup, name: str) -> Iterator[None]:
    """Server `name` paused (its guest agent and app frozen) inside the block."""
    setup.run("server", "pause", name)
    try:
        yield
    finally:
        setup.run("server", "unpause", name)


def burst_and_collect(load: Load, senders: list[str], tag: str, count: int) -> dict[str, AppLog]:
    load.burst(senders, tag, count)
    done = load.wait_sent(senders, SEND_TIMEOUT)
    assert all(d.flushed for d in done.values()), done
    load.wait_delivered(expected_counts(dict.fromkeys(senders, count), load.apps), tag)
    return load.collect()


def test_burst_from_one_app_reaches_every_member_once_in_order(
    servergroup_up: SetupFactory, load_in: LoadFactory
) -> None:
    setup = servergroup_up(2, env=STEADY)
    load = load_in(setup, {"a": "h1", "b": "h1", "c": "h2"})
    logs = burst_and_collect(load, ["a"], "burst", BURST)
    verdict = check(logs, all_acknowledged=True)
    assert verdict.problems == ()
    assert verdict.senders == {"a": all_acknowledged(BURST)}
    for name in ("b", "c"):
        counts = verdict.receivers[name]
        assert (counts.received, counts.duplicates, counts.order_violations) == (BURST, 0, 0)
        assert (counts.gaps, counts.missed) == (0, 0)


def test_bursts_from_four_apps_at_once_reach_everyone_once_in_one_order(
    servergroup_up: SetupFactory, load_in: LoadFactory
) -> None:
    setup = servergroup_up(2, env=STEADY)
    placement = {"a": "h1", "b": "h1", "c": "h2", "d": "h2"}
    load = load_in(setup, placement)
    logs = burst_and_collect(load, list(placement), "burst", BURST)
    verdict = check(logs, all_acknowledged=True)
    assert verdict.problems == ()
    assert verdict.broadcasts == 4 * BURST
    assert verdict.senders == dict.fromkeys(placement, all_acknowledged(BURST))
    for name in placement:
        counts = verdict.receivers[name]
        assert (counts.received, counts.duplicates, counts.order_violations) == (3 * BURST, 0, 0)


def test_paused_member_does_not_hold_back_the_others_and_sees_the_gap(
    servergroup_up: SetupFactory, load_in: LoadFactory
) -> None:
    # The bound at 1 MiB (the default is 4): the burst below overflows it several times.
    setup = servergroup_up(2, env={**STEADY, "SERVERGROUP_CHANNEL_QUEUE_LIMIT": str(1 << 20)})
    # p shares host h2 with b: a frozen guest must not slow its neighbour's deliveries.
    load = load_in(setup, {"a": "h1", "b": "h2", "p": "h2"})
    load.burst(["a"], "before", 200)
    load.wait_sent(["a"], SEND_TIMEOUT)
    assert load.wait_delivered({"b": 200, "p": 200}, "before") == {"b": 200, "p": 200}

    with paused(setup, "p"):
        # Twice the burst of 100-byte texts: about 4 MB toward p, far beyond what may wait
        # for it (the relay's 1 MiB per guest and the socket buffers), while b keeps up.
        # (With 1000-byte texts, a receiver that runs may fall behind an unpaced burst too,
        # and lose what its bound cannot hold: the test would not say what the pause did.)
        load.burst(["a"], "during", PAUSED_BURST)
        done = load.wait_sent(["a"], SEND_TIMEOUT)
        assert done["a"].flushed
        assert load.wait_delivered({"b": PAUSED_BURST}, "during") == {"b": PAUSED_BURST}
    # p catches up on what waited for it; then broadcasts after the unpause reach it,
    # past the gap.
    load.wait_delivered({"p": PAUSED_BURST}, "during", quiet=1.0)
    load.burst(["a"], "after", 100)
    load.wait_sent(["a"], SEND_TIMEOUT)
    assert load.wait_delivered({"b": 100, "p": 100}, "after") == {"b": 100, "p": 100}
    logs = load.collect()

    verdict = check(logs, complete={"b"}, all_acknowledged=True)
    assert verdict.problems == ()  # p too: nothing twice, out of order, or not in the group order
    assert verdict.senders == {"a": all_acknowledged(200 + PAUSED_BURST + 100)}
    assert verdict.receivers["b"].received == 200 + PAUSED_BURST + 100
    frozen = verdict.receivers["p"]
    during = sum(1 for r in logs["p"].receipts if r.tag == "during")
    assert 0 < during < PAUSED_BURST, "p got what fitted its bound, not everything"
    assert frozen.gaps > 0
    assert frozen.missed > 0, "p's client counts the broadcasts it missed"
    assert (frozen.duplicates, frozen.order_violations) == (0, 0)


def test_sending_host_killed_mid_burst_loses_nothing_acknowledged(
    servergroup_up: SetupFactory, load_in: LoadFactory
) -> None:
    # No evacuation while the test looks: the sender must stay where it is.
    setup = servergroup_up(2, env={"SERVERGROUP_EVACUATION_GRACE": "300"})
    load = load_in(setup, {"a": "h1", "b": "h2", "c": "h2"})
    # 4 s at 2500/s: the kill lands in the middle. The flush outlasts the client's
    # ack timeout (10 s), so that what was never acknowledged is counted unconfirmed.
    load.burst(["a"], "burst", BURST, rate=2500, flush_timeout=15.0)
    deadline = time.monotonic() + 30
    while load.received(["b"], "burst")["b"] < 1000:
        assert time.monotonic() < deadline, "the burst did not start"
        time.sleep(0.05)
    pid = kill_host_daemon(setup, "h1")  # with its supervisor: nobody restarts it
    wait_gone(pid)

    done = load.wait_sent(["a"], SEND_TIMEOUT)
    stats = done["a"].stats
    assert stats.sent == BURST
    assert 0 < stats.acknowledged < BURST, "the kill came mid-burst"
    load.wait_delivered(dict.fromkeys(("b", "c"), stats.acknowledged), "burst")
    logs = load.collect()

    verdict = check(logs, complete={"b", "c"})
    # Includes: every acknowledged broadcast at b and c, none twice, one order,
    # acknowledged + refused + unconfirmed == sent, refused == the nacks a got.
    assert verdict.problems == ()
    sender = verdict.senders["a"]
    assert sender.acknowledged + sender.refused + sender.unconfirmed == BURST
    for name in ("b", "c"):
        assert verdict.receivers[name].missing_acknowledged == 0
        assert verdict.receivers[name].duplicates == 0


# -- the checker itself, on logs written by hand ------------------------------------------


def logs_of(sender_stats: Stats, **lines: list[str]) -> dict[str, AppLog]:
    """App logs from log lines (name -> lines); `sender_stats` are app a's."""
    logs = {}
    for name, written in lines.items():
        log = AppLog(name=name, host="h1" if name == "a" else "h2")
        for line in written:
            log.take(line)
        logs[name] = log
    logs["a"].stats = sender_stats
    return logs


SENDS = [f"s t {i} {i} 1.{i}" for i in range(3)]


def got(seq: int, index: int, at: str = "2.0") -> str:
    return f"r {seq} t a {index} 1.{index} {at} instance-0000000a"


def test_checker_passes_a_clean_run() -> None:
    receipts = [got(1, 0), got(2, 1), got(3, 2)]
    logs = logs_of(Stats(sent=3, acknowledged=3), a=SENDS, b=receipts, c=receipts)
    verdict = check(logs, all_acknowledged=True)
    assert verdict.problems == ()
    assert verdict.broadcasts == 3
    assert verdict.senders["a"] == all_acknowledged(3)
    assert verdict.receivers["b"].received == 3


def test_checker_finds_duplicates_disorder_and_loss() -> None:
    stats = Stats(sent=3, acknowledged=3)
    twice = check(logs_of(stats, a=SENDS, b=[got(1, 0), got(2, 1), got(2, 1), got(3, 2)]))
    assert twice.receivers["b"].duplicates == 1
    assert any("2 times" in p for p in twice.problems)
    disagree = check(
        logs_of(stats, a=SENDS, b=[got(1, 0), got(2, 1), got(3, 2)], c=[got(1, 1), got(2, 0)])
    )
    assert any("seq 1 is a#t/0 at one receiver" in p for p in disagree.problems)
    backwards = check(logs_of(stats, a=SENDS, b=[got(2, 1), got(1, 0), got(3, 2)]))
    assert backwards.receivers["b"].order_violations == 1
    lost = check(logs_of(stats, a=SENDS, b=[got(1, 0), got(2, 1), got(3, 2)], c=[got(1, 0)]))
    assert lost.receivers["c"].missing_acknowledged == 2
    assert "c never got a#t/1, acknowledged to a" in lost.problems


def test_checker_counts_refused_and_unconfirmed_and_checks_the_sum() -> None:
    refused = [*SENDS, "n 2 busy: the group service is full"]
    receipts = [got(1, 0), got(2, 1)]
    # id 2 refused: only 0 and 1 were acknowledged, so nothing is missing.
    ok = check(logs_of(Stats(sent=3, acknowledged=2, refused=1), a=refused, b=receipts))
    assert ok.problems == ()
    assert ok.senders["a"].nacks_seen == 1
    blocking = check(
        logs_of(Stats(sent=3, acknowledged=2, refused=1), a=refused, b=receipts),
        all_acknowledged=True,
    )
    assert any("all must be acknowledged" in p for p in blocking.problems)
    unaccounted = check(logs_of(Stats(sent=3, acknowledged=2, pending=1), a=SENDS, b=receipts))
    assert any("is not the 3 it sent (1 pending)" in p for p in unaccounted.problems)
    # The client nacks an unconfirmed broadcast itself: it counts among the nacked.
    unconfirmed = [*SENDS, "n 2 the host did not confirm it within 10 s"]
    maybe = check(logs_of(Stats(sent=3, acknowledged=2, unconfirmed=1), a=unconfirmed, b=receipts))
    assert maybe.problems == ()
    silent = check(logs_of(Stats(sent=3, acknowledged=2, unconfirmed=1), a=SENDS, b=receipts))
    assert any("but 0 broadcasts nacked" in p for p in silent.problems)


def test_checker_counts_a_receivers_gap_and_spares_incomplete_receivers() -> None:
    full = [got(1, 0), got(2, 1), got(3, 2)]
    logs = logs_of(Stats(sent=3, acknowledged=3), a=SENDS, b=full, p=[got(1, 0), got(3, 2)])
    verdict = check(logs, complete={"b"})
    assert verdict.problems == ()
    assert verdict.receivers["p"].gaps == 1
    assert check(logs).receivers["p"].missing_acknowledged == 1


def test_frozen_host_daemon_mid_burst_loses_nothing_silently(
    servergroup_up: SetupFactory, load_in: LoadFactory
) -> None:
    # No evacuation while the test looks: the servers must stay where they are.
    setup = servergroup_up(2, env={"SERVERGROUP_EVACUATION_GRACE": "300"})
    placement = {"a": "h1", "b": "h1", "c": "h2", "d": "h2"}
    load = load_in(setup, placement)
    start_at = load.burst(list(placement), "burst", BURST)
    # 2 s into the burst (it takes 10 s and more here). (Asking an app what it got
    # would wait for its burst to end.)
    time.sleep(max(0.0, start_at + 2.0 - time.monotonic()))
    pid = daemon_pid(setup, "h1")  # the daemon itself, not its supervisor
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(2.5)  # over the 1 s lease: h1 loses its session
    finally:
        os.kill(pid, signal.SIGCONT)
    done = load.wait_sent(list(placement), SEND_TIMEOUT)
    assert all(d.flushed for d in done.values()), done
    assert done["a"].stats.refused + done["b"].stats.refused > 0, "h1 lost its session"
    # A few more from c, after it all: every member's last seq is past the burst's,
    # so whatever it lacks of the burst is a gap its client has counted.
    load.burst(["c"], "after", 10)
    load.wait_sent(["c"], SEND_TIMEOUT)
    load.wait_delivered(dict.fromkeys(("a", "b", "d"), 10), "after")
    logs = load.collect()

    verdict = check(logs, complete=set())
    assert verdict.problems == ()  # accounting at each sender, one order, nothing twice
    for name, counts in verdict.receivers.items():
        assert (counts.duplicates, counts.order_violations) == (0, 0), name
    missing = check(logs)  # every member must have every acknowledged broadcast...
    for name, counts in missing.receivers.items():
        # ... or have counted the ones it lacks.
        assert counts.missing_acknowledged <= counts.missed, (name, counts)
