"""A test certificate authority for an etcd cluster: `servergroup etcd certs DIR`.

Theory of operation
-------------------
An etcd cluster with TLS needs, per member, a certificate that other members
and clients accept for the member's addresses (its *server* certificate) and
that the member shows when it dials its peers (its *peer* certificate), and,
per client, a certificate the members accept (`--client-cert-auth`). All of
them are signed by one CA that every party trusts.

`make_certs(directory, members, clients)` writes, with the `cryptography`
library (ECDSA P-256 keys, SHA-256 signatures):

- `ca.crt`, `ca.key`: the CA, made on the first call and reused after, so
  members and clients can be added later and still trust each other;
- `<member>.crt`, `<member>.key` for each member: subject alternative names
  are the member's name and the addresses given (IP addresses as IP names,
  the rest as DNS names), extended key usage both server and client
  authentication, so one pair serves as the member's server certificate and
  as its peer certificate;
- `<client>.crt`, `<client>.key` for each client: client authentication only.

Private keys are written 0600 (the CA's too). Existing member and client
files are replaced: running it again re-issues them. It is meant for labs and
tests; a production cluster's certificates come from the operator's own PKI.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from servergroup.common.errors import UsageError

#: How long the certificates are valid.
DEFAULT_DAYS = 365
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedCerts:
    """What `make_certs` wrote: the CA, and each member's and client's (cert, key) paths."""

    ca_file: Path
    ca_created: bool
    members: Mapping[str, tuple[Path, Path]]
    clients: Mapping[str, tuple[Path, Path]]


def _check_name(name: str) -> None:
    if not _NAME.match(name) or name == "ca":
        raise UsageError(
            f"certificate name {name!r} must be 1-63 letters, digits, dots, dashes or "
            "underscores (and not 'ca')."
        )


def _subject_names(name: str, addresses: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(name)]
    for text in addresses:
        text = text.strip()
        if not text:
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError:
            names.append(x509.DNSName(text))
    return names


def _write(path: Path, data: bytes, *, private: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ca(directory: Path, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, bool]:
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise UsageError(f"the CA in {directory} cannot be read: {exc}.") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise UsageError(f"the CA key {key_path} is not an ECDSA key made by this command.")
        return cert, key, False
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "servergroup etcd test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_bytes(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert, key, True


def _issue(
    directory: Path,
    name: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    addresses: Sequence[str],
    server: bool,
    days: int,
) -> tuple[Path, Path]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_subject_names(name, addresses)), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    _write(key_path, _key_bytes(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert_path, key_path


def make_certs(
    directory: Path,
    members: Mapping[str, Sequence[str]],
    clients: Sequence[str] = ("client",),
    *,
    days: int = DEFAULT_DAYS,
) -> IssuedCerts:
    """Write a CA (kept if there is one) and certificates for `members` and `clients`.

    `members` maps a member's name to the addresses (IPs or DNS names) it is
    reached at; `clients` are the names of client certificates.
    """
    if not 1 <= days <= 36500:
        raise UsageError(f"certificate validity {days} days must be from 1 to 36500.")
    for name in (*members, *clients):
        _check_name(name)
    if set(members) & set(clients):
        raise UsageError("a member and a client cannot have the same certificate name.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {directory}: {exc.strerror or exc}.") from None
    ca_cert, ca_key, created = _ca(directory, days)
    issued = {
        name: _issue(directory, name, (ca_cert, ca_key), addresses=addrs, server=True, days=days)
        for name, addrs in members.items()
    }
    issued_clients = {
        name: _issue(directory, name, (ca_cert, ca_key), addresses=(), server=False, days=days)
        for name in clients
    }
    return IssuedCerts(
        ca_file=directory / "ca.crt",
        ca_created=created,
        members=issued,
        clients=issued_clients,
    )


__all__ = ["DEFAULT_DAYS", "IssuedCerts", "make_certs"]
