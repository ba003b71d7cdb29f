"""Where a new server runs: the group's policy over the live hosts.

Theory of operation (pure: no I/O). `choose_host` takes the live hosts, the
load of each (how many servers it runs) and the group's current members, and
returns a host or raises `PlacementError` with one sentence:

- **affinity**: every member on one host. The first member goes to the
  least loaded live host (ties by name); later members go where the members
  are, and that host must be live.
- **anti-affinity**: no two members on one host. A member goes to the least
  loaded live host that has no member of the group; none left is an error.
- **soft-affinity** / **soft-anti-affinity** (Nova's): the same preferences,
  but never a refusal: when the members' host is gone, or every live host
  already runs a member, the least loaded live host (for soft-anti-affinity:
  among those with the fewest members) is taken; an explicit host is taken
  as it is.
- An explicit host must be live and must not break a (hard) policy.

Members are the group's servers that are not deleted. A member that is
moving (its spec names another host than its status) holds both hosts for
anti-affinity, and counts where it is going for affinity: otherwise a new
member placed while one moves could land on the host the moving one is
bound for (anti-affinity), or on the host it is leaving (affinity).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from servergroup.common.errors import LocalError
from servergroup.servers.model import Desired, Policy, Server, VmState


class PlacementError(LocalError):
    """No host satisfies the request (exit status 2)."""

    exit_status = 2


def load_of(servers: Iterable[Server]) -> dict[str, int]:
    """How many servers (not deleted) each host runs or is to run."""
    counts: Counter[str] = Counter()
    for server in servers:
        if server.spec.desired is not Desired.DELETED and server.state is not VmState.DELETED:
            counts[server.spec.host] += 1
    return dict(counts)


def choose_host(
    *,
    group: str,
    policy: Policy,
    members: Sequence[Server],
    live_hosts: Iterable[str],
    load: Mapping[str, int],
    requested: str | None = None,
) -> str:
    """The host for a new member of `group` (see the module docstring)."""
    live = sorted(set(live_hosts))
    if not live:
        raise PlacementError("no host is running: start one with `servergroup up`")
    if requested is not None and requested not in live:
        raise PlacementError(f"host {requested} is not running; running hosts: {', '.join(live)}")
    # A member in the middle of a move holds both ends of it: the host it runs
    # on (its status) and the host it is going to (its spec). Counting only
    # where it runs would let a new member land where a moving one arrives.
    used = sorted({m.host for m in members} | {m.spec.host for m in members})
    if policy is Policy.SOFT_AFFINITY:
        if requested is not None:
            return requested
        homes = [h for h, _ in Counter(m.host for m in members).most_common() if h in live]
        return homes[0] if homes else _least_loaded(live, load)
    if policy is Policy.SOFT_ANTI_AFFINITY:
        if requested is not None:
            return requested
        per_host = Counter(m.host for m in members)
        fewest = min(per_host.get(h, 0) for h in live)
        return _least_loaded([h for h in live if per_host.get(h, 0) == fewest], load)
    if policy is Policy.AFFINITY:
        if not used:
            return requested or _least_loaded(live, load)
        # Where the members are to run: a moving member's new host is the home.
        home = Counter(m.spec.host for m in members).most_common(1)[0][0]
        if requested is not None and requested != home:
            raise PlacementError(
                f"group {group} has the affinity policy and its servers run on {home}: "
                f"{requested} would break it"
            )
        if home not in live:
            raise PlacementError(
                f"group {group} has the affinity policy and its servers run on {home}, "
                "which is not running"
            )
        return home
    free = [h for h in live if h not in used]
    if requested is not None:
        if requested in used:
            raise PlacementError(
                f"group {group} has the anti-affinity policy and {requested} already runs "
                "one of its servers"
            )
        return requested
    if not free:
        raise PlacementError(
            f"group {group} has the anti-affinity policy and every running host "
            f"({', '.join(live)}) already runs one of its servers"
        )
    return _least_loaded(free, load)


def _least_loaded(hosts: Sequence[str], load: Mapping[str, int]) -> str:
    return min(hosts, key=lambda h: (load.get(h, 0), h))


__all__ = ["PlacementError", "choose_host", "load_of"]
