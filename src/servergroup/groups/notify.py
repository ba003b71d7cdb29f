"""Which notification a change of a server's records makes (pure).

Theory of operation: the group service hands every registry change of a
server to `notification_for(before, after, now_iso=...)` and every change of a
host record to `host_notifications(...)`; each returns the event(s) to send
to the *other* members of the server's group (spec section 4: `event_type`,
`priority`, `timestamp`, `payload`).

We decide on what the host **observed** (`ServerStatus`: state, host,
reboot count, online CPUs), never on what the operator asked (`ServerSpec`):
a `server pause` that has not happened yet is no news to the other members.
A resize is news once the host has carried it out: its status then records
the new flavor's `vcpus` (asked, it is only a spec change).

One change gives at most one event; when a status shows several things at
once, the first row of this table that matches wins:

| change (before -> after)                                | event_type                          |
|---------------------------------------------------------|-------------------------------------|
| a server not deleted -> deleted or gone                 | compute.instance.delete.end         |
| rebuilding (its host died) -> reported by its new host  | compute.instance.evacuate.end       |
| no status / building -> active                          | compute.instance.create.end         |
| status.host changed, or migrating, now active           | compute.instance.live_migration.end |
|   (the same, when the spec asked a cold migration)      | compute.instance.migrate.end        |
| active -> paused                                        | compute.instance.pause.end          |
| paused -> active                                        | compute.instance.unpause.end        |
| active or paused -> stopped                             | compute.instance.power_off.end      |
| stopped -> active                                       | compute.instance.power_on.end       |
| anything -> error                                       | compute.instance.error (ERROR)      |
| active, status.vcpus changed (the flavor, by a resize)  | compute.instance.resize.end         |
| active, rebuild_count grew                              | compute.instance.rebuild.end        |
| active, reboot_count grew                               | compute.instance.reboot.end         |
| active, online_cpus changed                             | compute.instance.scale.end          |

A new `ServerEvent` (`registry/servers/<name>/event`, written by the host
that runs the server, e.g. the autoscaler's decision) is news of its own:
`compute.instance.<event.what>` (`compute.instance.autoscale`) with the
event's priority, its payload the server's as below plus `details`: the
event's `sentence`, `host`, `at` and its own details. It is looked at before
the table (a change of the event record changes nothing else).

Host records (liveness, from each host daemon's session lease): when
`registry/hosts/<h>` disappears every server whose `status.host == h` (and is not
deleted) is `compute.instance.lost` with priority ERROR; when it comes back,
each such server is `compute.instance.recovered`.

The payload is `servers.model.server_info` of the server after the change
(before it, for a server whose records are gone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from servergroup.guestcomm.protocol import JsonObject
from servergroup.servers.model import (
    REBUILDING_TASK,
    RegistrySnapshot,
    Server,
    VmState,
    server_info,
)

EVENT_PREFIX: Final = "compute.instance."
INFO: Final = "INFO"
ERROR: Final = "ERROR"

#: Plain state transitions (before, after) -> what, in the table above.
_TRANSITIONS: Final[dict[tuple[VmState, VmState], str]] = {
    (VmState.ACTIVE, VmState.PAUSED): "pause.end",
    (VmState.PAUSED, VmState.ACTIVE): "unpause.end",
    (VmState.ACTIVE, VmState.STOPPED): "power_off.end",
    (VmState.PAUSED, VmState.STOPPED): "power_off.end",
    (VmState.STOPPED, VmState.ACTIVE): "power_on.end",
}


def make_event(
    what: str, server: Server, *, now_iso: str, host_alive: bool = True, priority: str = INFO
) -> JsonObject:
    """The notification `data` object for `compute.instance.<what>` about `server`."""
    payload: JsonObject = server_info(server, host_alive=host_alive)
    return {
        "event_type": EVENT_PREFIX + what,
        "priority": priority,
        "timestamp": now_iso,
        "payload": payload,
    }


def _news(before: Server | None, after: Server | None) -> JsonObject | None:
    """The `details` of a new server event in this change, or None."""
    if before is None or after is None or after.event is None or after.event == before.event:
        return None
    if before.spec != after.spec or before.status != after.status:
        return None  # not the event record's own change (a re-read): the table decides
    event = after.event
    return {"sentence": event.sentence, "host": event.host, "at": event.at, **event.details}


def _what(before: Server | None, after: Server | None) -> tuple[str, str] | None:
    """(what, priority) for a change of one server's records, or None: no news."""
    gone = after is None or after.state is VmState.DELETED
    if before is not None and before.state is not VmState.DELETED and gone:
        return "delete.end", INFO
    if after is None or after.status is None:
        return None  # not (or no longer) observed by any host: nothing happened yet
    new = after.status
    old = before.status if before is not None else None
    if old is not None and old.task_state == REBUILDING_TASK and new.task_state != REBUILDING_TASK:
        return ("error", ERROR) if new.state is VmState.ERROR else ("evacuate.end", INFO)
    if old is None or old.state is VmState.BUILDING:
        return ("create.end", INFO) if new.state is VmState.ACTIVE else None
    # The source host hands a server over by writing MIGRATING with the target
    # as host already; the target's ACTIVE then ends the migration.
    moved = new.host != old.host or old.state is VmState.MIGRATING
    if moved and new.state is VmState.ACTIVE:
        return ("live_migration.end" if after.spec.live_migration else "migrate.end"), INFO
    if new.state is not old.state:
        if new.state is VmState.ERROR:
            return "error", ERROR
        what = _TRANSITIONS.get((old.state, new.state))
        return (what, INFO) if what is not None else None
    if new.state is not VmState.ACTIVE:
        return None
    if old.vcpus and new.vcpus != old.vcpus:
        return "resize.end", INFO
    if new.rebuild_count > old.rebuild_count:
        return "rebuild.end", INFO
    if new.reboot_count > old.reboot_count:
        return "reboot.end", INFO
    if new.online_cpus != old.online_cpus:
        return "scale.end", INFO
    return None


def notification_for(
    before: Server | None, after: Server | None, *, now_iso: str, host_alive: bool = True
) -> JsonObject | None:
    """The event for a change of one server's records, or None when it is no news.

    `host_alive` says whether the server's host is alive after the change (it
    goes into the payload).
    """
    news = _news(before, after)
    if news is not None and after is not None and after.event is not None:
        event = make_event(
            after.event.what,
            after,
            now_iso=now_iso,
            host_alive=host_alive,
            priority=after.event.priority,
        )
        payload = event["payload"]
        assert isinstance(payload, dict)
        payload["details"] = news
        return event
    found = _what(before, after)
    if found is None:
        return None
    what, priority = found
    subject = after if after is not None else before
    assert subject is not None  # _what returns None when both are None
    return make_event(what, subject, now_iso=now_iso, host_alive=host_alive, priority=priority)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerEvent:
    """A notification about one server, to send to the other members of its group."""

    server: Server
    event: JsonObject


def host_notifications(
    host: str, *, alive_before: bool, alive_after: bool, snapshot: RegistrySnapshot, now_iso: str
) -> list[ServerEvent]:
    """The lost/recovered events when host `host` dies or comes back.

    `snapshot` is the registry after the change; every server whose observed
    host is `host` (deleted ones excepted) is concerned.
    """
    if alive_before == alive_after:
        return []
    if alive_after:
        what, priority = "recovered", INFO
    else:
        what, priority = "lost", ERROR
    events: list[ServerEvent] = []
    for _, server in sorted(snapshot.servers.items()):
        status = server.status
        if status is None or status.host != host or status.state is VmState.DELETED:
            continue
        event = make_event(what, server, now_iso=now_iso, host_alive=alive_after, priority=priority)
        events.append(ServerEvent(server=server, event=event))
    return events


__all__ = [
    "ERROR",
    "EVENT_PREFIX",
    "INFO",
    "ServerEvent",
    "host_notifications",
    "make_event",
    "notification_for",
]
