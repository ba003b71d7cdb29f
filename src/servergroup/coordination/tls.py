"""TLS to etcd: `https://` endpoints, a CA to trust, a client certificate to show.

Theory of operation
-------------------
etcd members run with `--cert-file/--key-file` (their server certificate),
and usually `--client-cert-auth --trusted-ca-file` (every client must show
a certificate that CA signed). On our side `[coordination]` names the CA
(`ca_file`), our certificate and key (`cert_file`, `key_file`); `config`
has already checked that the endpoints all use one scheme, that the paths
are absolute and that certificate and key come together.

- `load_credentials(config)` reads the three files once, when a coordinator
  is built (`connect`), so an unreadable file is one `ConfigError` sentence
  at start rather than a retry loop later; a renewed certificate is picked up
  by starting the process again. It returns gRPC channel credentials, which
  check the member's certificate against the CA and its name (an IP address
  in the URL must be one of the certificate's IP subject names).
- `TlsClient` is aetcd's `Client` dialling a secure channel. aetcd 1.0 only
  dials plaintext (its `connect` calls `insecure_channel`); `TlsClient`
  replaces `connect` with one that opens `secure_channel` with the same
  options and sets up the same stubs and watcher, which is everything that
  method does when no user name is given (we never use etcd's password
  authentication: certificates identify clients). It leans on aetcd's
  attribute names, so a test with a real TLS etcd runs it
  (tests/integration/coordination/test_tls.py).
"""

from __future__ import annotations

from pathlib import Path

import aetcd
import grpc
from aetcd import rpc, watcher

from servergroup.common.errors import ConfigError
from servergroup.config import CoordinationConfig


def _read(name: str, path: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"coordination {name} {path} cannot be read ({exc.strerror or exc})."
        ) from None


def load_credentials(config: CoordinationConfig) -> grpc.ChannelCredentials:
    """gRPC credentials for `config`'s CA, client certificate and key (files read now)."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read("ca_file", config.ca_file),
        private_key=_read("key_file", config.key_file),
        certificate_chain=_read("cert_file", config.cert_file),
    )


class TlsClient(aetcd.Client):  # type: ignore[misc]  # aetcd has no type hints
    """aetcd's client over a TLS channel (see the module docstring)."""

    _is_connecting: bool  # aetcd's: set while one task dials

    def __init__(
        self, *, host: str, port: int, credentials: grpc.ChannelCredentials, **kwargs: object
    ) -> None:
        super().__init__(host=host, port=port, **kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:  # another task dials: wait for it, as aetcd does
            await aetcd.Client.connect(self)
            return
        self._is_connecting = True
        try:
            self.channel = grpc.aio.secure_channel(
                f"{self._host}:{self._port}", self._credentials, options=self._options.items()
            )
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = watcher.Watcher(
                rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False


__all__ = ["TlsClient", "load_credentials"]
