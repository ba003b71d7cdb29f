"""Compatibility with programs built against the original guest SDK, over the real setup.

The programs under `tests/compat/` are C, written here from the protocol spec
(`../shared/specs/guest-host-protocol.md`) to behave on the wire as the
original ones do: `sg_app` as the sample `server_group_app` over
libservergroup (abstract `cgcs.server_grp`, json-c's spaced output, a
4096-byte receive buffer, accepting only `source_addr` `cgcs.server_grp`
and integer version 2), `host_tool` as a program over libhostguestmsg (on a
host, naming the guest in `dest_instance`) or libguesthostmsg (in a guest).
They use plain C sockets and their own few lines of JSON reading
(`minijson.h`, libc only), not our Python client library, so what they see
is what an unmodified original program sees.

Everything else is real: `servergroup up` (managed etcd, a lab host with its
host daemon), lab servers with their guest agents, the C programs run inside
a server with `servergroup server exec` and inside the lab host's network
namespace with `nsenter`.
"""

from __future__ import annotations

import json
import queue
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from servergroup.common.process import stop_group
from tests.fixtures.setup import AppProcess, Setup, SetupFactory

pytestmark = pytest.mark.timeout(120)

COMPAT_DIR = Path(__file__).resolve().parent.parent / "compat"
PROGRAMS = ("sg_app", "host_tool")
CFLAGS = ("-Wall", "-Werror", "-O2")
RECV_BUF = 4096  # the original libraries' receive buffer
WAIT = 15.0

GROUP_MSG_TYPES = {
    "broadcast",
    "notification",
    "status_response",
    "status_response_done",
    "nack",
}


# -- building the programs -----------------------------------------------------------


@dataclass(frozen=True)
class CPrograms:
    sg_app: Path
    host_tool: Path


def build_c_programs(
    tmp_path_factory: pytest.TempPathFactory, names: Sequence[str]
) -> dict[str, Path]:
    """`tests/compat/<name>.c` for each name, compiled with `gcc -Wall -Werror -O2`."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail(
            "gcc is not installed: the compatibility tests build C programs; "
            "install gcc and libc6-dev (scripts/install-system-deps does)",
            pytrace=False,
        )
    out_dir = tmp_path_factory.mktemp("compat-c")
    built: dict[str, Path] = {}
    for name in names:
        target = out_dir / name
        done = subprocess.run(
            [gcc, *CFLAGS, "-o", str(target), str(COMPAT_DIR / f"{name}.c")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"gcc could not build {name}.c:\n{done.stderr}", pytrace=False)
        built[name] = target
    return built


@pytest.fixture(scope="session")
def c_programs(tmp_path_factory: pytest.TempPathFactory) -> CPrograms:
    """`tests/compat/*.c` compiled once per session."""
    return CPrograms(**build_c_programs(tmp_path_factory, PROGRAMS))


# -- running them ----------------------------------------------------------------------


@dataclass
class CProcess:
    """A C program's stdout, line by line (bytes kept: `raw` lines are checked byte for byte)."""

    where: str
    proc: subprocess.Popen[bytes]
    lines: queue.Queue[bytes] = field(default_factory=queue.Queue)
    seen: list[bytes] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def start_reading(self) -> None:
        def pump_out() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.put(line.rstrip(b"\n"))

        def pump_err() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr.append(line.decode(errors="replace").rstrip())

        threading.Thread(target=pump_out, daemon=True).start()
        threading.Thread(target=pump_err, daemon=True).start()

    def wait_for(self, predicate: Callable[[bytes], Any], timeout: float = WAIT) -> Any:
        """The first truthy `predicate(line)` (over lines seen so far, then coming ones)."""
        for line in self.seen:
            if result := predicate(line):
                return result
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                shown = [line.decode(errors="replace")[:300] for line in self.seen]
                raise AssertionError(
                    f"{self.where}: no matching line within {timeout:g} s; "
                    f"seen {shown}; stderr {self.stderr[-20:]}"
                )
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(line)
            if result := predicate(line):
                return result

    def finish(self, timeout: float = WAIT) -> list[bytes]:
        """Wait for the program to exit by itself (it must exit 0); all its lines."""
        code = self.proc.wait(timeout)
        assert code == 0, f"{self.where} exited {code}; stderr {self.stderr[-20:]}"
        return self.drain()

    def drain(self, quiet: float = 0.3) -> list[bytes]:
        """Every line, including those arriving until none has come for `quiet` seconds."""
        while True:
            try:
                self.seen.append(self.lines.get(timeout=quiet))
            except queue.Empty:
                return list(self.seen)

    def stop(self) -> None:
        """End the program and what it started (its own process group)."""
        if self.proc.poll() is None:
            stop_group(self.proc.pid, term_timeout=5.0)
        self.proc.wait(5)


@pytest.fixture
def c_procs() -> Iterator[list[CProcess]]:
    """Every C program a test started; stopped at teardown."""
    started: list[CProcess] = []
    yield started
    for proc in started:
        proc.stop()


def start(argv: list[str], where: str, env: dict[str, str], started: list[CProcess]) -> CProcess:
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # stop() ends the program too, not only the CLI running it
    )
    c_proc = CProcess(where=where, proc=proc)
    c_proc.start_reading()
    started.append(c_proc)
    return c_proc


def in_server(
    setup: Setup, server: str, program: Path, args: list[str], started: list[CProcess]
) -> CProcess:
    """`program ARGS` inside a lab server, ready (its socket bound) when this returns."""
    argv = setup.argv("server", "exec", server, "--", str(program), *args)
    c_proc = start(argv, f"{program.name} in {server}", setup.env, started)
    c_proc.wait_for(lambda line: line == b"ready", timeout=30)
    return c_proc


def host_netns(setup: Setup, host: str) -> str:
    state = json.loads((setup.state_dir / "up" / "state.json").read_text())
    for entry in state["hosts"]:
        if entry["name"] == host:
            return str(entry["netns"])
    raise AssertionError(f"no lab host {host} in {state}")


# -- reading their lines -----------------------------------------------------------------


def words(line: bytes, count: int) -> list[str] | None:
    """`line` split into `count` fields (the last one keeps its spaces), or None."""
    parts = line.decode().split(" ", count - 1)
    return parts if len(parts) == count else None


def status_of(names: set[str]) -> Callable[[bytes], list[dict[str, Any]] | None]:
    """Matches `status <n> [...]` listing exactly the servers `names`."""

    def check(line: bytes) -> list[dict[str, Any]] | None:
        if not line.startswith(b"status "):
            return None
        parts = words(line, 3)
        assert parts is not None, line
        servers: list[dict[str, Any]] = json.loads(parts[2])
        assert int(parts[1]) == len(servers), line
        return servers if {s["name"] for s in servers} == names else None

    return check


def broadcast_from(instance: str, text: str) -> Callable[[bytes], bool]:
    def check(line: bytes) -> bool:
        return line == f"broadcast {instance} {text}".encode()

    return check


def notification_about(name: str, what: str) -> Callable[[bytes], dict[str, Any] | None]:
    def check(line: bytes) -> dict[str, Any] | None:
        if not line.startswith(b"notification "):
            return None
        parts = words(line, 3)
        assert parts is not None, line
        event: dict[str, Any] = json.loads(parts[2])
        assert event["event_type"] == parts[1], line
        if event["payload"]["name"] == name and what in event["event_type"]:
            return event
        return None

    return check


def nack_of(orig: str) -> Callable[[bytes], str | None]:
    def check(line: bytes) -> str | None:
        prefix = f"nack {orig} ".encode()
        return line[len(prefix) :].decode() if line.startswith(prefix) else None

    return check


def recv_from(source: str, instance: str) -> Callable[[bytes], dict[str, Any] | None]:
    """Matches host_tool's `recv <source_addr> <source_instance> <data>`."""

    def check(line: bytes) -> dict[str, Any] | None:
        if not line.startswith(b"recv "):
            return None
        parts = words(line, 4)
        assert parts is not None, line
        if parts[1] != source or parts[2] != instance:
            return None
        data: dict[str, Any] = json.loads(parts[3])
        return data

    return check


def py_status_of(names: set[str]) -> Callable[[dict[str, Any]], bool]:
    def check(line: dict[str, Any]) -> bool:
        return line.get("kind") == "status" and {s["name"] for s in line["servers"]} == names

    return check


def py_broadcast(text: str, instance: str) -> Callable[[dict[str, Any]], bool]:
    def check(line: dict[str, Any]) -> bool:
        return (
            line.get("kind") == "broadcast"
            and line.get("text") == text
            and line.get("source_instance") == instance
        )

    return check


# -- the setup -------------------------------------------------------------------------


def names(count: int) -> tuple[str, list[str]]:
    """A unique group name and `count` unique server names."""
    tag = secrets.token_hex(3)
    return f"cg{tag}", [f"c{tag}{i}" for i in range(1, count + 1)]


def create_server(setup: Setup, name: str, group: str) -> str:
    """Create a lab server in `group`; its instance name."""
    setup.run("server", "create", name, "--group", group)
    return str(setup.json("server", "show", name)["instance_name"])


# -- (1) the seed's steps with the C sample app ------------------------------------------


def test_c_sample_app_seed_steps(
    servergroup_up: SetupFactory, c_programs: CPrograms, c_procs: list[CProcess]
) -> None:
    setup = servergroup_up(1)
    group, (s1, s2, s3) = names(3)
    setup.run("group", "create", group, "--policy", "affinity")
    create_server(setup, s1, group)
    # c) the C app in the first server sees the status of that server at once.
    app1 = in_server(setup, s1, c_programs.sg_app, ["-t", "50"], c_procs)
    [only] = app1.wait_for(status_of({s1}))
    assert only["server_group"] == group
    # d) a second server: a notification at the first.
    i2 = create_server(setup, s2, group)
    app1.wait_for(notification_about(s2, "create"))
    # A third server, with our Python sample app in it.
    i3 = create_server(setup, s3, group)
    app1.wait_for(notification_about(s3, "create"))
    py3: AppProcess = setup.app(s3)
    py3.wait_for(py_status_of({s1, s2, s3}))
    # e/g) the C app with a message on the second server: the broadcast at the
    #    C app in the first and the Python app in the third, a status with all
    #    three at the sender. The text has what json-c escapes ('/', '"', tab)
    #    and non-ASCII, which it writes raw.
    text = 'this is a test / "quoted" \u00e9\ttab'
    app2 = in_server(setup, s2, c_programs.sg_app, ["-t", "4", "-s", "7", text], c_procs)
    servers = app2.wait_for(status_of({s1, s2, s3}))
    assert {s["instance_name"] for s in servers} >= {i2, i3}
    app1.wait_for(broadcast_from(i2, text))
    py3.wait_for(py_broadcast(text, i2))
    lines = app2.finish()
    assert not [line for line in lines if line.startswith(b"broadcast ")], (
        "a broadcast came back to its sender"
    )
    # A broadcast from the Python app reaches the C app too.
    py3_sender = setup.app(s3, "--address", "cgcs.sg.py", "--timeout", "2", "from python")
    app1.wait_for(broadcast_from(i3, "from python"))
    assert py3_sender.proc.wait(WAIT) == 0
    # Lifecycle notifications reach the C app.
    setup.run("server", "pause", s3)
    app1.wait_for(notification_about(s3, "pause"))
    setup.run("server", "unpause", s3)
    app1.wait_for(notification_about(s3, "unpause"))
    py3.stop()


# -- (2) a host-side tool and a guest program, both directions ---------------------------


def test_c_host_tool_and_guest_program(
    servergroup_up: SetupFactory, c_programs: CPrograms, c_procs: list[CProcess]
) -> None:
    setup = servergroup_up(1)
    group, (s1,) = names(1)
    setup.run("group", "create", group)
    instance = create_server(setup, s1, group)
    # The guest's channel is up: a status round trip from the C sample app.
    probe = in_server(setup, s1, c_programs.sg_app, ["-t", "3"], c_procs)
    probe.wait_for(status_of({s1}))
    # A guest program over libguesthostmsg: answers whatever comes to cgcs.compat.
    guest_prog = in_server(
        setup,
        s1,
        c_programs.host_tool,
        ["-a", "cgcs.compat", "-e", "-n", "1", "-t", "40"],
        c_procs,
    )
    # A host tool over libhostguestmsg in the lab host's namespace, talking to
    # the host daemon's abstract cgcs.messaging.
    netns = host_netns(setup, "h1")
    text = 'hello from the host / "h1"'
    host_prog = start(
        [
            "nsenter",
            f"--net=/run/netns/{netns}",
            str(c_programs.host_tool),
            *("-a", "cgcs.hosttool", "-d", "cgcs.compat", "-i", instance),
            *("-m", text, "-n", "1", "-t", "30"),
        ],
        f"host_tool in {netns}",
        setup.env,
        c_procs,
    )
    host_prog.wait_for(lambda line: line.startswith(b"sent "))
    # Host -> guest: from the host tool's address; no source_instance in a guest.
    got = guest_prog.wait_for(recv_from("cgcs.hosttool", "-"))
    assert got == {"version": 2, "msg_type": "ping", "text": text}
    guest_prog.wait_for(lambda line: line == b"replied cgcs.hosttool -")
    # Guest -> host: from the guest program's address, with the guest's instance.
    reply = host_prog.wait_for(recv_from("cgcs.compat", instance))
    assert reply == {"version": 2, "msg_type": "reply", "text": text}
    host_prog.finish()
    guest_prog.finish()


# -- (3) the bytes an original program receives ------------------------------------------


@dataclass(frozen=True)
class RawDatagram:
    sender: str
    payload: bytes


def raw_datagrams(lines: list[bytes]) -> list[RawDatagram]:
    """The `raw <length> <sender> <bytes>` lines, each checked for its declared length."""
    out: list[RawDatagram] = []
    for line in lines:
        if not line.startswith(b"raw "):
            continue
        _, length, sender, payload = line.split(b" ", 3)
        assert len(payload) == int(length), (
            f"a {int(length)}-byte datagram shows as {len(payload)} bytes on one line "
            f"(a raw newline inside?): {line[:300]!r}"
        )
        out.append(RawDatagram(sender.decode(), payload))
    return out


def check_datagram(dgram: RawDatagram) -> str:
    """Assert `dgram` is valid per the spec for a guest app; its msg_type."""
    payload = dgram.payload
    assert len(payload) < RECV_BUF, f"a {len(payload)}-byte datagram: {payload[:200]!r}"
    assert b"\n" not in payload, payload[:200]
    assert b"\0" not in payload, payload[:200]
    obj = json.loads(payload.decode("utf-8"))
    assert isinstance(obj, dict), payload[:200]
    assert list(obj) == ["version", "source_addr", "data"], payload[:200]
    assert (type(obj["version"]), obj["version"]) == (int, 2), payload[:200]
    assert obj["source_addr"] == "cgcs.server_grp", payload[:200]
    data = obj["data"]
    assert isinstance(data, dict), payload[:200]
    assert (type(data.get("version")), data.get("version")) == (int, 2), (
        f"inner version must be the integer 2 (the original sent the string "
        f'"version" in relayed broadcasts): {payload[:200]!r}'
    )
    kind = data.get("msg_type")
    assert kind in GROUP_MSG_TYPES, payload[:200]
    if kind == "broadcast":
        assert isinstance(data["data"], str), payload[:200]
        assert isinstance(data["source_instance"], str), payload[:200]
    elif kind == "notification":
        event = data["data"]
        assert isinstance(event, dict), payload[:200]
        assert str(event["event_type"]).startswith("compute.instance."), payload[:200]
        assert {"priority", "timestamp", "payload"} <= set(event), payload[:200]
    elif kind == "status_response":
        assert type(data["seq"]) is int, payload[:200]
        assert isinstance(data["data"], dict), payload[:200]
    elif kind == "status_response_done":
        assert set(data) == {"version", "msg_type", "seq"}, (
            f"status_response_done carries only version, msg_type and seq "
            f"(the original's stale data is a known fault): {payload[:300]!r}"
        )
        assert type(data["seq"]) is int, payload[:200]
    elif kind == "nack":
        assert isinstance(data["orig_msg_type"], str), payload[:200]
        assert isinstance(data["log_msg"], str), payload[:200]
        assert data["log_msg"], payload[:200]
    return str(kind)


def test_c_app_receives_valid_bytes(
    servergroup_up: SetupFactory, c_programs: CPrograms, c_procs: list[CProcess]
) -> None:
    setup = servergroup_up(1)
    group, (s1, s2) = names(2)
    setup.run("group", "create", group)
    create_server(setup, s1, group)
    app1 = in_server(setup, s1, c_programs.sg_app, ["-r", "-t", "45"], c_procs)
    app1.wait_for(status_of({s1}))
    i2 = create_server(setup, s2, group)
    app1.wait_for(notification_about(s2, "create"))
    senders: list[CProcess] = []
    # The longest broadcast in two-byte UTF-8, then one full of characters
    # JSON escapes: both fit a 4096-byte receive buffer once delivered.
    long_text = "\u00e9" * 1525
    assert len(long_text.encode()) == 3050
    quotes = '"' * 1500
    for seq, text in ((3, long_text), (4, quotes)):
        sender = in_server(
            setup, s2, c_programs.sg_app, ["-r", "-t", "3", "-s", str(seq), text], c_procs
        )
        sender.wait_for(status_of({s1, s2}))
        app1.wait_for(broadcast_from(i2, text))
        sender.finish()
        senders.append(sender)
    # One byte over the limit: a nack with the reason, nothing delivered.
    too_long = in_server(setup, s2, c_programs.sg_app, ["-r", "-t", "3", "x" * 3051], c_procs)
    reason = too_long.wait_for(nack_of("broadcast"))
    assert "3050" in reason
    too_long.finish()
    senders.append(too_long)
    setup.run("server", "pause", s2)
    app1.wait_for(notification_about(s2, "pause"))
    setup.run("server", "unpause", s2)
    app1.wait_for(notification_about(s2, "unpause"))
    app1.drain()
    assert not [line for line in app1.seen if line.startswith(b"broadcast ") and b"xxxx" in line]

    kinds: set[str] = set()
    for proc in [app1, *senders]:
        lines = proc.drain(0.1)
        assert not [line for line in lines if line.startswith((b"truncated ", b"ignored "))], (
            f"{proc.where} got datagrams an original program would not take: "
            f"{[line[:200] for line in lines if line.startswith((b'truncated ', b'ignored '))]}"
        )
        for dgram in raw_datagrams(lines):
            kinds.add(check_datagram(dgram))
    assert kinds == GROUP_MSG_TYPES


def test_c_app_broadcast_that_json_c_escapes_past_4095_bytes(
    servergroup_up: SetupFactory, c_programs: CPrograms, c_procs: list[CProcess]
) -> None:
    setup = servergroup_up(1)
    group, (s1, s2) = names(2)
    setup.run("group", "create", group)
    create_server(setup, s1, group)
    app1 = in_server(setup, s1, c_programs.sg_app, ["-t", "20"], c_procs)
    app1.wait_for(status_of({s1}))
    i2 = create_server(setup, s2, group)
    app1.wait_for(notification_about(s2, "create"))
    # 3050 bytes, within the limit; json-c sends it as 4050 bytes of string.
    text = "/" * 1000 + "x" * 2050
    sender = in_server(setup, s2, c_programs.sg_app, ["-t", "4", text], c_procs)
    sender.wait_for(status_of({s1, s2}))
    lines = sender.finish()
    # Legal (3050 bytes of text): delivered, re-encoded without the escapes.
    assert not [line for line in lines if line.startswith(b"nack ")]
    app1.wait_for(broadcast_from(i2, text), timeout=3)
