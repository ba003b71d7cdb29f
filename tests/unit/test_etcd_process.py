"""The pure parts of running etcd: command lines, specs, ports, reading its log."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from servergroup.common.errors import MissingDependency
from servergroup.config import Endpoint
from servergroup.coordination.etcd_process import (
    Compaction,
    CompactionMode,
    EtcdMemberSpec,
    cluster_specs,
    etcd_argv,
    find_etcd_binary,
    free_ports,
    last_log_line,
    port_in_use,
    summarize_log_line,
)


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_single_member_argv_is_tuned_and_on_its_own_ports() -> None:
    spec = EtcdMemberSpec(name="one", data_dir=Path("/d/one"), client_port=2001, peer_port=2002)
    argv = etcd_argv(spec, "/usr/bin/etcd")
    assert argv[0] == "/usr/bin/etcd"
    assert _flag(argv, "--name") == "one"
    assert _flag(argv, "--data-dir") == "/d/one"
    assert _flag(argv, "--listen-client-urls") == "http://127.0.0.1:2001"
    assert _flag(argv, "--advertise-client-urls") == "http://127.0.0.1:2001"
    assert _flag(argv, "--listen-peer-urls") == "http://127.0.0.1:2002"
    assert _flag(argv, "--initial-cluster") == "one=http://127.0.0.1:2002"
    assert _flag(argv, "--heartbeat-interval") == "50"
    assert _flag(argv, "--election-timeout") == "500"
    assert spec.endpoint == Endpoint(host="127.0.0.1", port=2001)


def test_untuned_argv_keeps_etcd_default_timings() -> None:
    spec = EtcdMemberSpec(name="one", data_dir=Path("/d"), client_port=1, peer_port=2, tuned=False)
    argv = etcd_argv(spec)
    assert argv[0] == "etcd"
    assert "--heartbeat-interval" not in argv
    assert "--election-timeout" not in argv


def test_compaction_and_quota_only_when_asked() -> None:
    spec = EtcdMemberSpec(name="one", data_dir=Path("/d"), client_port=1, peer_port=2)
    argv = etcd_argv(spec)
    assert "--auto-compaction-mode" not in argv
    assert "--quota-backend-bytes" not in argv
    bounded = etcd_argv(
        replace(
            spec,
            compaction=Compaction(mode=CompactionMode.REVISION, retention="1000"),
            quota_backend_bytes=1 << 20,
        )
    )
    assert _flag(bounded, "--auto-compaction-mode") == "revision"
    assert _flag(bounded, "--auto-compaction-retention") == "1000"
    assert _flag(bounded, "--quota-backend-bytes") == str(1 << 20)


def test_cluster_specs_share_one_initial_cluster_on_distinct_ports(tmp_path: Path) -> None:
    specs = cluster_specs(tmp_path, 3, ports=range(3001, 3007))
    assert [s.name for s in specs] == ["etcd0", "etcd1", "etcd2"]
    assert [(s.client_port, s.peer_port) for s in specs] == [
        (3001, 3002),
        (3003, 3004),
        (3005, 3006),
    ]
    expected = "etcd0=http://127.0.0.1:3002,etcd1=http://127.0.0.1:3004,etcd2=http://127.0.0.1:3006"
    for spec in specs:
        assert _flag(etcd_argv(spec), "--initial-cluster") == expected
        assert spec.data_dir == tmp_path / spec.name
    assert len({s.cluster_token for s in specs}) == 1


def test_cluster_specs_picks_free_distinct_ports(tmp_path: Path) -> None:
    specs = cluster_specs(tmp_path, 3)
    ports = [p for s in specs for p in (s.client_port, s.peer_port)]
    assert len(set(ports)) == 6


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(4)
    assert len(set(ports)) == 4
    for port in ports:
        assert not port_in_use("127.0.0.1", port)


def test_port_in_use_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
    assert not port_in_use("127.0.0.1", port)


def test_missing_binary_names_the_debian_package() -> None:
    with pytest.raises(MissingDependency, match=r"etcd-server"):
        find_etcd_binary("etcd-that-does-not-exist")


FATAL = json.dumps(
    {
        "level": "fatal",
        "msg": "failed to create snapshot directory",
        "error": "mkdir /x/member: not a directory",
        "stacktrace": "go.etcd.io/...",
    }
)


def test_summarize_log_line_reads_zap_and_capnslog() -> None:
    assert summarize_log_line(FATAL) == (
        "failed to create snapshot directory: mkdir /x/member: not a directory"
    )
    assert summarize_log_line('{"level":"info","msg":"ready"}') == "ready"
    assert summarize_log_line("2026-11-21 14:01:39.271200 C | etcdmain: boom") == "etcdmain: boom"
    assert summarize_log_line("{not json") == "{not json"


def test_last_log_line_prefers_the_fatal_entry(tmp_path: Path) -> None:
    log = tmp_path / "etcd.log"
    log.write_text(
        '{"level":"info","msg":"starting"}\n' + FATAL + "\n" + '{"level":"info","msg":"closed"}\n'
    )
    assert last_log_line(log).startswith("failed to create snapshot directory: mkdir")


def test_last_log_line_finds_a_go_panic(tmp_path: Path) -> None:
    log = tmp_path / "etcd.log"
    log.write_text(
        '{"level":"info","msg":"x"}\npanic: assertion failed\n\ngoroutine 1:\n\tmain.go\n'
    )
    assert last_log_line(log) == "panic: assertion failed"


def test_last_log_line_falls_back_to_the_last_line(tmp_path: Path) -> None:
    log = tmp_path / "etcd.log"
    log.write_text('{"level":"info","msg":"first"}\n{"level":"warn","msg":"second"}\n\n')
    assert last_log_line(log) == "second"
    log.write_text("")
    assert last_log_line(log) == ""
    assert last_log_line(tmp_path / "missing.log") == ""
