"""The `Lab` object: observe what exists, plan, apply, observe again.

Every change takes the machine-wide lab lock, reads the lab back from the
kernel, asks `plan.diff` what to do, lets the driver do it, and repeats until
the diff is empty (at most a few rounds; anything left is an error). So `up`
is idempotent, a second `up` reshapes, and a lab damaged by hand or by a
killed process is repaired by the next `up` or removed by `down`.

A lab made with `owner_pid` lives only as long as that process:
`remove_stale_labs` (called by every `up`, by the test fixtures and by
`servergroup lab down --stale`) removes the labs whose owner has exited.

Namespaces are machine-wide, so two state directories could name the same
lab. The bridge's marker keeps a digest of the state directory that made
the lab (`home`); `up` and `down` from any other state directory refuse to
reshape or remove it (`down(force=True)` does remove it: the explicit clean-up
of a lab whose state directory is gone). Labs whose marker has no home
(made before it was kept) are anyone's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

from servergroup.common.errors import UsageError
from servergroup.config import default_state_dir
from servergroup.lab import faults, netns
from servergroup.lab.errors import LabError
from servergroup.lab.faults import SatelliteFinder
from servergroup.lab.plan import (
    DEFAULT_MTU,
    DEFAULT_NAME,
    HostSpec,
    LabHost,
    LabPlan,
    LabStatus,
    LossScope,
    ObservedLab,
    Owner,
    choose_network,
    decode_marker,
    describe,
    diff,
    format_rate,
    host_netns,
    lab_network_of,
    make_spec,
    parse_host,
    parse_loss,
    parse_rate,
    plan_lab,
    spec_of,
    summarize,
    teardown,
    validate_name,
    with_host,
)
from servergroup.lab.state import (
    all_records,
    machine_lock,
    owner_alive,
    owner_of,
    read_record,
    record_of,
    record_path,
    remove_record,
    write_record,
)

log = logging.getLogger(__name__)

#: Rounds of observe-diff-apply before `up` gives up; one is normal, two repair races.
MAX_ROUNDS = 3

HostRef = str | LabHost


class Lab:
    """A lab of network-namespace hosts on a bridge, on this machine.

    `Lab("sg")` does nothing by itself; `up` builds or reshapes the lab,
    `down` removes it. Host names are `h1`..`hN`. Methods block; they also
    work when called from async code (pyroute2 then runs in a worker thread),
    but `asyncio.to_thread` keeps the event loop free meanwhile.
    """

    def __init__(
        self,
        name: str = DEFAULT_NAME,
        *,
        state_dir: Path | None = None,
        owner_pid: int | None = None,
        lock_timeout: float = 30.0,
        satellites: SatelliteFinder | None = None,
    ) -> None:
        """`owner_pid`: tie the lab to that process's life (see `remove_stale_labs`).

        `satellites`: what else runs on a host besides its namespace's processes
        (its lab servers), for `crash` and `freeze` (see `servergroup.lab.faults`).
        """
        self._satellites = satellites
        self._name = validate_name(name)
        self._state_dir = state_dir if state_dir is not None else default_state_dir()
        self._home = state_home(self._state_dir)
        self._owner_pid = owner_pid
        self._lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"Lab({self._name!r}, state_dir={str(self._state_dir)!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def state_path(self) -> Path:
        """The lab's JSON state file."""
        return record_path(self._state_dir, self._name)

    # --- building ---------------------------------------------------------------------

    @netns.off_event_loop
    def up(
        self,
        hosts: int,
        *,
        mtu: int = DEFAULT_MTU,
        rate: int | str | None = None,
        loss: float | str | None = None,
        loss_scope: LossScope = LossScope.UDP,
    ) -> LabStatus:
        """Make the lab exactly `hosts` hosts with these link settings, all links up.

        `rate` limits each host's link in both directions (bits/s, or a string
        such as "1gbit"; None: unlimited); `loss` drops that percentage of the
        datagrams arriving at each host (UDP only unless `loss_scope` is ALL).
        Creates what is missing, reshapes what differs, removes hosts beyond
        `hosts`, heals cut hosts and thaws frozen ones; calling it again with
        the same arguments changes nothing.
        """
        _require()
        owner = owner_of(self._owner_pid) if self._owner_pid is not None else None
        spec = make_spec(
            self._name,
            hosts=hosts,
            mtu=mtu,
            rate=rate,
            loss=loss,
            loss_scope=loss_scope,
            owner=owner,
            home=self._home,
        )
        with self._locked():
            _remove_stale(self._state_dir)
            observed = netns.observe(self._name)
            self._check_home(observed, "reshape")
            network = lab_network_of(observed.bridge.addresses) if observed.bridge else None
            if network is None:
                network = choose_network(netns.root_addresses())
            plan = plan_lab(spec, network)
            write_record(self.state_path, record_of(plan, owner, complete=False, now=time.time()))
            status = self._converge(plan)
            faults.release((host.netns for host in plan.hosts), state_dir=self._state_dir)
            write_record(self.state_path, record_of(plan, owner, complete=True, now=time.time()))
        log.info(
            "lab %s is up: %d host(s) on %s, mtu %d, rate %s, loss %s%%",
            self._name,
            hosts,
            network,
            mtu,
            format_rate(spec.hosts[0].rate),
            spec.hosts[0].loss.percent if spec.hosts[0].loss else 0,
        )
        return status

    @netns.off_event_loop
    def set_link(self, host: HostRef, up: bool) -> LabHost:
        """Take a host's link down (as if its cable were pulled) or bring it back up."""
        return self._change_host(host, lambda spec: replace(spec, link_up=up))

    @netns.off_event_loop
    def set_rate(self, host: HostRef, rate: int | str | None) -> LabHost:
        """Limit one host's link, both directions, to `rate` (None: unlimited)."""
        bits = parse_rate(rate)
        return self._change_host(host, lambda spec: replace(spec, rate=bits))

    @netns.off_event_loop
    def set_loss(
        self, host: HostRef, loss: float | str | None, scope: LossScope = LossScope.UDP
    ) -> LabHost:
        """Drop `loss` percent of the datagrams arriving at one host (0 or None: none)."""
        value = parse_loss(loss, scope)
        return self._change_host(host, lambda spec: replace(spec, loss=value))

    @netns.off_event_loop
    def down(self, *, force: bool = False) -> bool:
        """Remove everything of the lab (ending processes still in its hosts).

        True if there was anything to remove; taking down a lab that is not
        up is not an error. A lab made from another state directory is
        refused (`LabError`) unless `force`.
        """
        _require()
        with self._locked():
            if not force:
                self._check_home(netns.observe(self._name), "remove")
            removed = _take_down(self._name, self._state_dir)
        if removed:
            log.info("lab %s is down", self._name)
        return removed

    # --- reading ----------------------------------------------------------------------

    @netns.off_event_loop
    def status(self) -> LabStatus | None:
        """The lab as it is, None if it is not up; LabError if it is damaged."""
        _require()
        with self._locked():
            status = summarize(netns.observe(self._name))
        return faults.with_faults(status) if status is not None else None

    @netns.off_event_loop
    def foreign(self) -> bool:
        """True if the lab exists and was made from another state directory."""
        _require()
        with self._locked():
            return self._foreign(netns.observe(self._name))

    def _foreign(self, observed: ObservedLab) -> bool:
        marker = decode_marker(observed.bridge.marker) if observed.bridge is not None else None
        return marker is not None and marker.home is not None and marker.home != self._home

    def _check_home(self, observed: ObservedLab, verb: str) -> None:
        if self._foreign(observed):
            raise LabError(
                f"lab {self._name} was made from another state directory, so this one does "
                f"not {verb} it: give this one another lab name (--lab, or SERVERGROUP_LAB), "
                f"or take lab {self._name} down from its own state directory "
                "(`servergroup lab down --force` if that directory is gone)."
            )

    @netns.off_event_loop
    def exists(self) -> bool:
        """True if anything of the lab exists (even a damaged lab)."""
        _require()
        with self._locked():
            return not netns.observe(self._name).empty

    def hosts(self) -> list[LabHost]:
        """The lab's hosts, h1 first; UsageError if the lab is not up."""
        return list(self._status().hosts)

    def host(self, name: str) -> LabHost:
        """One host, by name (`h1`) ; UsageError if there is no such host."""
        return self._status().host(name)

    # --- faults -----------------------------------------------------------------------

    @netns.off_event_loop
    def crash(self, host: HostRef) -> int:
        """SIGKILL everything that runs on `host`, its satellites (lab servers) included.

        Returns how many processes were killed; crashing a host where nothing
        runs is not an error. The host's namespace and link stay: start
        things in it again to "reboot" it.
        """
        found = self._fault_host(host)
        with self._locked():
            return faults.crash(found, finder=self._satellites, state_dir=self._state_dir)

    @netns.off_event_loop
    def freeze(self, host: HostRef) -> int:
        """Freeze everything that runs on `host` (as if the machine hung); the number frozen.

        Freezing a frozen host freezes what was started in it since.
        """
        found = self._fault_host(host)
        with self._locked():
            return faults.freeze(found, finder=self._satellites, state_dir=self._state_dir)

    @netns.off_event_loop
    def thaw(self, host: HostRef) -> bool:
        """Undo `freeze`; False if the host was not frozen (not an error)."""
        found = self._fault_host(host)
        with self._locked():
            return faults.thaw(found.netns, state_dir=self._state_dir)

    def cut(self, host: HostRef) -> LabHost:
        """Take the host's link down: it loses etcd and its peers, its processes run on."""
        return self.set_link(host, up=False)

    def heal(self, host: HostRef) -> LabHost:
        """Bring the host's link back up (also what `up` does)."""
        return self.set_link(host, up=True)

    def _fault_host(self, host: HostRef) -> LabHost:
        _require()
        return self.host(host.name if isinstance(host, LabHost) else host)

    # --- running things in hosts ------------------------------------------------------

    def command(self, host: HostRef, argv: Sequence[str]) -> list[str]:
        """The command line that runs `argv` in `host`, e.g. for asyncio subprocesses.

        The process is exec'd in place (`nsenter --net`, the network namespace
        only: `/sys` and its cgroups stay the machine's, so a host daemon runs
        there), so its PID is the PID of `argv`, and signals reach it directly.
        """
        if not argv:
            raise UsageError("give a command to run in the lab host.")
        _require()
        return netns.netns_command(self._netns_of(host), argv)

    def exec(
        self, host: HostRef, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """`subprocess.run(argv, **kwargs)` inside `host` (kwargs as for subprocess.run)."""
        return subprocess.run(self.command(host, argv), **kwargs)

    def popen(self, host: HostRef, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """`subprocess.Popen(argv, **kwargs)` inside `host`, for long-running programs."""
        return subprocess.Popen(self.command(host, argv), **kwargs)

    # --- internals --------------------------------------------------------------------

    def _locked(self) -> AbstractContextManager[None]:
        return machine_lock().hold(self._lock_timeout)

    def _netns_of(self, host: HostRef) -> str:
        if isinstance(host, LabHost):
            name = host.netns
        else:
            name = host_netns(self._name, parse_host(self._name, host))
        if not netns.namespace_exists(name):
            if not netns.namespace_exists(host_netns(self._name, 1)):  # every lab has h1
                raise UsageError(f"lab {self._name} is not up.")
            shown = host.name if isinstance(host, LabHost) else host
            raise UsageError(f"lab {self._name} has no host {shown}.")
        return name

    def _status(self) -> LabStatus:
        status = self.status()
        if status is None:
            raise UsageError(f"lab {self._name} is not up.")
        return status

    def _change_host(self, host: HostRef, change: Callable[[HostSpec], HostSpec]) -> LabHost:
        _require()
        name = host.name if isinstance(host, LabHost) else host
        index = parse_host(self._name, name)
        with self._locked():
            observed = netns.observe(self._name)
            spec = spec_of(observed)
            if spec is None or observed.bridge is None:
                raise UsageError(f"lab {self._name} is not up.")
            network = lab_network_of(observed.bridge.addresses)
            assert network is not None  # spec_of checked the bridge's address
            if not 1 <= index <= len(spec.hosts):
                raise UsageError(f"lab {self._name} has no host {name}.")
            spec = with_host(spec, index, change(spec.hosts[index - 1]))
            status = self._converge(plan_lab(spec, network))
        return status.host(f"h{index}")

    def _converge(self, plan: LabPlan) -> LabStatus:
        for _ in range(MAX_ROUNDS):
            observed = netns.observe(plan.name)
            actions = diff(plan, observed)
            if not actions:
                status = summarize(observed)
                assert status is not None  # an empty diff means the whole plan exists
                return status
            log.debug("lab %s: %d change(s)", plan.name, len(actions))
            netns.apply(actions)
        raise LabError(
            f"lab {plan.name} did not settle after {MAX_ROUNDS} rounds; "
            f"{describe(actions[0])} is still needed."
        )


def _require() -> None:
    netns.check_privileges()
    netns.check_tools()


def _take_down(name: str, state_dir: Path) -> bool:
    """Remove lab `name` (lock held): what its record lists and what is named after it."""
    path = record_path(state_dir, name)
    record = read_record(path)
    also = (*record.namespaces, *record.links) if record and record.name == name else ()
    observed = netns.observe(name, also=also)
    if not observed.empty:
        gone = [host.netns for host in observed.hosts]
        faults.release(gone, state_dir=state_dir)  # frozen processes cannot be ended
        netns.apply(teardown(observed))
        faults.forget(gone)
        left = netns.observe(name, also=also)
        if not left.empty:
            raise LabError(f"lab {name} could not be removed completely; try again.")
    remove_record(path)
    return not observed.empty


def _remove_stale(state_dir: Path) -> list[str]:
    """Take down every lab whose owner has exited (lock held); their names."""
    owners: dict[str, Owner | None] = {}
    for record in all_records(state_dir):
        owners[record.name] = record.owner
    # The bridge's marker is what the kernel holds: it wins over a record.
    for name, marker in netns.lab_markers().items():
        owners[name] = marker.owner
    removed = []
    for name, owner in sorted(owners.items()):
        if owner is None or owner_alive(owner):
            continue
        if _take_down(name, state_dir):
            log.info("lab %s: removed; its owner, process %d, has exited", name, owner.pid)
            removed.append(name)
    return removed


@netns.off_event_loop
def remove_stale_labs(state_dir: Path | None = None, *, lock_timeout: float = 30.0) -> list[str]:
    """Take down the labs on this machine whose owning process has exited.

    Labs are found by their bridge's marker (whatever state directory they
    used) and by the state files under `state_dir`. Labs without an owner
    (made by `servergroup lab up`) are never stale. Returns the names of the
    labs removed.
    """
    _require()
    with machine_lock().hold(lock_timeout):
        return _remove_stale(state_dir if state_dir is not None else default_state_dir())


def state_home(state_dir: Path) -> str:
    """The digest of a state directory that a lab's marker keeps (16 hex digits)."""
    return hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:16]
