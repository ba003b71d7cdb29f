"""A group member for bench/messaging.py: runs inside a lab server, logs what it receives.

Started by the benchmark with `servergroup server exec NAME -- python
bench/messaging_member.py`. It binds the default server-group address,
asks for the group's status, then prints one JSON line per event on stdout,
each stamped with `time.monotonic()` at receipt (CLOCK_MONOTONIC is one
clock for every namespace of the machine, so the benchmark can compare
stamps taken in different servers and in the root namespace):

    {"kind": "broadcast", "at": ..., "seq": 7, "text": "...", "source": "instance-..."}
    {"kind": "notification", "at": ..., "event_type": "compute.instance.lost", "name": "m3",
     "host": "h2"}
    {"kind": "status", "at": ..., "names": ["m0", ...]}
    {"kind": "nack", "at": ..., "orig": "broadcast", "reason": "..."}
    {"kind": "sent", "at": ..., "id": 12}      (after a broadcast it was told to send)
    {"kind": "error", "at": ..., "message": "..."}

Commands, one per line on stdin: `b ID` broadcasts `bench ID <monotonic
stamp taken just before the send>`; `s` requests the status; `q` or end of
input ends the member.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from servergroup.groups.client import (
    AsyncServerGroupClient,
    BroadcastReceived,
    GroupMessagingError,
    NackReceived,
    NotificationReceived,
    StatusReceived,
)
from servergroup.guestcomm.protocol import Json


def emit(kind: str, at: float, **fields: Json) -> None:
    sys.stdout.write(json.dumps({"kind": kind, "at": at, **fields}) + "\n")
    sys.stdout.flush()


def _text(value: Json) -> str:
    return value if isinstance(value, str) else ""


async def receive(client: AsyncServerGroupClient) -> None:
    try:
        await _receive(client)
    except GroupMessagingError as exc:
        emit("error", time.monotonic(), message=f"receiving stopped: {exc}")


async def _receive(client: AsyncServerGroupClient) -> None:
    async for event in client.events():
        at = time.monotonic()
        match event:
            case BroadcastReceived(text=text, source_instance=source, seq=seq):
                emit("broadcast", at, seq=seq, text=text, source=source)
            case NotificationReceived(event=notification):
                payload = notification.get("payload")
                info = payload if isinstance(payload, dict) else {}
                emit(
                    "notification",
                    at,
                    event_type=event.event_type,
                    name=_text(info.get("name")),
                    host=_text(info.get("host")),
                )
            case StatusReceived(servers=servers):
                names: list[Json] = [name for name in sorted(_text(s.get("name")) for s in servers)]
                emit("status", at, names=names)
            case NackReceived(orig_msg_type=orig, reason=reason):
                emit("nack", at, orig=orig, reason=reason)


async def command(client: AsyncServerGroupClient, line: str) -> bool:
    """Carry out one command line; False when the member should end."""
    words = line.split()
    try:
        if words[:1] == ["b"] and len(words) == 2:
            sent_at = time.monotonic()
            await client.broadcast(f"bench {words[1]} {sent_at:.9f}")
            emit("sent", sent_at, id=int(words[1]))
        elif words == ["s"]:
            await client.request_status()
        elif words == ["q"]:
            return False
        else:
            emit("error", time.monotonic(), message=f"unknown command {line!r}")
    except GroupMessagingError as exc:
        emit("error", time.monotonic(), message=str(exc))
    return True


async def main() -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    async with AsyncServerGroupClient() as client:
        receiver = asyncio.create_task(receive(client))
        try:
            await client.request_status()
            while line := (await stdin.readline()).decode():
                if not await command(client, line):
                    break
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except GroupMessagingError as error:
        emit("error", time.monotonic(), message=str(error))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
