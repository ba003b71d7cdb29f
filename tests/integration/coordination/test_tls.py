"""etcd over TLS with client certificates: a real member, certificates from `etcd certs`.

One member on loopback serves `https://` and demands a client certificate
signed by the CA (`--client-cert-auth`), as every member of the multi-host
deployment does (tests/integration/test_deployment.py). A client with the
CA and a certificate works (keys, leases, watches); one without a
certificate, or trusting another CA, is refused and says so in one sentence;
the CLI reads the same settings from a config file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from servergroup.common.errors import ConfigError
from servergroup.config import CoordinationConfig, Endpoint
from servergroup.coordination import StoreUnavailable, connect
from servergroup.coordination.certs import make_certs
from servergroup.coordination.etcd_process import (
    EtcdMemberSpec,
    EtcdProcess,
    MemberTls,
    free_ports,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def tls_member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EtcdProcess, Path]]:
    base = tmp_path_factory.mktemp("tls")
    certs = base / "certs"
    make_certs(certs, {"m1": ["127.0.0.1"]}, ("client",))
    client_port, peer_port = free_ports(2)
    spec = EtcdMemberSpec(
        name="m1",
        data_dir=base / "m1",
        client_port=client_port,
        peer_port=peer_port,
        tls=MemberTls(
            ca_file=certs / "ca.crt", cert_file=certs / "m1.crt", key_file=certs / "m1.key"
        ),
    )
    member = EtcdProcess(spec, log_path=base / "m1.log")
    member.start()
    try:
        member.wait_healthy(20.0)
        yield member, certs
    finally:
        member.kill()


def client_config(endpoint: Endpoint, certs: Path, **changes: object) -> CoordinationConfig:
    config = CoordinationConfig(
        endpoints=(endpoint,),
        ca_file=str(certs / "ca.crt"),
        cert_file=str(certs / "client.crt"),
        key_file=str(certs / "client.key"),
        operation_timeout=2.0,
    )
    return dataclasses.replace(config, **changes).validate()  # type: ignore[arg-type]


async def test_a_client_with_a_certificate_uses_the_store(
    tls_member: tuple[EtcdProcess, Path], etcd_prefix: str
) -> None:
    member, certs = tls_member
    assert str(member.endpoint).startswith("https://127.0.0.1:")
    config = client_config(member.endpoint, certs)
    async with connect(config, prefix=etcd_prefix) as c:
        lease = await c.grant(2)
        revision = await c.put("k/a", b"1", lease=lease.id)
        kv = await c.get("k/a")
        assert kv is not None
        assert kv.value == b"1"
        watch = await c.watch("k/", start_revision=revision)
        try:
            event = await asyncio.wait_for(anext(aiter(watch)), 10)
            assert event.key == "k/a"
        finally:
            await watch.close()
        await c.revoke(lease.id)
        assert await c.get("k/a") is None


@pytest.mark.parametrize("fault", ["no client certificate", "another CA"])
async def test_a_client_the_member_cannot_trust_is_refused(
    tls_member: tuple[EtcdProcess, Path], tmp_path: Path, fault: str, etcd_prefix: str
) -> None:
    member, certs = tls_member
    if fault == "no client certificate":
        config = client_config(member.endpoint, certs, cert_file="", key_file="")
    else:
        other = make_certs(tmp_path / "other", {}, ("client",))
        config = client_config(
            member.endpoint,
            tmp_path / "other",
            ca_file=str(other.ca_file),
        )
    async with connect(config, prefix=etcd_prefix) as c:
        with pytest.raises(StoreUnavailable) as caught:
            await c.get("k")
    message = str(caught.value)
    assert message.startswith(f"etcd at {member.endpoint} did not answer")
    assert message.endswith("check coordination ca_file, cert_file and key_file.")
    assert "\n" not in message


def test_unreadable_certificate_files_are_one_sentence(tmp_path: Path) -> None:
    config = CoordinationConfig(
        endpoints=(Endpoint.parse("https://127.0.0.1:1"),),
        ca_file=str(tmp_path / "missing.crt"),
    ).validate()
    with pytest.raises(ConfigError, match=r"coordination ca_file .*missing.crt cannot be read"):
        connect(config)


def test_the_cli_reads_tls_settings_from_the_config_file(
    tls_member: tuple[EtcdProcess, Path], tmp_path: Path, etcd_prefix: str
) -> None:
    member, certs = tls_member
    config = tmp_path / "servergroup.toml"
    config.write_text(
        "[coordination]\n"
        f'endpoints = ["{member.endpoint}"]\n'
        f'prefix = "{etcd_prefix}"\n'
        "operation_timeout = 2.0\n"
        f'ca_file = "{certs / "ca.crt"}"\n'
        f'cert_file = "{certs / "client.crt"}"\n'
        f'key_file = "{certs / "client.key"}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVERGROUP_")}
    argv = [sys.executable, "-m", "servergroup", "--config", str(config)]
    done = subprocess.run(
        [*argv, "host", "list", "--json"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    # The same file without the certificate: refused, in one sentence.
    config.write_text(config.read_text().replace("cert_file", "#").replace("key_file", "#"))
    done = subprocess.run(
        [*argv, "host", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert done.stderr.startswith(f"servergroup: etcd at {member.endpoint} did not answer")
    assert "check coordination ca_file, cert_file and key_file" in done.stderr
    assert done.stderr.count("\n") == 1


def test_plain_http_off_loopback_is_refused_unless_insecure() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVERGROUP_")}
    argv = [sys.executable, "-m", "servergroup", "--endpoints", "http://10.255.255.1:2379"]
    done = subprocess.run(
        [*argv, "host", "list"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "plain http on a non-loopback address" in done.stderr
    assert "insecure = true" in done.stderr
    assert done.stderr.count("\n") == 1
