"""How busy a server's vCPUs are, as the host sees it: the CPU time of their host threads.

Theory of operation. The host cannot see inside a guest, but it can see
the threads that carry the guest's vCPUs (`Hypervisor.vcpu_threads`: one
QEMU thread per vCPU; for a lab server, every thread of the server, for
every vCPU) and how much CPU time each has used: fields 14 and 15 (user and
system time, in clock ticks of `os.sysconf("SC_CLK_TCK")`) of
`/proc/<tid>/task/<tid>/stat` (`common.process.thread_times`).

A `CpuReading` is one look at the threads of a set of online vCPUs at one
moment of the monotonic clock. The CPU time between two readings is the
sum, over the threads present in both, of what each used in between. The
threads of the online vCPUs are taken once each, however many vCPUs report
them (a lab server's processes carry all its vCPUs), and a thread is known
by its id *and* its start time, so a thread id reused by a newer thread is
not taken for the old one. A thread that appears between two readings
counts from the second; one that ends between them loses its last part: for
QEMU, whose vCPU threads live as long as the VM, the count is exact; for a
lab server, a process shorter than the reading interval is missed.

`BusyMeter` reads one server again and again and turns each pair of
readings into a `policy.BusySample` (CPU seconds of the online vCPUs over
the interval, and their count), which the policy averages:
busy = CPU time / (wall time x online vCPUs). When the online set changes
between two readings the pair measures nothing (None): the next sample
starts from the new set.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from servergroup.common.clock import Clock, SystemClock
from servergroup.common.process import thread_times
from servergroup.scaling.policy import BusySample
from servergroup.servers.drivers.hypervisor import Hypervisor
from servergroup.servers.model import ServerSpec

#: Clock ticks per second of the CPU times in /proc (USER_HZ, 100 on Linux).
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")

#: A thread, told apart from a later one with the same id: (thread id, start time in ticks).
ThreadKey = tuple[int, int]


def read_threads(tids: Iterable[int]) -> dict[ThreadKey, int]:
    """The CPU ticks used so far by each of the threads `tids` that still runs."""
    out: dict[ThreadKey, int] = {}
    for tid in set(tids):
        times = thread_times(tid)
        if times is not None:
            out[(times.tid, times.start_time)] = times.cpu_ticks
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuReading:
    """The CPU ticks of the threads of vCPUs `vcpus`, read at `at` (monotonic seconds)."""

    at: float
    vcpus: tuple[int, ...]
    ticks: Mapping[ThreadKey, int]


def cpu_seconds_between(before: CpuReading, after: CpuReading) -> float:
    """CPU seconds the threads present in both readings used between them."""
    used = 0
    for key, ticks in after.ticks.items():
        old = before.ticks.get(key)
        if old is not None and ticks >= old:
            used += ticks - old
    return used / CLOCK_TICKS


async def read_server(
    hypervisor: Hypervisor, spec: ServerSpec, online: Collection[int], clock: Clock
) -> CpuReading:
    """One reading of the threads of the server's online vCPUs `online`.

    DriverError (from the hypervisor) when the server does not run here.
    """
    vcpus = await hypervisor.vcpu_threads(spec)
    wanted = set(online)
    tids = {tid for vcpu in vcpus if vcpu.index in wanted for tid in vcpu.thread_ids}
    at = clock.monotonic()
    return CpuReading(at=at, vcpus=tuple(sorted(wanted)), ticks=read_threads(tids))


class BusyMeter:
    """Measures one server's online vCPUs, one interval per `measure` call."""

    def __init__(self, hypervisor: Hypervisor, spec: ServerSpec, *, clock: Clock | None = None):
        self._hypervisor = hypervisor
        self._spec = spec
        self._clock = clock or SystemClock()
        self._last: CpuReading | None = None

    def reset(self) -> None:
        """Forget the last reading: the next `measure` starts afresh."""
        self._last = None

    async def measure(self, online: Collection[int]) -> BusySample | None:
        """The sample since the last call, for vCPUs `online`; None the first time, after a
        reset, and when the online set changed since the last call.

        DriverError when the server does not run here (the meter then starts afresh).
        """
        if not online:
            raise ValueError("a server has at least one online vCPU")
        try:
            reading = await read_server(self._hypervisor, self._spec, online, self._clock)
        except Exception:
            self._last = None
            raise
        last, self._last = self._last, reading
        if last is None or last.vcpus != reading.vcpus or reading.at <= last.at:
            return None
        return BusySample(
            begin_at=last.at,
            end_at=reading.at,
            cpu_seconds=cpu_seconds_between(last, reading),
            vcpus=len(reading.vcpus),
        )


__all__ = [
    "CLOCK_TICKS",
    "BusyMeter",
    "CpuReading",
    "ThreadKey",
    "cpu_seconds_between",
    "read_server",
    "read_threads",
]
