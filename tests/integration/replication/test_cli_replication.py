"""The replication commands through the real command line: kv client, errors, help."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from servergroup.cli.main import cli
from tests.fixtures.daemons import DaemonFactory

SG = [sys.executable, "-m", "servergroup"]

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SG, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def assert_one_sentence(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("servergroup: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_the_kv_client_against_an_unprotected_primary(daemon: DaemonFactory) -> None:
    address = f"127.0.0.1:{free_port()}"
    daemon(
        [*SG, "-v", "protect", "--service", "kv", "--listen", address, "--no-backup"],
        name="primary",
        ready="serving",
    )
    kv = ["kv", "--server", address]
    assert run([*kv, "put", "colour", "blue"]).stdout == "ok\n"
    assert run([*kv, "put", "shape", "round"]).stdout == "ok\n"
    assert run([*kv, "get", "colour"]).stdout == "blue\n"
    assert run([*kv, "scan"]).stdout == "colour\nshape\n"
    assert run([*kv, "delete", "colour"]).stdout == "deleted\n"
    assert_one_sentence(run([*kv, "get", "colour"]), "'colour' is not in the store")
    assert_one_sentence(run([*kv, "put", "k" * 100, "v"]), "the service refused")
    too_long = run([*kv, "put", "big", "v" * 70_000])  # over the front's 64 KiB line
    assert_one_sentence(too_long, "the service refused: the request is over 65536 bytes")
    assert run([*kv, "get", "shape"]).stdout == "round\n"  # and the service serves on


def test_the_kv_client_against_another_service_says_so(daemon: DaemonFactory) -> None:
    address = f"127.0.0.1:{free_port()}"
    daemon(
        [*SG, "-v", "protect", "--service", "counter", "--listen", address, "--no-backup"],
        name="primary",
        ready="serving",
    )
    kv = ["kv", "--server", address]
    assert_one_sentence(run([*kv, "get", "colour"]), "did not answer as the kv service")
    assert_one_sentence(run([*kv, "put", "colour", "blue"]), "the service refused")


def test_a_daemon_asked_to_stop_exits_0_and_a_half_closed_client_gets_its_replies(
    daemon: DaemonFactory,
) -> None:
    """`printf REQUESTS | nc -N`: the replies of an epoch come after the client ended its side."""
    port = free_port()
    primary = daemon(
        [*SG, "-v", "protect", "--service", "kv", "--listen", f"127.0.0.1:{port}", "--no-backup"],
        name="primary",
        ready="serving",
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(
            b'{"op":"put","key":"k","value":"v"}\n{"op":"zzz"}\n{"op":"get","key":"k"}\n'
        )
        client.shutdown(socket.SHUT_WR)
        replies = b""
        while chunk := client.recv(65536):
            replies += chunk
    assert replies.splitlines() == [
        b'{"ok":true}',
        b'{"ok":false,"error":"unknown op \'zzz\'; use get, put, delete or scan"}',
        b'{"ok":true,"found":true,"value":"v"}',
    ]
    assert primary.stop() == 0  # SIGTERM: a clean stop, not click's "Aborted!" and status 1
    assert "Aborted" not in primary.log_text()


def test_a_command_interrupted_says_so_in_one_sentence_with_status_130(
    daemon: DaemonFactory,
) -> None:
    # --no-record: a local etcd left running in the machine's default state directory
    # would otherwise get its record written at the interrupt (slow under load).
    receive = [
        *("image", "receive", "127.0.0.1", "127.0.0.1", str(free_port())),
        *("--timeout", "60", "--no-record"),
    ]
    waiting = daemon(  # retrying to reach a sender that is not there
        [*SG, "-v", "--log-text", *receive], name="receiver", ready="connecting to the sender"
    )
    waiting.send_signal(signal.SIGINT)
    assert waiting.wait(10) == 130
    assert waiting.log_text().strip().splitlines()[-1] == "servergroup: interrupted."


def test_the_kv_client_exits_non_zero_without_a_reply() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        result = run(["kv", "--server", f"127.0.0.1:{port}", "--timeout", "0.5", "get", "x"])
    assert_one_sentence(result, "no reply")
    assert_one_sentence(run(["kv", "--server", f"127.0.0.1:{free_port()}", "scan"]), "cannot reach")


def test_errors_are_one_sentence(tmp_path: Path, etcd_server: Any, etcd_prefix: str) -> None:
    env = {
        "SERVERGROUP_ETCD_ENDPOINTS": ",".join(str(e) for e in etcd_server.endpoints),
        "SERVERGROUP_PREFIX": etcd_prefix,
    }
    listen = f"127.0.0.1:{free_port()}"
    nobody = f"127.0.0.1:{free_port()}"
    assert_one_sentence(
        run(["protect", "--service", "kv", "--listen", listen, "--backup", nobody], env),
        "unreachable",
        "connection refused",
        f"servergroup backup --listen {nobody}",
    )
    # It never served: no pair is left naming it active, so the next try is not refused.
    assert_one_sentence(run(["replication", "status", "kv"], env), "no replication pair named")
    other = f"127.0.0.1:{free_port()}"
    again = run(["protect", "--service", "kv", "--listen", other, "--backup", nobody], env)
    assert_one_sentence(again, "unreachable")
    assert_one_sentence(
        run(["protect", "--service", "no.such:Thing", "--listen", listen, "--no-backup"]),
        "cannot import",
    )
    assert_one_sentence(
        run(["protect", "--service", "kv", "--listen", "nowhere", "--no-backup"]), "HOST:PORT"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        assert_one_sentence(
            run(["protect", "--service", "kv", "--listen", busy, "--no-backup"]), "address"
        )
        assert_one_sentence(
            run(["backup", "--service", "kv", "--listen", busy, "--serve", listen], env),
            "address",
        )
    assert_one_sentence(run(["replication", "status", "nosuch"], env), "no replication pair")
    assert run(["replication", "status"], env).stdout == "no replication pairs\n"


def test_a_failure_point_on_stdin_kills_the_primary(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "primary.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*SG, "-v", "protect", "--service", "counter", "--listen", address, "--no-backup"],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"bogus\nc2\n")
        proc.stdin.flush()
        assert proc.wait(30) == -9
        text = log.read_text()
        assert "'bogus' is not a failure point" in text
        assert "failure point c2: killing this process" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_help_names_the_benchmark_options() -> None:
    def help_of(*args: str) -> str:
        result = CliRunner().invoke(cli, [*args, "--help"])
        assert result.exit_code == 0, result.output
        return result.output

    text = help_of("protect")
    assert text.count("Benchmark option") == 2
    for word in ("--fail-at", "--interval", "s2", "stdin"):
        assert word in text
    assert "--serve" in help_of("backup")
    assert "status" in help_of("replication")
    assert "remove" in help_of("replication")
    assert "Exits non-zero when no reply came" in help_of("kv")
    assert "Set KEY to VALUE" in help_of("kv", "put")  # without --server, as the error suggests


def test_the_kv_client_without_a_server_says_so_in_one_sentence() -> None:
    assert_one_sentence(run(["kv", "get", "x"]), "--server HOST:PORT")
