"""A node's local ledger of the service instances it runs, for its supervisor.

Theory of operation. The node role (a component of `servergroup host`)
writes the ledger *before* each agent `start` or `promote` and after each
`stop` or `demote` finished, atomically (a temporary file, fsync, rename,
fsync of the directory), so that at every moment the file lists at least
every instance whose agent may be running on this node, with the token it
was started under, its resolved definition and the OCF root it was run
from, plus the host's session lease.

The supervisor (the parent that started the host daemon, or systemd's
`ExecStopPost=`) reads it when the daemon has died for certain, stops what
it lists with the same agents, and then revokes the lease so that the
ownership keys go at once and failover need not wait for the lease to
expire (docs/design/services.md, "Supervision"). A ledger that cannot be
read is reported in one sentence and nothing is revoked: the lease then
expires on its own, which is slow but safe.

The codec is pure (`encode_ledger` / `decode_ledger`); `write_ledger`,
`read_ledger` and `clear_ledger` are the file operations.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servergroup.common.errors import RemoteError
from servergroup.services.model import (
    Service,
    StoredDefinitionError,
    decode_service,
    encode_service,
)
from servergroup.services.placement import InstanceId


class LedgerError(RemoteError):
    """A ledger file is unreadable or malformed (one sentence)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerEntry:
    """An instance this node may be running: what its supervisor needs to stop it."""

    instance: InstanceId
    token: int
    service: Service  # as resolved when it was started
    master: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Ledger:
    node: str
    lease: int  # the host's session lease (0: none yet)
    pid: int  # the host daemon that wrote it
    ocf_root: str
    entries: tuple[LedgerEntry, ...] = ()

    def with_entry(self, entry: LedgerEntry) -> Ledger:
        """This ledger with `entry` added, or replacing the one of the same instance."""
        kept = tuple(e for e in self.entries if e.instance != entry.instance)
        return Ledger(
            node=self.node,
            lease=self.lease,
            pid=self.pid,
            ocf_root=self.ocf_root,
            entries=tuple(sorted((*kept, entry), key=lambda e: e.instance)),
        )

    def without(self, instance: InstanceId) -> Ledger:
        """This ledger without `instance`."""
        return Ledger(
            node=self.node,
            lease=self.lease,
            pid=self.pid,
            ocf_root=self.ocf_root,
            entries=tuple(e for e in self.entries if e.instance != instance),
        )


def ledger_path(state_dir: Path, node: str) -> Path:
    """Where the host daemon of `node` keeps its ledger."""
    return state_dir / "services" / f"{node}.ledger"


def encode_ledger(ledger: Ledger) -> bytes:
    return json.dumps(
        {
            "node": ledger.node,
            "lease": ledger.lease,
            "pid": ledger.pid,
            "ocf_root": ledger.ocf_root,
            "entries": [
                {
                    "service": e.instance.service,
                    "index": e.instance.index,
                    "token": e.token,
                    "master": e.master,
                    "definition": json.loads(encode_service(e.service)),
                }
                for e in ledger.entries
            ],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def _field(obj: dict[str, Any], key: str, kind: type) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise LedgerError(f"the ledger has no {kind.__name__} {key!r}")
    return value


def decode_ledger(raw: bytes) -> Ledger:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise LedgerError("the ledger is not JSON") from None
    if not isinstance(obj, dict):
        raise LedgerError("the ledger is not a JSON object")
    entries_raw = obj.get("entries")
    if not isinstance(entries_raw, list):
        raise LedgerError("the ledger has no list 'entries'")
    entries = []
    for raw_entry in entries_raw:
        if not isinstance(raw_entry, dict):
            raise LedgerError("the ledger has an entry that is not an object")
        try:
            service = decode_service(json.dumps(raw_entry.get("definition")).encode())
        except StoredDefinitionError as exc:
            raise LedgerError(f"the ledger has a bad definition: {exc}") from None
        entries.append(
            LedgerEntry(
                instance=InstanceId(
                    service=_field(raw_entry, "service", str), index=_field(raw_entry, "index", int)
                ),
                token=_field(raw_entry, "token", int),
                service=service,
                master=_field(raw_entry, "master", bool),
            )
        )
    return Ledger(
        node=_field(obj, "node", str),
        lease=_field(obj, "lease", int),
        pid=_field(obj, "pid", int),
        ocf_root=_field(obj, "ocf_root", str),
        entries=tuple(entries),
    )


def write_ledger(path: Path, ledger: Ledger) -> None:
    """Replace the ledger at `path` atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(encode_ledger(ledger))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_ledger(path: Path) -> Ledger | None:
    """The ledger at `path`; None when there is none; LedgerError when it is unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LedgerError(f"cannot read the ledger {path}: {exc.strerror}") from None
    return decode_ledger(raw)


def clear_ledger(path: Path) -> None:
    """Remove the ledger (the daemon stopped every instance and ended cleanly)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


__all__ = [
    "Ledger",
    "LedgerEntry",
    "LedgerError",
    "clear_ledger",
    "decode_ledger",
    "encode_ledger",
    "ledger_path",
    "read_ledger",
    "write_ledger",
]
