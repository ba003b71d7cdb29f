"""The `Hypervisor` protocol: a server's vCPUs as the host sees them, and pinning them.

Theory of operation. A server has `spec.vcpus` virtual CPUs, numbered from
0. On the host each vCPU is carried by one or more host threads, and may run
only on a set of host CPUs (its *affinity*). The host can see each vCPU's
threads and affinity (`vcpu_threads`) and confine a vCPU to a set of host
CPUs (`pin_vcpu`); the vCPU scaling capability frees a host CPU that way
when the guest takes a vCPU offline. Whether a vCPU is online *inside* the
guest is the guest's business (its sysfs, read by the guest's scale agent):
the host cannot see it.

What a vCPU is depends on the driver (each says so in its docstring):

- qemu: a vCPU is one QEMU thread (QMP `query-cpus-fast`); pinning sets that
  thread's CPU affinity, and nothing else of the VM.
- lab: a lab server has no virtual hardware. Its vCPUs are slots the driver
  keeps, each with an affinity; the server's processes may run on the union
  of those affinities (the server's cpuset cgroup), and every process of the
  server counts as a thread of every vCPU.

Either way, after `pin_vcpu(spec, v, cpus)` vCPU `v` reports `cpus` as its
affinity, and every thread reported for the server may run only on CPUs of
the union of all its vCPUs' affinities: the contract suite checks both with
`os.sched_getaffinity` on real servers.

Both drivers (`LabDriver`, `QemuDriver`) implement it; a driver is reached
through `servergroup.servers.drivers.registry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from servergroup.servers.model import ServerSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class VcpuThread:
    """One vCPU of a running server: the host threads that carry it, and where they may run."""

    index: int  # the vCPU's number in the guest (0 .. vcpus-1)
    thread_ids: tuple[int, ...]  # host thread (task) ids
    affinity: tuple[int, ...]  # the host CPUs this vCPU may run on, ascending


class Hypervisor(Protocol):
    """The vCPUs of the servers this host runs (see the module docstring)."""

    async def vcpu_threads(self, spec: ServerSpec) -> tuple[VcpuThread, ...]:
        """Each vCPU of the running server, by index; DriverError when it does not run here."""
        ...

    async def pin_vcpu(self, spec: ServerSpec, vcpu: int, cpus: Sequence[int]) -> VcpuThread:
        """Let vCPU `vcpu` run only on host CPUs `cpus` (non-empty); DriverError with why not."""
        ...


__all__ = ["Hypervisor", "VcpuThread"]
