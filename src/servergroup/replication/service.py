"""What a protected service is: the contract between a Python service and the framework.

Theory of operation. A protected service keeps **all** of its state in what
the framework hands it, so that a checkpoint of those things is a
checkpoint of the service:

- regions (`ServiceSpace.region(name, size)`), tracked memory, and
- at most one replicated disk (`ServiceSpace.disk(size)`).

It is a class (named `MODULE:CLASS` on the command line) whose constructor
takes a `ServiceSpace` and allocates its regions and disk, always the same
names and sizes: the primary and the backup both construct it, and the
backup refuses a primary whose layout differs. After construction the
framework owns the memory: on the backup it overwrites the regions with
each complete checkpoint; on takeover it goes on serving with the same
object.

The service answers requests: `handle(request) -> reply`, one line of bytes
in (without its newline), one line out. The framework owns the listening
socket, reads request lines, calls `handle` between epochs' suspends, and
holds every reply in the output buffer until the epoch that produced it is
committed. `handle` must change state only through regions and the disk
(a Python attribute set in `handle` is lost on failover) and must not
block: it runs on the event loop. A request line over the front's limit
(64 KiB) never reaches `handle`: a service may define `too_long(limit) ->
reply` to answer it (the client is served on), else that client is closed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, cast

from servergroup.common.errors import UsageError
from servergroup.replication.disk import ReplicatedDisk
from servergroup.replication.regions import Region, RegionSet


class ServiceSpace:
    """The regions and disk a service may allocate, owned by the framework."""

    def __init__(self, regions: RegionSet, disk_path: Path | None = None) -> None:
        self.regions = regions
        self._disk_path = disk_path
        self._sealed = False
        self.replicated_disk: ReplicatedDisk | None = None

    def seal(self) -> None:
        """The service is constructed: no disk may be allocated from now on."""
        self._sealed = True

    def region(self, name: str, size: int) -> Region:
        """A new zero-filled region (size rounded up to whole pages)."""
        return self.regions.allocate(name, size)

    def disk(self, size: int) -> ReplicatedDisk:
        """The service's replicated disk of `size` bytes (one per service)."""
        if self._sealed:
            raise UsageError("a service allocates its replicated disk in its constructor.")
        if self.replicated_disk is not None:
            raise UsageError("a service has at most one replicated disk.")
        if self._disk_path is None:
            raise UsageError("this framework was started without a place for a disk.")
        self.replicated_disk = ReplicatedDisk(self._disk_path, size)
        return self.replicated_disk

    @property
    def disk_size(self) -> int:
        return 0 if self.replicated_disk is None else self.replicated_disk.size


class ProtectedService(Protocol):
    """A service whose state lives in its `ServiceSpace`."""

    def handle(self, request: bytes) -> bytes:
        """The reply to one request line (both without newlines)."""
        ...


ServiceFactory = Callable[[ServiceSpace], ProtectedService]

#: Short names for the services shipped with servergroup.
EXAMPLES = {
    "counter": "servergroup.replication.examples.counter:CounterService",
    "kv": "servergroup.replication.examples.kv:KvService",
}


def load_service(spec: str) -> tuple[str, ServiceFactory]:
    """The class named by `spec` (`MODULE:CLASS`, or `kv` / `counter`) and its full name."""
    full = EXAMPLES.get(spec, spec)
    module_name, _, class_name = full.partition(":")
    if not module_name or not class_name:
        raise UsageError(f"{spec!r} is not MODULE:CLASS (nor one of {', '.join(EXAMPLES)}).")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from None
    factory = getattr(module, class_name, None)
    if not callable(factory) or not callable(getattr(factory, "handle", None)):
        raise UsageError(f"{full!r} is not a class with a handle(request) method.")
    return full, cast(ServiceFactory, factory)
