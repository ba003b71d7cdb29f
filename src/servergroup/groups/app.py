"""The sample application of seed 000 (`servergroup app`), on the client library.

As the original `server_group_app`: it takes all three kinds of message
(through the client's typed `receive()`, which also gives broadcasts'
seq), broadcasts MESSAGE when given, requests the group's status, then
prints every incoming message with its kind until interrupted, until
`count` messages were printed, or for `timeout` seconds. Lines are for
people ("broadcast from instance-...: this is a test") or, with
`json_lines`, one JSON object per line with a `kind` key (broadcast,
notification, status, nack). A nack from the host is printed as a message,
not raised: the app is a tool to see what the service does.

When it has run its loop it writes its client's counters on stderr, one
line (`app: broadcasts sent 1, acknowledged 1, refused 0, unconfirmed 0,
missed 0, pending 0`), so what became of its broadcast is never silent.
"""

from __future__ import annotations

import json
import selectors
import sys
import time
from typing import TextIO

from servergroup.groups.client import (
    BroadcastReceived,
    BroadcastStats,
    ClientEvent,
    NackReceived,
    NotificationReceived,
    StatusReceived,
    init,
)
from servergroup.groups.protocol import MsgType
from servergroup.guestcomm.protocol import SERVER_GROUP_ADDR, Json, JsonObject
from servergroup.guestcomm.sockets import NO_HOST_LOG_MSG

#: Longest wait in one poll, so that Ctrl-C and the deadline are seen promptly.
_POLL_INTERVAL = 0.5


def _text(value: Json) -> str:
    return value if isinstance(value, str) else "?"


def _describe_server(server: JsonObject) -> str:
    return (
        f"{_text(server.get('instance_name'))} ({_text(server.get('name'))}, "
        f"{_text(server.get('vm_state'))} on {_text(server.get('host'))})"
    )


def format_event(event: ClientEvent) -> str:
    """One human line for an event."""
    match event:
        case BroadcastReceived(text=text, source_instance=source):
            return f"broadcast from {source or 'unknown'}: {text}"
        case NotificationReceived(event=notification):
            payload = notification.get("payload")
            who = _describe_server(payload) if isinstance(payload, dict) else "?"
            return f"notification: {event.event_type} {who}"
        case StatusReceived(servers=servers):
            listed = ", ".join(_describe_server(s) for s in servers)
            return f"status: {len(servers)} servers: {listed}"
        case NackReceived(orig_msg_type=orig, reason=reason, id=None):
            return f"nack: {orig}: {reason}"
        case NackReceived(orig_msg_type=orig, reason=reason, id=ident):
            return f"nack: {orig} {ident}: {reason}"


def event_json(event: ClientEvent) -> JsonObject:
    """One JSON object for an event, with its `kind`."""
    match event:
        case BroadcastReceived(text=text, source_instance=source, seq=seq):
            return {"kind": "broadcast", "source_instance": source, "seq": seq, "text": text}
        case NotificationReceived(event=notification):
            return {"kind": "notification", "event": notification}
        case StatusReceived(seq=seq, servers=servers):
            return {"kind": "status", "seq": seq, "servers": list(servers)}
        case NackReceived(orig_msg_type=orig, reason=reason, id=ident):
            obj: JsonObject = {"kind": "nack", "orig_msg_type": orig, "reason": reason}
            if ident is not None:
                obj["id"] = ident
            return obj


def format_stats(stats: BroadcastStats) -> str:
    """The counters line the app writes on stderr at exit."""
    return (
        f"app: broadcasts sent {stats.sent}, acknowledged {stats.acknowledged}, "
        f"refused {stats.refused}, unconfirmed {stats.unconfirmed}, missed {stats.missed}, "
        f"pending {stats.pending}"
    )


#: How often, and how many times in all, the app asks for the status until it comes.
STATUS_RETRY_INTERVAL = 1.0
STATUS_TRIES = 5


def _no_host_yet(event: ClientEvent) -> bool:
    """A status query the agent refused because no host is connected to its channel yet."""
    return (
        isinstance(event, NackReceived)
        and event.orig_msg_type == MsgType.STATUS_QUERY.value
        and event.reason == NO_HOST_LOG_MSG
    )


def run_app(
    message: str | None,
    *,
    count: int | None = None,
    timeout: float | None = None,
    json_lines: bool = False,
    address: str = SERVER_GROUP_ADDR,
    out: TextIO,
    err: TextIO | None = None,
) -> int:
    """Run the sample app; returns how many messages it printed.

    The counters go to `err` (default: stderr) once the loop ends.

    Raises the client's `GroupMessagingError`s (no guest agent, address in
    use, a MESSAGE that cannot be broadcast).
    """
    printed = 0
    deadline = None if timeout is None else time.monotonic() + timeout

    def show(event: ClientEvent) -> None:
        nonlocal printed
        if count is not None and printed >= count:
            return
        line = json.dumps(event_json(event)) if json_lines else format_event(event)
        out.write(line + "\n")
        out.flush()
        printed += 1

    with init(address=address) as client, selectors.DefaultSelector() as selector:
        if message is not None:
            client.broadcast(message)
        client.request_status()
        # A query sent while the host's relay is still connecting (right after a
        # boot or a restart) is refused by the agent ("no host is connected"):
        # ask again until the status comes, a few times, without printing that.
        status_tries = 1
        retry_at = time.monotonic() + STATUS_RETRY_INTERVAL
        selector.register(client.fileno(), selectors.EVENT_READ)
        try:
            while count is None or printed < count:
                wait = _POLL_INTERVAL
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        break
                # The client may have work without a datagram: events it kept
                # while a send waited, a broadcast that went unconfirmed.
                timer = client.poll_timeout()
                if timer is not None:
                    wait = min(wait, timer)
                selector.select(wait)
                for event in client.receive():
                    if isinstance(event, StatusReceived):
                        status_tries = STATUS_TRIES
                    elif _no_host_yet(event) and status_tries < STATUS_TRIES:
                        continue  # asked again below
                    show(event)
                if status_tries < STATUS_TRIES and time.monotonic() >= retry_at:
                    client.request_status()
                    status_tries += 1
                    retry_at = time.monotonic() + STATUS_RETRY_INTERVAL
        except KeyboardInterrupt:
            pass
        finally:
            where = sys.stderr if err is None else err
            where.write(format_stats(client.stats) + "\n")
            where.flush()
    return printed


__all__ = ["event_json", "format_event", "format_stats", "run_app"]
