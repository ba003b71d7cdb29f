"""The group service: broadcast, status and notifications for the guests of one host.

Theory of operation (docs/design/messaging.md, spec section 4):

- **Requests.** The service routes `cgcs.server_grp` on the host's
  `ChannelRelay`. A message from a guest is accepted only when the guest's
  instance is a server of the registry placed on this host; each guest has
  its own bounded queue and worker, so one guest's flood fills only its own
  queue (the excess is dropped and counted) and never delays the others.
- **Broadcast.** A valid text is put to `broadcasts/<group>` as a
  `BroadcastRecord`. Every host watches `broadcasts/` (from the revision
  after its start) and delivers each put, in store order, to its LOCAL
  connected members of that group except the sender, with the key's version
  as `seq`: one total order per group across all hosts, numbered 1, 2, 3...
  The service watches `broadcasts/<group>` of each group with a server on
  this host (from the registry change that placed the first one here) and
  nothing else (the registry cache follows `registry/`), so a broadcast
  reaches a host once, and only a host with members of its group. A host
  that fell behind the store's compaction reads the group's key again,
  delivers its latest broadcast and logs how many it missed: members see a
  gap in `seq`, never a seq twice or out of order.
  A text that is too long, has a NUL or a newline, or comes from a server
  whose group does not exist is refused with a `nack` that says why.
- **Status.** A `status_query` gets one `status_response` per member of the
  requester's group (requester included; `server_info` with `host_alive`
  from the registry) and then `status_response_done`, all with the query's
  `seq`, sent back to the address that asked.
- **Notifications.** Every registry change of a server goes through the pure
  `notify.notification_for`; a host record that disappears (its daemon's
  lease expired) makes every server placed there "lost", one that appears
  makes them "recovered" (`notify.host_notifications`). Each event goes to
  the other LOCAL members of the server's group, never to the server itself.
- **Addresses.** Group traffic (broadcasts, notifications) goes to
  `cgcs.server_grp` in each guest and to every address that subscribed on
  that guest (`subscribe`, bounded per guest, forgotten when the guest's
  channel disconnects). Replies (status, nack) go to the address that asked.
- **Size.** Every datagram a guest's agent will deliver is checked to stay
  under 4096 bytes before it is written; a larger one is dropped and counted.

Garbage from a guest is logged (rate-limited) and dropped; an unknown
`msg_type` gets a nack. Every outcome is counted in `counters`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

from servergroup.common.clock import Clock, SystemClock
from servergroup.common.component import ComponentHealth, HealthState
from servergroup.common.logsetup import log_bug
from servergroup.coordination import (
    CoordinationError,
    Coordinator,
    EventKind,
    FencingError,
    Guard,
    WatchCompacted,
    WatchEvent,
)
from servergroup.groups.notify import host_notifications, notification_for
from servergroup.groups.protocol import (
    Broadcast,
    GroupMessage,
    MsgType,
    Nack,
    Notification,
    StatusQuery,
    StatusResponse,
    StatusResponseDone,
    Subscribe,
    UnknownMessageType,
    Unsubscribe,
    check_broadcast_text,
    decode_group_message,
    encode_group_message,
    msg_type_of,
)
from servergroup.guestcomm.drops import Counters, DropLog
from servergroup.guestcomm.protocol import (
    MAX_DATAGRAM,
    SERVER_GROUP_ADDR,
    Envelope,
    ProtocolError,
)
from servergroup.guestcomm.relay import ChannelRelay
from servergroup.guestcomm.sockets import encode_delivery
from servergroup.servers.model import (
    BroadcastRecord,
    RecordError,
    RegistrySnapshot,
    Server,
    decode_broadcast,
    encode_record,
    server_info,
)
from servergroup.servers.registry import (
    BROADCASTS,
    ChangeKind,
    RegistryCache,
    RegistryChange,
    broadcast_key,
)

log = logging.getLogger(__name__)

#: Requests that may wait per guest; more are dropped (a flood stays the flooder's).
DEFAULT_QUEUE_SIZE = 256
#: Addresses one guest may subscribe besides `cgcs.server_grp`.
DEFAULT_MAX_SUBSCRIPTIONS = 8
#: Pause before a broadcast watch that ended is opened again.
_REWATCH_INTERVAL = 0.5

#: What a guest may send; the others are the host's to send.
_REQUEST_TYPES = (MsgType.BROADCAST, MsgType.STATUS_QUERY, MsgType.SUBSCRIBE, MsgType.UNSUBSCRIBE)


@dataclass(slots=True)
class ServiceCounters:
    """What the group service has done since it started (mutable; read, do not keep)."""

    received: int = 0  # messages routed to the service by the relay
    broadcasts_accepted: int = 0  # puts to broadcasts/<group>
    broadcasts_delivered: int = 0  # deliveries to guests (one per member and address)
    broadcasts_missed: int = 0  # compacted away before this host saw them (a gap in seq)
    status_queries: int = 0
    status_responses: int = 0  # status_response messages sent
    notifications: int = 0  # notification messages sent
    nacks: int = 0
    subscriptions: int = 0  # currently held, over all guests
    send_failures: int = 0  # the relay could not write (guest gone, channel full)
    dropped: dict[str, int] = field(default_factory=dict)  # by reason

    def as_dict(self) -> dict[str, int]:
        """Every counter, the drops as `dropped.<reason>`."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "dropped"}
        for reason, count in sorted(self.dropped.items()):
            out[f"dropped.{reason}"] = count
        return out


class _Drop:
    """Why the service dropped something (the keys of `ServiceCounters.dropped`)."""

    GARBAGE = "garbage"
    UNKNOWN_SENDER = "unknown sender"
    FLOOD = "guest queue full"
    NOT_A_REQUEST = "not a request"
    NO_SOURCE_ADDR = "no source_addr"
    OVERSIZE = "datagram too big"
    BAD_RECORD = "bad broadcast record"


def iso_time(wall: float) -> str:
    """Wall-clock seconds as ISO 8601 UTC with milliseconds (for display in events)."""
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


class GroupService:
    """Serves `cgcs.server_grp` for the guests connected to this host's relay.

    A component of the host daemon (`common.component`): `start`, `stop`, `health`.
    """

    name = "groups"

    def __init__(
        self,
        *,
        coordinator: Coordinator,
        cache: RegistryCache,
        relay: ChannelRelay,
        host: str,
        clock: Clock | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS,
        fence: Callable[[], Guard | None] | None = None,
    ) -> None:
        self._c = coordinator
        #: The guard of this host's registration for every broadcast it writes;
        #: None from it: the host may not write now (its session is not connected).
        self._fence = fence
        self._cache = cache
        self._relay = relay
        self.host = host
        self._clock: Clock = clock or SystemClock()
        self._queue_size = queue_size
        self._max_subscriptions = max_subscriptions
        self.counters = ServiceCounters()
        self._drop_counts = Counters(dropped=self.counters.dropped)
        self._drops = DropLog(log, self._drop_counts)
        self._queues: dict[str, asyncio.Queue[Envelope]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._subscriptions: dict[str, set[str]] = {}
        self._changes: asyncio.Queue[RegistryChange] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._undo: list[Callable[[], None]] = []
        self._started = False
        #: group -> the watch of its broadcasts, for each group with a server on this host.
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        #: group -> (create revision, version) of the latest broadcast seen: no seq twice.
        self._seen: dict[str, tuple[int, int]] = {}
        self._watch_trouble: dict[str, str] = {}  # group -> why its broadcast watch is down

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Route `cgcs.server_grp`, follow broadcasts and registry changes.

        Broadcasts put before `start` are not delivered; those after are.
        """
        if self._started:
            return
        self._changes = self._cache.subscribe()
        snap = self._cache.snapshot
        rng = await self._c.get_prefix(BROADCASTS)
        local = self._local_groups(snap)
        self._seen = {
            group: (kv.create_revision, kv.version)
            for kv in rng.items
            if (group := kv.key[len(BROADCASTS) :]) in local
        }
        self._undo = [
            self._relay.route(SERVER_GROUP_ADDR, self._on_message),
            self._relay.on_change(self._on_channel_change),
        ]
        self._tasks = [
            asyncio.create_task(self._follow_registry(self._changes), name="group-notify"),
        ]
        self._follow_groups(snap, rng.revision + 1)
        self._started = True
        log.info(
            "group service of host %s ready (broadcasts of %d local group(s) from revision %d)",
            self.host,
            len(local),
            rng.revision + 1,
        )

    async def stop(self) -> None:
        """Stop serving; messages still queued are dropped."""
        if not self._started:
            return
        self._started = False
        for undo in self._undo:
            undo()
        self._undo = []
        if self._changes is not None:
            self._cache.unsubscribe(self._changes)
            self._changes = None
        tasks = [
            *self._tasks,
            *self._followers.values(),
            *self._retiring,
            *self._workers.values(),
        ]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._followers.clear()
        self._retiring.clear()
        self._seen.clear()
        self._watch_trouble.clear()
        self._workers.clear()
        self._queues.clear()
        self._subscriptions.clear()
        self.counters.subscriptions = 0
        self._drops.close()
        log.info("group service of host %s stopped: %s", self.host, self.counters.as_dict())

    async def __aenter__(self) -> GroupService:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def health(self) -> ComponentHealth:
        """Serving or not; degraded while the broadcast watch is down."""
        if not self._started:
            return ComponentHealth(
                state=HealthState.STOPPED, sentence="the group service is not serving"
            )
        c = self.counters
        done = (
            f"{c.broadcasts_accepted} broadcast(s) sent, {c.broadcasts_delivered} delivered, "
            f"{c.broadcasts_missed} missed, {c.notifications} notification(s)"
        )
        if self._watch_trouble:
            down = ", ".join(f"{g} ({why})" for g, why in sorted(self._watch_trouble.items()))
            return ComponentHealth(
                state=HealthState.DEGRADED,
                sentence=f"the broadcast watch of group(s) {down} is down; {done}",
            )
        return ComponentHealth(
            state=HealthState.HEALTHY,
            sentence=f"serving {len(self._followers)} local group(s); {done}",
        )

    def subscriptions(self, instance: str) -> frozenset[str]:
        """The addresses besides `cgcs.server_grp` that get group traffic in `instance`."""
        return frozenset(self._subscriptions.get(instance, ()))

    # -- from the relay (synchronous callbacks: they only enqueue) -------------------

    def _on_message(self, instance: str, envelope: Envelope) -> None:
        self.counters.received += 1
        queue = self._queues.get(instance)
        if queue is None:
            queue = self._queues[instance] = asyncio.Queue(self._queue_size)
            self._workers[instance] = asyncio.create_task(
                self._serve_guest(instance, queue), name=f"group-guest-{instance}"
            )
        try:
            queue.put_nowait(envelope)
        except asyncio.QueueFull:
            self._drops.drop(_Drop.FLOOD, f"a message from {instance}: it sends faster than served")

    def _on_channel_change(self, instance: str, connected: bool) -> None:
        if connected:
            return
        subs = self._subscriptions.pop(instance, set())
        self.counters.subscriptions -= len(subs)
        worker = self._workers.pop(instance, None)
        self._queues.pop(instance, None)
        if worker is not None:
            worker.cancel()

    # -- requests --------------------------------------------------------------------

    async def _serve_guest(self, instance: str, queue: asyncio.Queue[Envelope]) -> None:
        while True:
            envelope = await queue.get()
            try:
                await self._handle(instance, envelope)
            except asyncio.CancelledError:
                raise
            except Exception:
                log_bug(log, f"the group service's handling of a message from {instance}")

    async def _handle(self, instance: str, envelope: Envelope) -> None:
        reply_to = envelope.source_addr
        if reply_to is None:
            self._drops.drop(_Drop.NO_SOURCE_ADDR, f"a message from {instance}")
            return
        server = self._local_server(instance)
        if server is None:
            self._drops.drop(
                _Drop.UNKNOWN_SENDER,
                f"a message from {instance}: no server of this host has that instance name",
            )
            return
        try:
            msg = decode_group_message(envelope.data)
        except UnknownMessageType as exc:
            known = ", ".join(t.value for t in _REQUEST_TYPES)
            await self._nack(instance, reply_to, exc.msg_type, f"{exc}; a guest may send {known}")
            return
        except ProtocolError as exc:
            self._drops.drop(_Drop.GARBAGE, f"from {instance} at {reply_to!r}: {exc}")
            return
        match msg:
            case Broadcast(text=text):
                await self._broadcast(server, reply_to, text)
            case StatusQuery(seq=seq):
                await self._status(server, reply_to, seq)
            case Subscribe():
                await self._subscribe(instance, reply_to)
            case Unsubscribe():
                self._unsubscribe(instance, reply_to)
            case Nack():
                # Never answer a nack with a nack: two confused peers would loop.
                self._drops.drop(_Drop.NOT_A_REQUEST, f"a nack from {instance} at {reply_to!r}")
            case _:
                kind = msg_type_of(msg).value
                await self._nack(
                    instance, reply_to, kind, f"msg_type {kind!r} is sent by the host, not to it"
                )

    def _local_server(self, instance: str) -> Server | None:
        server = self._cache.snapshot.by_instance(instance)
        if server is None:
            return None
        if server.host != self.host and server.spec.host != self.host:
            return None
        return server

    async def _broadcast(self, server: Server, reply_to: str, text: str) -> None:
        instance = server.spec.instance
        reason = check_broadcast_text(text)
        if reason is None and server.spec.group not in self._cache.snapshot.groups:
            reason = f"{server.name} is not a member of any server group"
        if reason is not None:
            await self._nack(instance, reply_to, MsgType.BROADCAST.value, reason)
            return
        record = BroadcastRecord(
            group=server.spec.group,
            sender=server.name,
            sender_instance=instance,
            text=text,
            sent_at=iso_time(self._clock.wall()),
        )
        guard = self._fence() if self._fence is not None else None
        if self._fence is not None and guard is None:
            await self._nack(
                instance,
                reply_to,
                MsgType.BROADCAST.value,
                f"host {self.host} is not connected to etcd now (its session is not live)",
            )
            return
        try:
            await self._c.put(broadcast_key(record.group), encode_record(record), guard=guard)
        except FencingError:
            await self._nack(
                instance,
                reply_to,
                MsgType.BROADCAST.value,
                f"host {self.host} lost its registration (its lease expired): "
                "no broadcast until it has registered again",
            )
            return
        except CoordinationError as exc:
            await self._nack(
                instance, reply_to, MsgType.BROADCAST.value, f"the host cannot reach etcd: {exc}"
            )
            return
        self.counters.broadcasts_accepted += 1

    async def _status(self, server: Server, reply_to: str, seq: int) -> None:
        self.counters.status_queries += 1
        instance = server.spec.instance
        snap = self._cache.snapshot
        for member in snap.members(server.spec.group):
            info = server_info(member, host_alive=snap.host_alive(member))
            if await self._send(instance, reply_to, StatusResponse(seq=seq, server=info)):
                self.counters.status_responses += 1
        await self._send(instance, reply_to, StatusResponseDone(seq=seq))

    async def _subscribe(self, instance: str, address: str) -> None:
        if address == SERVER_GROUP_ADDR:
            return  # that one gets the group's traffic anyway
        subs = self._subscriptions.setdefault(instance, set())
        if address in subs:
            return
        if len(subs) >= self._max_subscriptions:
            await self._nack(
                instance,
                address,
                MsgType.SUBSCRIBE.value,
                f"{instance} already has {len(subs)} subscribed addresses, the most allowed",
            )
            return
        subs.add(address)
        self.counters.subscriptions += 1
        log.info("%s subscribed %r to its group's traffic", instance, address)

    def _unsubscribe(self, instance: str, address: str) -> None:
        subs = self._subscriptions.get(instance)
        if subs is not None and address in subs:
            subs.discard(address)
            self.counters.subscriptions -= 1
            log.info("%s unsubscribed %r", instance, address)

    async def _nack(self, instance: str, reply_to: str, orig: str, reason: str) -> None:
        # Rate-limited: a guest that floods bad requests must not flood the log.
        self._drops.note(
            "nack", f"to {instance} at {reply_to!r} for {orig}: {reason}", level=logging.INFO
        )
        if await self._send(instance, reply_to, Nack(orig_msg_type=orig, log_msg=reason)):
            self.counters.nacks += 1

    # -- sending -----------------------------------------------------------------------

    async def _send(self, instance: str, address: str, msg: GroupMessage) -> bool:
        envelope = Envelope(
            data=encode_group_message(msg), dest_addr=address, source_addr=SERVER_GROUP_ADDR
        )
        size = len(encode_delivery(envelope))
        if size > MAX_DATAGRAM:
            self._drops.drop(
                _Drop.OVERSIZE,
                f"a {msg_type_of(msg).value} for {instance} would be a {size}-byte datagram",
            )
            return False
        if await self._relay.send_to_guest(instance, envelope):
            return True
        self.counters.send_failures += 1
        return False

    async def _send_group(self, instance: str, msg: GroupMessage) -> int:
        """Send group traffic to `cgcs.server_grp` and the guest's subscribers."""
        sent = 0
        for address in (SERVER_GROUP_ADDR, *sorted(self._subscriptions.get(instance, ()))):
            if await self._send(instance, address, msg):
                sent += 1
        return sent

    def _local_members(self, snap: RegistrySnapshot, group: str, *, besides: str) -> list[str]:
        """Instances of `group` placed here with a connected channel, except `besides`."""
        connected = self._relay.connected()
        return [
            s.spec.instance
            for s in snap.members(group)
            if s.host == self.host and s.spec.instance in connected and s.spec.instance != besides
        ]

    # -- broadcasts ----------------------------------------------------------------------

    def _local_groups(self, snap: RegistrySnapshot) -> set[str]:
        """The groups with a server on this host (or on its way here)."""
        return {s.spec.group for s in snap.servers.values() if self.host in (s.host, s.spec.host)}

    def _follow_groups(self, snap: RegistrySnapshot, start_revision: int) -> None:
        """Watch the broadcasts of each local group from `start_revision`; drop the others."""
        wanted = self._local_groups(snap)
        for group in sorted(wanted - set(self._followers)):
            self._followers[group] = asyncio.create_task(
                self._follow_group(group, start_revision), name=f"group-bcast-{group}"
            )
        for group in sorted(set(self._followers) - wanted):
            task = self._followers.pop(group)
            task.cancel()
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            self._seen.pop(group, None)
            self._watch_trouble.pop(group, None)

    async def _follow_group(self, group: str, start_revision: int) -> None:
        """Deliver every broadcast of `group` put from `start_revision` on, surviving compaction.

        When the store compacted the revisions this host had not seen yet
        (it fell behind: cut off, frozen, slow), the watch cannot resume:
        the group's key is read again and its latest broadcast delivered,
        after a log line saying how many were missed. Receivers see the gap
        in `seq`; never a seq twice or out of order.
        """
        key = broadcast_key(group)
        next_revision = start_revision
        while True:
            try:
                watch = await self._c.watch(key, start_revision=next_revision)
                try:
                    self._watch_trouble.pop(group, None)
                    async for event in watch:
                        next_revision = event.revision + 1
                        if event.key == key:  # not another group whose name extends this one
                            await self._deliver_broadcast(event)
                finally:
                    await watch.close()
            except asyncio.CancelledError:
                raise
            except WatchCompacted as exc:
                self._watch_trouble[group] = "history compacted"
                log.warning(
                    "the broadcasts of group %s from revision %d were compacted (up to %d); "
                    "reading them again",
                    group,
                    next_revision,
                    exc.compact_revision,
                )
                revision = await self._catch_up(group)
                if revision is not None:
                    next_revision = revision + 1
                    continue
            except CoordinationError as exc:
                self._watch_trouble[group] = str(exc)
                log.warning(
                    "the broadcast watch of group %s ended (%s); watching again", group, exc
                )
            except Exception:
                self._watch_trouble[group] = "BUG"
                log_bug(log, f"the broadcast watch of group {group}")
            await self._clock.sleep(_REWATCH_INTERVAL)

    async def _catch_up(self, group: str) -> int | None:
        """Deliver the group's latest broadcast if this host has not; the revision read.

        None if the store cannot be read (the caller retries).
        """
        key = broadcast_key(group)
        try:
            rng = await self._c.get_prefix(key)
        except CoordinationError as exc:
            log.warning("cannot read the broadcasts of group %s (%s); retrying", group, exc)
            return None
        kv = next((kv for kv in rng.items if kv.key == key), None)
        if kv is None:
            self._seen.pop(group, None)  # deleted while we were away: numbered from 1 again
        else:
            await self._deliver_broadcast(
                WatchEvent(
                    kind=EventKind.PUT,
                    key=kv.key,
                    value=kv.value,
                    revision=kv.mod_revision,
                    create_revision=kv.create_revision,
                    version=kv.version,
                    lease=kv.lease,
                )
            )
        return rng.revision

    def _missed(self, group: str, create_revision: int, version: int) -> int | None:
        """How many broadcasts of `group` came before `version` unseen; None: already seen."""
        seen = self._seen.get(group)
        if seen is None:
            return 0  # the first since the group has a server here: nothing to compare with
        if seen[0] != create_revision:
            return version - 1  # the group was deleted and created again: numbered from 1
        if version <= seen[1]:
            return None
        return version - seen[1] - 1

    async def _deliver_broadcast(self, event: WatchEvent) -> None:
        group = event.key[len(BROADCASTS) :]
        if event.kind is not EventKind.PUT:
            self._seen.pop(group, None)  # the group was deleted
            return
        missed = self._missed(group, event.create_revision, event.version)
        if missed is None:
            return  # seen already (a re-read after compaction): never the same seq twice
        self._seen[group] = (event.create_revision, event.version)
        if missed:
            self.counters.broadcasts_missed += missed
            log.warning(
                "host %s missed %d broadcast(s) of group %s (seq %d to %d): the store "
                "compacted them before this host read them; members see the gap",
                self.host,
                missed,
                group,
                event.version - missed,
                event.version - 1,
            )
        try:
            record = decode_broadcast(event.value)
        except RecordError as exc:
            self._drops.drop(_Drop.BAD_RECORD, f"{event.key}: {exc}")
            return
        msg = Broadcast(text=record.text, source_instance=record.sender_instance, seq=event.version)
        for instance in self._local_members(
            self._cache.snapshot, group, besides=record.sender_instance
        ):
            self.counters.broadcasts_delivered += await self._send_group(instance, msg)

    # -- notifications -------------------------------------------------------------------

    async def _follow_registry(self, changes: asyncio.Queue[RegistryChange]) -> None:
        while True:
            change = await changes.get()
            try:
                if change.kind is ChangeKind.SERVER:
                    self._follow_groups(change.snapshot, change.revision + 1)
                await self._notify(change)
            except asyncio.CancelledError:
                raise
            except Exception:
                log_bug(log, f"the notifications for a change of {change.kind.value} {change.name}")

    async def _notify(self, change: RegistryChange) -> None:
        now_iso = iso_time(self._clock.wall())
        snap = change.snapshot
        if change.kind is ChangeKind.SERVER:
            before, after = change.before, change.after
            assert before is None or isinstance(before, Server)
            assert after is None or isinstance(after, Server)
            subject = after if after is not None else before
            if subject is None:
                return
            event = notification_for(
                before, after, now_iso=now_iso, host_alive=snap.host_alive(subject)
            )
            if event is not None:
                await self._send_notification(snap, subject, Notification(event=event))
        elif change.kind is ChangeKind.HOST:
            if change.name == self.host:
                return  # our own lease: our members are not lost to each other
            for item in host_notifications(
                change.name,
                alive_before=change.before is not None,
                alive_after=change.after is not None,
                snapshot=snap,
                now_iso=now_iso,
            ):
                await self._send_notification(snap, item.server, Notification(event=item.event))

    async def _send_notification(
        self, snap: RegistrySnapshot, subject: Server, msg: Notification
    ) -> None:
        event_type = msg.event.get("event_type")
        recipients = self._local_members(snap, subject.spec.group, besides=subject.spec.instance)
        log.info(
            "notification %s about %s to %d local member(s)",
            event_type,
            subject.name,
            len(recipients),
        )
        for instance in recipients:
            self.counters.notifications += await self._send_group(instance, msg)


__all__ = [
    "DEFAULT_MAX_SUBSCRIPTIONS",
    "DEFAULT_QUEUE_SIZE",
    "GroupService",
    "ServiceCounters",
    "iso_time",
]
