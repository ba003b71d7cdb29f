"""`servergroup etcd certs`: a CA kept across runs, member and client certificates, mistakes."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from servergroup.cli.main import cli
from servergroup.common.errors import UsageError
from servergroup.coordination.certs import make_certs


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_members_and_clients_are_signed_by_one_kept_ca(tmp_path: Path) -> None:
    first = make_certs(tmp_path, {"m1": ["10.0.0.1", "m1.example"]}, ("sg",))
    assert first.ca_created
    ca = load(first.ca_file)
    member = load(tmp_path / "m1.crt")
    member.verify_directly_issued_by(ca)
    names = member.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["m1", "m1.example"]
    usage = member.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    client = load(tmp_path / "sg.crt")
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    for key in ("ca.key", "m1.key", "sg.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600
    # A second run keeps the CA: a member added later trusts and is trusted by the first.
    second = make_certs(tmp_path, {"m2": ["10.0.0.2"]}, ())
    assert not second.ca_created
    assert load(second.ca_file) == ca
    load(tmp_path / "m2.crt").verify_directly_issued_by(ca)


@pytest.mark.parametrize(
    ("members", "clients", "complaint"),
    [
        ({"ca": ["10.0.0.1"]}, (), "certificate name 'ca'"),
        ({"a/b": ["10.0.0.1"]}, (), "certificate name 'a/b'"),
        ({"m1": ["10.0.0.1"]}, ("m1",), "a member and a client"),
    ],
)
def test_bad_names_are_refused(
    tmp_path: Path, members: dict[str, list[str]], clients: tuple[str, ...], complaint: str
) -> None:
    with pytest.raises(UsageError, match=complaint):
        make_certs(tmp_path, members, clients)


def test_the_command_writes_and_names_the_files(tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(
        cli, ["etcd", "certs", str(tmp_path), "--member", "m1=10.0.0.1,m1.example"]
    )
    assert done.exit_code == 0, done.output
    assert done.output.splitlines() == [
        f"CA: {tmp_path / 'ca.crt'} (made)",
        f"member m1: {tmp_path / 'm1.crt'} {tmp_path / 'm1.key'}",
        f"client client: {tmp_path / 'client.crt'} {tmp_path / 'client.key'}",
    ]
    bad = runner.invoke(cli, ["etcd", "certs", str(tmp_path), "--member", "m1"])
    assert bad.exit_code == 2
    assert "--member 'm1' must be NAME=ADDR[,ADDR...]" in bad.output
