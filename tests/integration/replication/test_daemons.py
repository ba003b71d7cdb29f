"""`servergroup protect` and `servergroup backup` as real processes on a real etcd.

Primary and backup run as subprocesses on loopback; clients are threads
with a TCP connection each that put unique keys and record every put whose
reply they received. After the primary is killed (SIGKILL from one of the
seed's failure points, or from the test at a random moment) the backup must
take over and hold every acknowledged put: a client never saw a reply of an
epoch the backup did not have. The same check is shown able to fail: with
--no-net-buffer acknowledged puts are lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from servergroup.replication.examples.kv import KvService
from servergroup.replication.protocol import (
    EpochBegin,
    Hello,
    MessageDecoder,
    Pages,
    Refuse,
    Welcome,
    encode_message,
)
from servergroup.replication.regions import PAGE_SIZE
from servergroup.replication.service import EXAMPLES
from tests.fixtures.daemons import Daemon, DaemonFactory, show_log_on_failure
from tests.fixtures.wait import wait_until

SG = [sys.executable, "-m", "servergroup", "-v", "--log-text"]

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ask(address: tuple[str, int], request: dict[str, Any], timeout: float = 5.0) -> Any:
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed without a reply")
            data += chunk
    return json.loads(data)


class Clients:
    """Threads putting unique keys over their own connection; `acked` is what got a reply."""

    def __init__(self, address: tuple[str, int], count: int) -> None:
        self.address = address
        self.acked: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, n: int) -> None:
        try:
            sock = socket.create_connection(self.address, timeout=10)
        except OSError:
            return
        with sock, sock.makefile("rb") as replies:
            i = 0
            while not self._stop.is_set():
                key, value = f"c{n}-{i}", f"v{n}-{i}-{random.randrange(10**6)}"
                try:
                    sock.sendall(json.dumps({"op": "put", "key": key, "value": value}).encode())
                    sock.sendall(b"\n")
                    line = replies.readline()
                except OSError:
                    return
                if not line:
                    return
                assert json.loads(line) == {"ok": True}
                with self._lock:
                    self.acked[key] = value
                i += 1

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def done(self) -> bool:
        return not any(thread.is_alive() for thread in self._threads)


class Pair:
    """A backup and a primary of one pair (the primary with a pipe on stdin)."""

    def __init__(
        self, daemon: DaemonFactory, env: dict[str, str], tmp: Path, request: pytest.FixtureRequest
    ) -> None:
        self._daemon = daemon
        self.env = env
        self.tmp = tmp
        self.request = request
        self.client = ("127.0.0.1", free_port())
        self.listen = ("127.0.0.1", free_port())
        self.serve = ("127.0.0.1", free_port())
        self.primaries: list[subprocess.Popen[bytes]] = []
        self.backup: Daemon | None = None
        #: The service both run (`--service`), and extra options for both.
        self.service = "kv"
        self.options: tuple[str, ...] = ()

    @staticmethod
    def text(address: tuple[str, int]) -> str:
        return f"{address[0]}:{address[1]}"

    def start_backup(self, *extra: str) -> Daemon:
        self.backup = self._daemon(
            [
                *SG,
                "backup",
                "--service",
                self.service,
                "--listen",
                self.text(self.listen),
                "--serve",
                self.text(self.serve),
                *self.options,
                *extra,
            ],
            env=self.env,
            name="backup",
            ready="listening for a primary",
        )
        return self.backup

    def start_primary(self, *extra: str, ready: bool = True) -> subprocess.Popen[bytes]:
        log_path = self.tmp / f"primary-{len(self.primaries) + 1}.log"
        show_log_on_failure(self.request.node, log_path.name, log_path)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    *SG,
                    "protect",
                    "--service",
                    self.service,
                    "--listen",
                    self.text(self.client),
                    "--backup",
                    self.text(self.listen),
                    *self.options,
                    *extra,
                ],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        self.primaries.append(proc)
        proc.log_path = log_path  # type: ignore[attr-defined]
        if ready:
            wait_until(
                lambda: "serving" in log_path.read_text() or proc.poll() is not None,
                "the primary serving",
            )
            assert proc.poll() is None, log_path.read_text()
        return proc

    def command(self, proc: subprocess.Popen[bytes], line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()

    def close(self) -> None:
        for proc in self.primaries:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()


@pytest.fixture
def pair(
    daemon: DaemonFactory,
    etcd_server: Any,
    etcd_prefix: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Pair]:
    env = {
        "SERVERGROUP_ETCD_ENDPOINTS": ",".join(str(e) for e in etcd_server.endpoints),
        "SERVERGROUP_PREFIX": etcd_prefix,
        "SERVERGROUP_STATE_DIR": str(tmp_path / "state"),
    }
    made = Pair(daemon, env, tmp_path, request)
    try:
        yield made
    finally:
        made.close()


def scan(address: tuple[str, int]) -> dict[str, str]:
    """Every key and its value, read from the service at `address`."""
    keys = ask(address, {"op": "scan"})["keys"]
    return {key: ask(address, {"op": "get", "key": key})["value"] for key in keys}


def fail_over(pair: Pair, kill: Callable[[subprocess.Popen[bytes]], None]) -> dict[str, str]:
    """Run clients on a protected primary, `kill` it, check the backup holds every acked put."""
    backup = pair.start_backup()
    primary = pair.start_primary()
    backup.wait_for_log("applied full epoch")
    clients = Clients(pair.client, 4)
    wait_until(lambda: clients.count() >= 40, "40 acknowledged puts")
    kill(primary)
    wait_until(lambda: primary.poll() is not None, "the primary's death", timeout=15)
    assert primary.returncode == -signal.SIGKILL
    backup.wait_for_log("took over at generation")
    wait_until(clients.done, "the clients noticing the primary's death", timeout=15)
    clients.stop()
    held = scan(pair.serve)
    lost = {k: v for k, v in clients.acked.items() if held.get(k) != v}
    assert not lost, f"{len(lost)} of {len(clients.acked)} acknowledged puts lost: {lost}"
    return held


#: Rounds of each kill in the slow-marked long run (`make test-slow`); one by default.
SLOW_ROUNDS = 15
POINTS = ["s", "s2", "r", "r2", "c", "c2"]


def die_at(pair: Pair, point: str) -> None:
    """One round: the primary dies at failure `point`; no acknowledged put is lost."""

    def arm(primary: subprocess.Popen[bytes]) -> None:
        pair.command(primary, point)

    fail_over(pair, arm)
    log = pair.primaries[0].log_path.read_text()  # type: ignore[attr-defined]
    assert f"failure point {point}: killing this process" in log


def killed_at_random(pair: Pair) -> None:
    """One round: the primary is killed at a random moment; no acknowledged put is lost."""

    def kill(primary: subprocess.Popen[bytes]) -> None:
        time.sleep(random.uniform(0, 0.4))
        primary.kill()

    fail_over(pair, kill)


@pytest.mark.parametrize("point", POINTS)
def test_no_acknowledged_put_is_lost_when_the_primary_dies_at_a_failure_point(
    pair: Pair, point: str
) -> None:
    die_at(pair, point)


def test_no_acknowledged_put_is_lost_when_the_primary_is_killed_at_a_random_moment(
    pair: Pair,
) -> None:
    killed_at_random(pair)


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(SLOW_ROUNDS))
@pytest.mark.parametrize("point", [*POINTS, "random"])
def test_many_rounds_of_primary_deaths_lose_no_acknowledged_put(
    pair: Pair, point: str, round_: int
) -> None:
    if point == "random":
        killed_at_random(pair)
    else:
        die_at(pair, point)


def test_the_check_catches_lost_output_when_replies_are_not_buffered(pair: Pair) -> None:
    """--no-net-buffer (a benchmark option) lets clients see epochs the backup never got."""
    pair.start_backup()
    primary = pair.start_primary("--no-net-buffer", "--interval", "300")
    assert pair.backup is not None
    pair.backup.wait_for_log("applied full epoch")
    clients = Clients(pair.client, 4)
    wait_until(lambda: clients.count() >= 40, "40 acknowledged puts")
    pair.command(primary, "s")
    wait_until(lambda: primary.poll() is not None, "the primary's death", timeout=15)
    pair.backup.wait_for_log("took over at generation")
    clients.stop()
    held = scan(pair.serve)
    lost = [k for k, v in clients.acked.items() if held.get(k) != v]
    assert lost, "every put survived although replies left before their epoch was on the backup"


def test_the_old_primary_coming_back_does_not_act(pair: Pair) -> None:
    backup = pair.start_backup()
    primary = pair.start_primary()
    backup.wait_for_log("applied full epoch")
    assert ask(pair.client, {"op": "put", "key": "k", "value": "before"}) == {"ok": True}
    primary.kill()
    primary.wait(10)
    backup.wait_for_log("took over at generation")
    assert ask(pair.serve, {"op": "get", "key": "k"}) == {
        "ok": True,
        "found": True,
        "value": "before",
    }
    again = pair.start_primary(ready=False)
    assert again.wait(30) != 0
    log = again.log_path.read_text()  # type: ignore[attr-defined]
    assert "is active on" in log
    assert "serving" not in log
    status = subprocess.run(
        [*SG, "replication", "status", "kv", "--json"],
        env={**os.environ, **pair.env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    shown = json.loads(status.stdout)
    assert shown["active"].endswith(Pair.text(pair.serve))
    assert shown["generation"] >= 3
    listed = subprocess.run(  # without NAME: every pair, one row each
        [*SG, "replication", "status", "--json"],
        env={**os.environ, **pair.env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    (row,) = json.loads(listed.stdout)["pairs"]
    assert (row["pair"], row["active"], row["generation"]) == (
        "kv",
        shown["active"],
        shown["generation"],
    )
    assert row["nodes"] == [n["node"] for n in shown["nodes"]]
    # The guide's backup command run again: its default name is the active's.
    listen = Pair.text(("127.0.0.1", free_port()))
    same_name = subprocess.run(
        [*SG, "backup", "--service", "kv", "--listen", listen, "--serve", Pair.text(pair.serve)],
        env={**os.environ, **pair.env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert same_name.returncode == 2, same_name.stderr
    assert "running active node: give this backup another --serve" in same_name.stderr


def test_remove_refuses_a_pair_whose_nodes_run(pair: Pair) -> None:
    """Forgetting a live pair would let a new primary start at generation 1 beside it."""

    def remove() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SG, "replication", "remove", "kv"],
            env={**os.environ, **pair.env},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    backup = pair.start_backup()
    primary = pair.start_primary()
    backup.wait_for_log("applied full epoch")
    refused = remove()
    assert refused.returncode == 1, refused.stdout
    assert refused.stderr.count("\n") == 1
    assert "still has running nodes" in refused.stderr
    assert Pair.text(pair.serve) in refused.stderr  # the backup's name
    primary.kill()
    primary.wait(10)
    backup.wait_for_log("took over at generation")
    assert backup.stop() == 0
    wait_until(lambda: remove().returncode == 0, "the pair removed once its nodes stopped")


def test_a_frozen_primary_thawed_after_the_takeover_releases_nothing(pair: Pair) -> None:
    """Split brain: the old primary still has clients but is fenced by the pair's generation."""
    backup = pair.start_backup()
    primary = pair.start_primary()
    backup.wait_for_log("applied full epoch")
    sock = socket.create_connection(pair.client, timeout=30)
    with sock:
        os.kill(primary.pid, signal.SIGSTOP)
        try:
            # Sent to the frozen primary: it will handle it after the thaw, in an epoch
            # no backup will ever acknowledge.
            sock.sendall(b'{"op": "put", "key": "late", "value": "x"}\n')
            backup.wait_for_log("took over at generation")
        finally:
            os.kill(primary.pid, signal.SIGCONT)
        reply = b""
        with contextlib.suppress(OSError):
            reply = sock.recv(4096)
        assert reply == b"", f"the fenced primary released {reply!r}"
    primary.wait(30)
    assert primary.returncode != 0
    assert ask(pair.serve, {"op": "get", "key": "late"}) == {"ok": True, "found": False}


def test_the_primary_goes_unprotected_when_the_backup_dies_and_is_re_protected(
    pair: Pair,
) -> None:
    """Re-protection by a backup started at another address than the primary's `--backup`."""
    backup = pair.start_backup()
    primary = pair.start_primary()
    backup.wait_for_log("applied full epoch")
    assert ask(pair.client, {"op": "put", "key": "one", "value": "1"}) == {"ok": True}
    backup.kill()
    log_path: Path = primary.log_path  # type: ignore[attr-defined]
    wait_until(lambda: "running UNPROTECTED" in log_path.read_text(), "going unprotected")
    assert ask(pair.client, {"op": "put", "key": "two", "value": "2"}) == {"ok": True}
    # A new backup at another address than the primary's --backup: the primary
    # finds it in the pair's statuses; a full copy, then increments.
    old_listen = pair.listen
    pair.listen, pair.serve = ("127.0.0.1", free_port()), ("127.0.0.1", free_port())
    second = pair.start_backup()
    second.wait_for_log("applied full epoch")
    wait_until(lambda: "protected again" in log_path.read_text(), "re-protection")
    assert f"backup {pair.text(pair.listen)} attached" in log_path.read_text()
    assert pair.text(old_listen) != pair.text(pair.listen)
    assert ask(pair.client, {"op": "put", "key": "three", "value": "3"}) == {"ok": True}
    primary.kill()
    primary.wait(10)
    second.wait_for_log("took over at generation")
    assert scan(pair.serve) == {"one": "1", "two": "2", "three": "3"}


def status(pair: Pair, name: str = "kv") -> Any:
    shown = subprocess.run(
        [*SG, "replication", "status", name, "--json"],
        env={**os.environ, **pair.env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(shown.stdout)


def test_epochs_pre_copied_while_the_service_writes_fail_over_consistent(pair: Pair) -> None:
    """A service rewriting 128 pages a put: pre-copy rounds run, and the backup's state is whole.

    The ledger of `WideKv` is a function of its put count; a checkpoint
    whose pages were copied at different moments would break it.
    """
    pair.service = "tests.integration.replication.wide_service:WideKv"
    pair.options = ("--pair", "wide")

    def precopied() -> int:
        nodes = status(pair, "wide")["nodes"]
        return sum(n.get("precopied_pages", 0) for n in nodes if n.get("role") == "primary")

    def kill(primary: subprocess.Popen[bytes]) -> None:
        wait_until(lambda: precopied() > 0, "pages copied by pre-copy rounds")
        time.sleep(random.uniform(0, 0.2))
        primary.kill()

    fail_over(pair, kill)
    state = ask(pair.serve, {"op": "check"})
    assert state["consistent"], state
    assert state["puts"] >= 40


def kv_hello(generation: int) -> Hello:
    return Hello(
        service=EXAMPLES["kv"],
        generation=generation,
        page_size=PAGE_SIZE,
        disk_size=0,
        regions=(("kv.slots", KvService.capacity * 512), ("kv.meta", PAGE_SIZE)),
    )


def exchange(address: tuple[str, int], data: bytes) -> list[Any]:
    """Send `data` on a new connection, half-close, and decode what comes back."""
    return exchange_from(address, data)[1]


def exchange_from(address: tuple[str, int], data: bytes) -> tuple[str, list[Any]]:
    """`exchange`, and the address it was sent from, as the backup logs it."""
    decoder = MessageDecoder()
    got: list[Any] = []
    with socket.create_connection(address, timeout=10) as sock:
        host, port = sock.getsockname()[:2]
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            got += decoder.feed(chunk)
    return f"{host}:{port}", got


def test_a_backup_for_another_service_is_refused(pair: Pair) -> None:
    pair.start_backup("--pair", "kv").wait_for_log("listening")
    backup = pair.backup
    assert backup is not None
    backup.stop()
    other = pair._daemon(
        [
            *SG,
            "backup",
            "--service",
            "counter",
            "--pair",
            "kv",
            "--listen",
            Pair.text(pair.listen),
            "--serve",
            Pair.text(pair.serve),
        ],
        env=pair.env,
        name="counter-backup",
        ready="listening for a primary",
    )
    primary = pair.start_primary(ready=False)
    assert primary.wait(30) != 0
    assert "refused us: this backup is for service" in primary.log_path.read_text()  # type: ignore[attr-defined]
    other.wait_for_log("refused from the primary: this backup is for service")
    assert "applied" not in other.log_text()


def attached_more_than(log_path: Path, count: int) -> Callable[[], bool]:
    """Whether the primary logging to `log_path` attached to a backup more than `count` times."""
    return lambda: log_path.read_text().count("attached at generation") > count


def test_stale_corrupt_and_truncated_streams_are_refused_and_never_applied(pair: Pair) -> None:
    backup = pair.start_backup()
    primary = pair.start_primary()
    backup.wait_for_log("applied full epoch")
    assert ask(pair.client, {"op": "put", "key": "a", "value": "1"}) == {"ok": True}
    generation = status(pair)["generation"]
    # A hello from a stale generation: refused, the real stream untouched.
    answer = exchange(pair.listen, encode_message(kv_hello(generation - 1)))
    assert len(answer) == 1
    assert isinstance(answer[0], Refuse)
    assert "stale" in answer[0].reason
    # Garbage and a flipped bit inside a valid frame.
    assert exchange(pair.listen, b"GET / HTTP/1.0\r\n\r\n" * 4) == []
    frame = bytearray(encode_message(kv_hello(generation)))
    frame[-3] ^= 0x10
    assert exchange(pair.listen, bytes(frame)) == []
    # A truncated full epoch, at the current generation (it replaces the real stream):
    # the `poison` page (a slot holding key "poison") must never reach the service's regions.
    slot = bytes([1, 0, 6, 0, 1, 0, 0, 0]) + b"poison".ljust(64, b"\0") + b"x".ljust(440, b"\0")
    poison = slot.ljust(PAGE_SIZE, b"\0")
    pages = encode_message(Pages(region=0, runs=((0, 1),), data=poison))
    log_path: Path = primary.log_path  # type: ignore[attr-defined]
    # Each try breaks the primary's stream, and the primary reattaches at a new generation.
    # That hello may replace the truncated stream before the backup read to its cut: then
    # the backup drops it unread, and the test tries again (at most a few times).
    for attempt in range(1, 6):
        generation = status(pair)["generation"]
        epoch = encode_message(EpochBegin(generation=generation, epoch=1000, full=True))
        sent = encode_message(kv_hello(generation)) + epoch + pages[:-7]
        source, answer = exchange_from(pair.listen, sent)
        assert [type(m) for m in answer] == [Welcome]
        ended = backup.wait_for_log(rf"stream from {re.escape(source)} ended: (.*)")
        # The primary reattaches (a new generation, a full checkpoint) and goes on.
        wait_until(attached_more_than(log_path, attempt), "reattaching")
        if "replaced" not in ended.string:
            assert ended[1].endswith("closed the stream inside a frame")
            break
    else:
        pytest.fail("every truncated stream was replaced before the backup read it")
    assert ask(pair.client, {"op": "put", "key": "b", "value": "2"}) == {"ok": True}
    primary.kill()
    primary.wait(10)
    backup.wait_for_log("took over at generation")
    assert scan(pair.serve) == {"a": "1", "b": "2"}
    assert "refused a hello" in backup.log_text()
    assert "does not start frames" in backup.log_text()
    assert "does not match its hash" in backup.log_text()


@pytest.mark.parametrize("named", [True, False], ids=["next-backup", "advertised"])
def test_the_backup_that_took_over_is_protected_by_a_new_backup(pair: Pair, named: bool) -> None:
    """Re-protection of the new primary: a full copy, then increments, then it may die too.

    The new backup is found at `--next-backup`, or without it through the
    address it advertises in the pair's status.
    """
    second_listen, second_serve = ("127.0.0.1", free_port()), ("127.0.0.1", free_port())
    backup = pair.start_backup(*(["--next-backup", Pair.text(second_listen)] if named else []))
    primary = pair.start_primary()
    backup.wait_for_log("applied full epoch")
    assert ask(pair.client, {"op": "put", "key": "one", "value": "1"}) == {"ok": True}
    primary.kill()
    primary.wait(10)
    backup.wait_for_log("took over at generation")
    assert ask(pair.serve, {"op": "put", "key": "two", "value": "2"}) == {"ok": True}
    second = pair._daemon(
        [
            *SG,
            "backup",
            "--service",
            "kv",
            "--listen",
            Pair.text(second_listen),
            "--serve",
            Pair.text(second_serve),
        ],
        env=pair.env,
        name="second-backup",
        ready="listening for a primary",
    )
    second.wait_for_log("applied full epoch")
    backup.wait_for_log("protected again at generation")
    assert ask(pair.serve, {"op": "put", "key": "three", "value": "3"}) == {"ok": True}
    shown = status(pair)
    assert shown["active"].endswith(Pair.text(pair.serve))
    assert shown["backup"] == Pair.text(second_listen)
    backup.kill()
    second.wait_for_log("took over at generation")
    assert scan(second_serve) == {"one": "1", "two": "2", "three": "3"}
