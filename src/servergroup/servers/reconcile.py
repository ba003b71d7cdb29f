"""What a host must do to bring one server from what it observes to what its spec asks.

Theory of operation (pure: no I/O, no clock; `now_iso` is passed in).

`decide(server, observed, me=..., ...)` looks at one server's records and at
what the host `me` observes of it, and returns a `Decision`: the driver
actions to carry out in order, the status to write once they succeeded, and
one sentence for the log. The `ServerManager` carries it out.

Who acts (so that no two hosts act on one server at once):

- The **owner** is `status.host`, or `spec.host` while there is no status
  yet. Only the owner touches the server's processes and writes its status.
- A **migration** starts when the operator sets `spec.host` to another host.
  The owner hands over: for a live migration of a running server it only
  detaches the channel; otherwise (cold, or nothing runs) it stops the server
  and detaches. Then it writes the status with `host` = the target and state
  MIGRATING. From that write on, the target is the owner, and completes the
  move as any owner reaches its spec: it attaches the channel (and starts
  the server, after a cold move) and reports the reached state with
  `task_state` None. A live move never touches the guest's processes.
- A live migration with a driver that **copies** the server
  (`MoveStyle.COPY`, QEMU) needs the target first: while the server runs,
  the target starts an empty copy (`RECEIVE`) and publishes where it waits
  (the `incoming` record). The owner then sends the server there
  (`MIGRATE`, which ends the source's copy) and hands over with
  `migrated_to` = that address. The new owner waits while its copy is still
  receiving that very stream, and stops a copy nobody is sending to (the
  move went cold). It drops the `incoming` record once the server runs.
- A server whose processes **crashed** (the driver says so) is cleaned up
  (`STOP`) and reported ERROR with the reason; the manager treats that as a
  failure, so the server is started again after its retry interval.
- **Delete** is done by the owner: delete everything, write DELETED, then
  forget both records (`FORGET` is always last and comes after the status
  write).
- A server **rebuilt** after its host died (evacuation: status task
  `rebuilding`, written on the dead host's behalf) is built afresh by its new
  owner: whatever still runs of it (a lab server is machine-wide, so the
  dead host's processes may still be there, frozen or cut off) is stopped
  first, then it is started as after a cold move.
- A host that is neither owner nor target of a server removes what it still
  has of it: its own copy, for drivers whose servers are per host (QEMU; the
  copy of a host that came back after its servers were evacuated, or what a
  cold move left), and a channel link in its channel directory.

Reaching the desired state is a table (`REACH`) from (desired, observed
power) to actions, adjusted for: a rebuild asked (`spec.rebuild_count`
above the status's: delete, create and start it), a resize (the flavor's `vcpus` differs from
the one the status records: stopped and started again, so that a VM boots
with its new vCPUs), a reboot asked (`spec.reboot_count` above
the status's), a guest agent found dead while the server should run (it is
started again, as the seed asks of a guest agent: "configured to respawn"),
and the channel link (present in the owner's channel directory while the
server runs, absent while it is stopped).

The decision is idempotent: deciding again on the same inputs after the
actions ran gives no actions, and the status is returned only when it differs
from the one in the store (times aside).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from servergroup.servers.drivers.base import MoveStyle, Observed, Power
from servergroup.servers.model import (
    REACHED,
    REBUILDING_TASK,
    Desired,
    Server,
    ServerStatus,
    VmState,
)

MIGRATING_TASK = "migrating"


class Action(enum.Enum):
    """One step a host carries out on a server (driver calls, and forgetting the records)."""

    CREATE = "create"
    START = "start"
    STOP = "stop"
    REBOOT = "reboot"  # reset a running server (its processes start afresh)
    PAUSE = "pause"
    UNPAUSE = "unpause"
    ATTACH = "attach"  # the channel link into this host's channel directory
    DETACH = "detach"  # the channel link out of the directory it is in
    DELETE = "delete"
    RECEIVE = "receive"  # start a copy waiting for a live migration; publish its address
    MIGRATE = "migrate"  # send the running server to the target's copy; end ours
    DROP_INCOMING = "drop-incoming"  # remove the incoming record of a finished move
    FORGET = "forget"  # remove the server's records (after the status write)


#: How to get from what runs to what is wanted, before the adjustments of `decide`.
REACH: Mapping[tuple[Desired, Power], tuple[Action, ...]] = {
    (Desired.ACTIVE, Power.ABSENT): (Action.CREATE, Action.START),
    (Desired.ACTIVE, Power.STOPPED): (Action.START,),
    (Desired.ACTIVE, Power.RUNNING): (),
    (Desired.ACTIVE, Power.FROZEN): (Action.UNPAUSE,),
    (Desired.PAUSED, Power.ABSENT): (Action.CREATE, Action.START, Action.PAUSE),
    (Desired.PAUSED, Power.STOPPED): (Action.START, Action.PAUSE),
    (Desired.PAUSED, Power.RUNNING): (Action.PAUSE,),
    (Desired.PAUSED, Power.FROZEN): (),
    (Desired.STOPPED, Power.ABSENT): (Action.CREATE,),
    (Desired.STOPPED, Power.STOPPED): (),
    (Desired.STOPPED, Power.RUNNING): (Action.STOP,),
    (Desired.STOPPED, Power.FROZEN): (Action.STOP,),
}

#: Words for the log sentence.
_VERBS: Mapping[Action, str] = {
    Action.CREATE: "create it",
    Action.START: "start it",
    Action.STOP: "stop it",
    Action.REBOOT: "reboot it",
    Action.PAUSE: "pause it",
    Action.UNPAUSE: "unpause it",
    Action.ATTACH: "attach its channel here",
    Action.DETACH: "detach its channel",
    Action.DELETE: "delete it",
    Action.RECEIVE: "start a copy to receive it",
    Action.MIGRATE: "send it to the copy on the target",
    Action.DROP_INCOMING: "drop its incoming record",
    Action.FORGET: "forget its records",
}
_SEEN: Mapping[Power, str] = {
    Power.ABSENT: "absent",
    Power.STOPPED: "stopped",
    Power.RUNNING: "running",
    Power.FROZEN: "paused",
    Power.INCOMING: "waiting for a migration stream",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What to do: `actions` in order, then write `status` (None: leave it), then FORGET."""

    actions: tuple[Action, ...]
    status: ServerStatus | None
    sentence: str

    @property
    def idle(self) -> bool:
        return not self.actions and self.status is None


def owner(server: Server) -> str:
    """The host that acts on the server: its status's host, or its spec's before any status."""
    return server.status.host if server.status is not None else server.spec.host


def involves(server: Server, me: str) -> bool:
    """Whether host `me` has anything to do with the server (owner or migration target)."""
    return me in (server.spec.host, owner(server))


def decide(
    server: Server,
    observed: Observed,
    *,
    me: str,
    channel_dir: Path,
    host_alive: Callable[[str], bool],
    now_iso: str,
    move_style: MoveStyle = MoveStyle.CHANNEL,
) -> Decision:
    """What host `me` (channel directory `channel_dir`) does for `server` now."""
    spec, name = server.spec, server.name
    current = owner(server)
    if current != me:
        if spec.host != me:
            return _not_ours(server, observed, channel_dir=channel_dir, move_style=move_style)
        return _await_hand_over(
            server, observed, me=me, alive=host_alive(current), move_style=move_style
        )
    if spec.desired is Desired.DELETED:
        return Decision(
            actions=(Action.DELETE, Action.FORGET),
            status=_status(server, me=me, state=VmState.DELETED, booted=False, now_iso=now_iso),
            sentence=f"server {name} is to be deleted: delete it, then forget its records",
        )
    if spec.host != me:
        return _hand_over(
            server, observed, me=me, host_alive=host_alive, now_iso=now_iso, move_style=move_style
        )
    return _reach(server, observed, me=me, channel_dir=channel_dir, now_iso=now_iso)


def _not_ours(
    server: Server, observed: Observed, *, channel_dir: Path, move_style: MoveStyle
) -> Decision:
    """Host `me` neither owns the server nor is to: remove what it still has of it."""
    name, current = server.name, owner(server)
    if move_style is MoveStyle.COPY and observed.power is not Power.ABSENT:
        return Decision(
            actions=(Action.DELETE,),
            status=None,
            sentence=f"server {name} belongs to {current}: delete the copy left here",
        )
    if observed.channel_dir is not None and observed.channel_dir == channel_dir:
        return Decision(
            actions=(Action.DETACH,),
            status=None,
            sentence=f"server {name} belongs to {current}: remove its channel link here",
        )
    return Decision(actions=(), status=None, sentence=f"server {name} is not ours")


def _await_hand_over(
    server: Server, observed: Observed, *, me: str, alive: bool, move_style: MoveStyle
) -> Decision:
    """Host `me` is the target of a move that its owner has not handed over yet."""
    spec, name, current = server.spec, server.name, owner(server)
    if spec.desired is Desired.DELETED and move_style is MoveStyle.COPY:
        # Only a copying driver has a copy of its own here (a lab server is machine-wide).
        if observed.power is Power.ABSENT:
            return Decision(actions=(), status=None, sentence=f"server {name} is not ours")
        return Decision(
            actions=(Action.DELETE,),
            status=None,
            sentence=f"server {name} is to be deleted before it moved here: delete our copy",
        )
    running = server.status is not None and server.status.state in (
        VmState.ACTIVE,
        VmState.PAUSED,
    )
    if move_style is MoveStyle.COPY and spec.live_migration and alive and running:
        incoming = server.incoming
        ours = (
            incoming is not None
            and incoming.host == me
            and observed.incoming_uri is not None
            and incoming.uri == observed.incoming_uri
        )
        if ours and observed.power in (Power.RUNNING, Power.FROZEN):
            # The stream has arrived: this copy is the server now. Never restart it.
            return Decision(
                actions=(),
                status=None,
                sentence=f"server {name} has arrived here live: waiting for {current} to "
                "hand it over",
            )
        if not (ours and observed.power is Power.INCOMING):
            return Decision(
                actions=(Action.RECEIVE,),
                status=None,
                sentence=f"server {name} is to move here live from {current}: "
                "start a copy to receive it",
            )
        return Decision(
            actions=(),
            status=None,
            sentence=f"server {name} moves here live: waiting for {current} to send it "
            f"to {observed.incoming_uri}",
        )
    why = "" if alive else ", which is not running"
    return Decision(
        actions=(),
        status=None,
        sentence=f"server {name} moves here: waiting for {current}{why} to hand it over",
    )


def _hand_over(
    server: Server,
    observed: Observed,
    *,
    me: str,
    host_alive: Callable[[str], bool],
    now_iso: str,
    move_style: MoveStyle,
) -> Decision:
    spec, name, target = server.spec, server.name, server.spec.host
    if not host_alive(target):
        return Decision(
            actions=(),
            status=None,
            sentence=f"server {name} is to move to {target}, which is not running: waiting",
        )
    live = (
        spec.live_migration
        and observed.power in (Power.RUNNING, Power.FROZEN)
        and observed.guest_alive
    )
    migrated_to: str | None = None
    if live and move_style is MoveStyle.COPY:
        incoming = server.incoming
        if incoming is None or incoming.host != target:
            return Decision(
                actions=(),
                status=None,
                sentence=f"server {name} is to move live to {target}: waiting for it to "
                "get ready to receive",
            )
        actions: tuple[Action, ...] = (Action.MIGRATE,)
        migrated_to = incoming.uri
    elif live:
        actions = (Action.DETACH,)
    else:
        actions = (Action.STOP, Action.DETACH)
    base = server.status or _status(
        server, me=me, state=VmState.BUILDING, booted=False, now_iso=now_iso
    )
    if not live:
        # Seed 003: a cold migration brings the server back with the flavor's every vCPU.
        base = replace(base, online_cpus=tuple(range(spec.vcpus)), vcpus=spec.vcpus)
    status = replace(
        base,
        host=target,
        state=VmState.MIGRATING,
        task_state=MIGRATING_TASK,
        updated_at=now_iso,
        error=None,
        migrated_to=migrated_to,
    )
    how = "live" if live else "cold"
    return Decision(
        actions=actions,
        status=status,
        sentence=f"server {name} moves to {target} ({how}): {_verbs(actions)}, then hand it over",
    )


def _reach(
    server: Server, observed: Observed, *, me: str, channel_dir: Path, now_iso: str
) -> Decision:
    spec, status, name = server.spec, server.status, server.name
    desired, power = spec.desired, observed.power
    runs = desired in (Desired.ACTIVE, Desired.PAUSED)
    if power is Power.INCOMING:
        sent_here = status.migrated_to if status is not None else None
        if sent_here is not None and sent_here == observed.incoming_uri:
            return Decision(
                actions=(),
                status=None,
                sentence=f"server {name} has moved here live: waiting for the migration "
                "stream to finish",
            )
        # A copy that nobody sends to (the move went cold, or an old attempt): end it.
        return _with_first(
            name,
            Action.STOP,
            _reach(
                server,
                replace(observed, power=Power.STOPPED, incoming_uri=None),
                me=me,
                channel_dir=channel_dir,
                now_iso=now_iso,
            ),
            note="a copy here waits for a migration that will not come",
        )
    if (
        status is not None
        and status.task_state == REBUILDING_TASK
        and power in (Power.RUNNING, Power.FROZEN)
    ):
        # What runs is what the dead host left (a lab server is machine-wide): end it.
        return _with_first(
            name,
            Action.STOP,
            _reach(
                server,
                replace(observed, power=Power.STOPPED, guest_pid=None, crashed=None),
                me=me,
                channel_dir=channel_dir,
                now_iso=now_iso,
            ),
            note="rebuilt here after its host died; what ran of it is ended first",
        )
    if observed.crashed is not None and runs:
        reason = f"server {name} crashed: {observed.crashed}"
        return Decision(
            actions=(Action.STOP,),
            status=failed(server, me=me, reason=reason, now_iso=now_iso),
            sentence=f"{reason}: clean it up, report it, start it again later",
        )
    actions = list(REACH[desired, power])
    notes: list[str] = []
    previous_reboots = status.reboot_count if status is not None else 0
    resized = status is not None and status.vcpus != 0 and status.vcpus != spec.vcpus
    rebuild = status is not None and spec.rebuild_count > status.rebuild_count
    if desired is Desired.ACTIVE and rebuild and power is not Power.ABSENT:
        # Made again from nothing (a lab server's namespace and cgroups, a VM's disk).
        actions = [Action.DELETE, Action.CREATE, Action.START]
        notes.append(f"rebuild {spec.rebuild_count} asked")
    elif desired is Desired.ACTIVE and resized and power in (Power.RUNNING, Power.FROZEN):
        # A new flavor needs a new boot of the whole server (a reset keeps a VM's vCPUs).
        actions = [Action.STOP, Action.START]
        notes.append(f"resized to {spec.vcpus} vCPU(s)")
    elif (
        desired is Desired.ACTIVE
        and spec.reboot_count > previous_reboots
        and power in (Power.RUNNING, Power.FROZEN)
    ):
        actions = [Action.UNPAUSE, Action.REBOOT] if power is Power.FROZEN else [Action.REBOOT]
        notes.append(f"reboot {spec.reboot_count} asked")
    elif runs and power in (Power.RUNNING, Power.FROZEN) and not observed.guest_alive:
        notes.append("its guest agent is dead")
        if desired is Desired.ACTIVE:
            actions = [Action.UNPAUSE, Action.START] if power is Power.FROZEN else [Action.START]
        else:
            actions = [Action.START, Action.PAUSE]  # starting thaws; pause again after
    booted = Action.START in actions or Action.REBOOT in actions
    if runs and (booted or observed.channel_dir != channel_dir):
        # Attach while running (before a pause), so the relay can connect at once.
        at = actions.index(Action.PAUSE) if Action.PAUSE in actions else len(actions)
        actions.insert(at, Action.ATTACH)
    if desired is Desired.STOPPED and observed.channel_dir is not None:
        actions.append(Action.DETACH)
    if server.incoming is not None and server.incoming.host == me:
        actions.append(Action.DROP_INCOMING)  # the move that needed it is over
    new = _status(server, me=me, state=REACHED[desired], booted=booted, now_iso=now_iso)
    changed = status is None or replace(status, updated_at="") != replace(new, updated_at="")
    seen = _SEEN[power]
    if status is not None and status.state is VmState.MIGRATING:
        notes.append("it has just moved here")
    why = f" ({'; '.join(notes)})" if notes else ""
    if actions:
        sentence = f"server {name} is {seen} and should be {desired.value}{why}: {_verbs(actions)}"
    elif changed:
        sentence = f"server {name} is {seen} as asked{why}: reporting {new.state.value}"
    else:
        sentence = f"server {name} is {seen} as asked"
    return Decision(actions=tuple(actions), status=new if changed else None, sentence=sentence)


def online_after(server: Server) -> tuple[int, ...]:
    """The server's online vCPUs as its next status records them (seed 003's behaviour table).

    What the status recorded stands (a boot, a pause, a live move or an
    evacuation keeps a scaled-down server scaled down: its guest takes the
    others offline again at boot), unless the flavor changed (a resize) or
    the record makes no sense for it (vCPU 0 offline, a vCPU past the
    flavor): then every vCPU of the flavor.
    """
    spec, old = server.spec, server.status
    full = tuple(range(spec.vcpus))
    if old is None or not old.online_cpus or (old.vcpus and old.vcpus != spec.vcpus):
        return full
    kept = tuple(sorted({c for c in old.online_cpus if 0 <= c < spec.vcpus}))
    return kept if 0 in kept else full


def _status(server: Server, *, me: str, state: VmState, booted: bool, now_iso: str) -> ServerStatus:
    spec, old = server.spec, server.status
    cpus = online_after(server)
    if old is None:
        return ServerStatus(
            name=spec.name,
            host=me,
            state=state,
            online_cpus=cpus,
            vcpus=spec.vcpus,
            reboot_count=spec.reboot_count,
            rebuild_count=spec.rebuild_count,
            launched_at=now_iso if booted else None,
            updated_at=now_iso,
        )
    return replace(
        old,
        host=me,
        state=state,
        task_state=None,
        online_cpus=cpus,
        vcpus=spec.vcpus,
        reboot_count=max(spec.reboot_count, old.reboot_count),
        rebuild_count=max(spec.rebuild_count, old.rebuild_count),
        launched_at=now_iso if booted else old.launched_at,
        updated_at=now_iso,
        error=None,
        migrated_to=None,
    )


def _with_first(name: str, action: Action, decision: Decision, *, note: str) -> Decision:
    """`decision` for server `name` with `action` done first, and `note` in its sentence."""
    actions = (action, *decision.actions)
    sentence = f"server {name} ({note}): {_verbs(actions)}"
    return Decision(actions=actions, status=decision.status, sentence=sentence)


def failed(server: Server, *, me: str, reason: str, now_iso: str) -> ServerStatus:
    """The status to write when an action of host `me` on `server` failed: ERROR and why."""
    base = server.status or _status(
        server, me=me, state=VmState.ERROR, booted=False, now_iso=now_iso
    )
    return replace(
        base, host=me, state=VmState.ERROR, task_state=None, error=reason, updated_at=now_iso
    )


def _verbs(actions: tuple[Action, ...] | list[Action]) -> str:
    return ", ".join(_VERBS[a] for a in actions)


__all__ = [
    "MIGRATING_TASK",
    "REACH",
    "Action",
    "Decision",
    "decide",
    "failed",
    "involves",
    "online_after",
    "owner",
]
