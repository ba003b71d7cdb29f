"""A host's physical-CPU pool: which host CPU each online vCPU of its servers has (pure).

Theory of operation. A host gives its servers a *pool* of host CPUs (the
`scaling.cpu_pool` setting; by default every CPU the host daemon may run
on). Each **online** vCPU of a server running here is either *placed* on a
CPU of the pool that no other vCPU has (its thread is pinned there), or
*shared*, when the pool had no free CPU for it as the server arrived (it
then may run on every CPU of the pool, as an unpinned VM's vCPU would). An
**offline** vCPU holds no CPU: its thread is pinned onto vCPU 0's CPU(s)
(spec section 5: "an offlined vCPU is re-pinned to vCPU 0's physical CPU so
that its own physical CPU is freed"). A CPU of the pool is *free* when no
vCPU is placed on it.

Invariants (the property tests check them after any sequence of calls):

- a CPU of the pool has at most one vCPU placed on it;
- `used` and `free` are disjoint and together are the pool;
- a server's placed vCPUs are online vCPUs of that server.

When things happen:

- a server that takes part in the pool (the scaler says when) starts
  running here (created, started, rebooted, moved or rebuilt here), or is
  scaled for the first time: `adopt` places its online vCPUs, keeping a CPU a vCPU is
  already pinned to when that CPU is in the pool and free and the pool has
  room for all of them (so a host daemon restart changes no pin), else the
  lowest free CPU in vCPU order, else shared;
- a server stops running here (stopped, deleted, moved away): `release`
  frees its CPUs;
- scale down: `give_back(server, vcpu)` frees the vCPU's CPU (a shared vCPU
  frees nothing);
- scale up: `take(server, vcpu)` places the vCPU on the lowest free CPU, or
  raises `NoFreeCpu`, changing nothing.

Every method returns a new `Pool`; nothing here pins anything: the scaler
carries out `affinity()` through the `Hypervisor`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from servergroup.common.errors import LocalError


class NoFreeCpu(LocalError):
    """The pool has no free CPU for a vCPU coming online."""


def _frozen(placements: Mapping[str, Mapping[int, int]]) -> Mapping[str, Mapping[int, int]]:
    return MappingProxyType(
        {s: MappingProxyType(dict(sorted(m.items()))) for s, m in sorted(placements.items()) if m}
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Pool:
    """The CPUs of a host's pool and the vCPUs placed on them (immutable)."""

    cpus: tuple[int, ...]
    #: server -> {vCPU: host CPU}, for the placed online vCPUs only.
    placements: Mapping[str, Mapping[int, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, cpus: Iterable[int]) -> Pool:
        """An empty pool of `cpus`."""
        return cls(cpus=tuple(sorted(set(cpus))), placements=MappingProxyType({}))

    # -- reading -------------------------------------------------------------------

    @property
    def used(self) -> tuple[int, ...]:
        """The CPUs a vCPU is placed on, ascending."""
        return tuple(sorted(c for m in self.placements.values() for c in m.values()))

    @property
    def free(self) -> tuple[int, ...]:
        """The CPUs of the pool no vCPU is placed on, ascending."""
        used = set(self.used)
        return tuple(c for c in self.cpus if c not in used)

    def placed(self, server: str) -> Mapping[int, int]:
        """The server's placed vCPUs: {vCPU: host CPU}."""
        return self.placements.get(server, MappingProxyType({}))

    def affinity(self, server: str, vcpu: int, online: Iterable[int]) -> tuple[int, ...]:
        """The host CPUs vCPU `vcpu` of `server` should run on, given its `online` vCPUs.

        Placed: its CPU. Online and not placed (shared): the whole pool.
        Offline: where vCPU 0 runs.
        """
        placed = self.placed(server)
        if vcpu in placed:
            return (placed[vcpu],)
        if vcpu in set(online) or vcpu == 0:
            return self.cpus
        return self.affinity(server, 0, online)

    def shared(self, server: str, online: Iterable[int]) -> tuple[int, ...]:
        """The server's online vCPUs that have no CPU of their own."""
        placed = self.placed(server)
        return tuple(sorted(v for v in set(online) if v not in placed))

    # -- changes ---------------------------------------------------------------------

    def adopt(
        self,
        server: str,
        online: Iterable[int],
        current: Mapping[int, Iterable[int]] | None = None,
    ) -> Pool:
        """Place the online vCPUs of a server (again) as it starts running here.

        `current` is each vCPU's present affinity: when the pool has a CPU for
        every online vCPU, a vCPU pinned to one free CPU of the pool keeps it.
        The others get the lowest free CPUs, in vCPU order (vCPU 0 first: the
        offline vCPUs run where it runs); those left over are shared.
        """
        pool = self.release(server)
        taken = set(pool.used)
        ours: dict[int, int] = {}
        wanted = sorted(set(online))
        room = len(pool.cpus) - len(taken) >= len(wanted)
        for vcpu in wanted if room else ():
            cpus = tuple(set((current or {}).get(vcpu, ())))
            if len(cpus) == 1 and cpus[0] in pool.cpus and cpus[0] not in taken:
                ours[vcpu] = cpus[0]
                taken.add(cpus[0])
        free = [c for c in pool.cpus if c not in taken]
        for vcpu in wanted:
            if vcpu not in ours and free:
                ours[vcpu] = free.pop(0)
        return pool._with(server, ours)

    def release(self, server: str) -> Pool:
        """Free every CPU of a server that no longer runs here."""
        if server not in self.placements:
            return self
        return self._with(server, {})

    def take(self, server: str, vcpu: int) -> tuple[Pool, int]:
        """Place `vcpu` of `server` (coming online) on the lowest free CPU; NoFreeCpu if none."""
        placed = self.placed(server)
        if vcpu in placed:
            return self, placed[vcpu]
        free = self.free
        if not free:
            raise NoFreeCpu(f"no free CPU in the pool {list(self.cpus)}")
        return self._with(server, {**placed, vcpu: free[0]}), free[0]

    def give_back(self, server: str, vcpu: int) -> Pool:
        """Free the CPU of `vcpu` of `server` (going offline); a shared vCPU frees nothing."""
        placed = dict(self.placed(server))
        if placed.pop(vcpu, None) is None:
            return self
        return self._with(server, placed)

    def _with(self, server: str, placed: Mapping[int, int]) -> Pool:
        placements = {s: m for s, m in self.placements.items() if s != server}
        if placed:
            placements[server] = placed
        return Pool(cpus=self.cpus, placements=_frozen(placements))


__all__ = ["NoFreeCpu", "Pool"]
