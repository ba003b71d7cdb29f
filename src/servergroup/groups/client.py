"""The client library of server-group messaging, for applications inside a server.

Shaped like the original libservergroup (seed 000, "USAGE"):

    client = init(broadcast_cb, notification_cb, status_cb)
    # select/poll on client.fileno(); when readable:
    client.process()            # calls the callbacks
    client.broadcast("text")    # to every other member of the group
    seq = client.request_status()

Callbacks (each optional):
- `broadcast_cb(text, source_instance)`: a broadcast from another member.
- `notification_cb(event)`: `event` is the notification as a parsed JSON
  object (a `dict` with `event_type`, `priority`, `timestamp`, `payload`);
  the original passed the same object as JSON text (`json.dumps(event)`
  gives it back).
- `status_cb(servers)`: once per status query, on `status_response_done`,
  with the list of the members' server-info dicts (what the original joined
  into a JSON list); responses to an older query are dropped.
- `nack_cb(orig_msg_type, reason)`: the host refused a request. Without a
  `nack_cb`, `process()` raises `NackError` with the host's reason when it
  meets the nack (messages after it stay queued for the next call).

`receive()` returns the same as typed events (below) without calling
callbacks, for programs that prefer them (the sample app does).

Only datagrams from the guest agent whose outer `source_addr` is
`cgcs.server_grp` and whose `version` is 2 are accepted (spec section 4);
anything else is dropped and counted in `dropped`.

Several applications per server: bind another `address` (at most 15
characters); the client then sends `subscribe` so the host sends the group's
broadcasts and notifications there too (status replies and nacks always come
back to the asking address). The host forgets subscriptions when the guest's
channel or the host daemon restarts, so the client renews its subscription
with every `request_status()` and every `resubscribe_interval` seconds
during `process()` (the async client in the background).

`AsyncServerGroupClient` is the same for asyncio: `async with`, `async for
event in client.events()` yielding `BroadcastReceived`,
`NotificationReceived`, `StatusReceived` and `NackReceived`.

Errors are `GroupMessagingError`s: `InvalidBroadcast` (too long, NUL,
newline: raised before anything is sent), `AgentUnavailable` (no guest agent
at `cgcs.messaging` in this network namespace), `AgentBusy`, `AddressInUse`,
`NackError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final

from servergroup.common.errors import LocalError, RemoteError, ServergroupError
from servergroup.groups.protocol import (
    Broadcast,
    GroupMessage,
    Nack,
    Notification,
    StatusQuery,
    StatusResponse,
    StatusResponseDone,
    Subscribe,
    Unsubscribe,
    check_broadcast_text,
    decode_group_message,
    encode_group_message,
)
from servergroup.guestcomm.protocol import (
    MAX_ADDR_LENGTH,
    MESSAGING_ADDR,
    SERVER_GROUP_ADDR,
    Envelope,
    JsonObject,
    ProtocolError,
    decode_envelope,
    encode_envelope,
)
from servergroup.guestcomm.sockets import AbstractSocket, Datagram, SendResult
from servergroup.guestcomm.sockets import AddressInUse as _SocketAddressInUse

log = logging.getLogger(__name__)

#: How long a send may wait for room in the agent's queue.
DEFAULT_SEND_TIMEOUT: Final = 2.0
#: How often a client at another address renews its subscription.
DEFAULT_RESUBSCRIBE_INTERVAL: Final = 30.0
_SEND_RETRY_INTERVAL: Final = 0.002


# -- errors ------------------------------------------------------------------------


class GroupMessagingError(ServergroupError):
    """Root of the client library's errors; the message is one sentence."""


class InvalidBroadcast(GroupMessagingError, LocalError):
    """The text cannot be broadcast (too long, NUL, newline); nothing was sent."""

    exit_status = 2


class AddressInUse(GroupMessagingError, LocalError):
    """Another application has the address in this network namespace."""


class InvalidAddress(GroupMessagingError, LocalError):
    """An address that is not a valid abstract name for the protocol."""

    exit_status = 2


class AgentUnavailable(GroupMessagingError, RemoteError):
    """No guest agent is bound at its address in this network namespace."""


class AgentBusy(GroupMessagingError, RemoteError):
    """The guest agent's queue stayed full for the whole send timeout."""


class NackError(GroupMessagingError, RemoteError):
    """The host refused a request; `reason` is its `log_msg`."""

    def __init__(self, orig_msg_type: str, reason: str) -> None:
        super().__init__(f"the host refused the {orig_msg_type}: {reason}")
        self.orig_msg_type = orig_msg_type
        self.reason = reason


# -- events --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BroadcastReceived:
    """A broadcast from another member; `seq` numbers the group's broadcasts (None: old host)."""

    text: str
    source_instance: str | None
    seq: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationReceived:
    """Another member changed; `event` has `event_type`, `priority`, `timestamp`, `payload`."""

    event: JsonObject

    @property
    def event_type(self) -> str:
        value = self.event.get("event_type")
        return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReceived:
    """Every member's server info, the answer to status query `seq`."""

    seq: int
    servers: tuple[JsonObject, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class NackReceived:
    """The host refused a request of type `orig_msg_type`, for `reason`."""

    orig_msg_type: str
    reason: str


ClientEvent = BroadcastReceived | NotificationReceived | StatusReceived | NackReceived


def _agent_missing(agent: str) -> AgentUnavailable:
    return AgentUnavailable(
        f"no guest agent at {agent} in this network namespace: start `servergroup guest`"
    )


@dataclass(slots=True)
class ClientCore:
    """What both clients share, without I/O: the datagrams to send, the events received."""

    address: str = SERVER_GROUP_ADDR
    agent: str = MESSAGING_ADDR
    dropped: int = 0  # datagrams that were not for us or not valid
    _seqs: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _latest_seq: int | None = None
    _responses: list[JsonObject] = field(default_factory=list)

    def __post_init__(self) -> None:
        for what, name in (("address", self.address), ("agent address", self.agent)):
            size = len(name.encode("utf-8", "surrogatepass"))
            if not 0 < size <= MAX_ADDR_LENGTH or "\0" in name:
                raise InvalidAddress(
                    f"the {what} {name!r} must be 1 to {MAX_ADDR_LENGTH} bytes without NUL"
                )

    @property
    def subscribes(self) -> bool:
        """Whether this client needs a subscription to get the group's traffic."""
        return self.address != SERVER_GROUP_ADDR

    @property
    def latest_seq(self) -> int | None:
        return self._latest_seq

    def datagram(self, msg: GroupMessage) -> bytes:
        env = Envelope(dest_addr=SERVER_GROUP_ADDR, data=encode_group_message(msg))
        return encode_envelope(env)

    def broadcast(self, text: str) -> bytes:
        if not isinstance(text, str):
            raise InvalidBroadcast("the broadcast text must be a str")
        reason = check_broadcast_text(text)
        if reason is not None:
            raise InvalidBroadcast(reason)
        return self.datagram(Broadcast(text=text))

    def status_query(self) -> tuple[int, bytes]:
        seq = next(self._seqs)
        self._latest_seq = seq
        self._responses = []
        return seq, self.datagram(StatusQuery(seq=seq))

    def receive(self, datagram: Datagram) -> ClientEvent | None:
        """The event in one received datagram, or None (dropped, or a partial status)."""
        if datagram.truncated or datagram.sender != self.agent:
            self.dropped += 1
            return None
        try:
            env = decode_envelope(datagram.data)
            if env.source_addr != SERVER_GROUP_ADDR:
                raise ProtocolError(f"source_addr is {env.source_addr!r}")
            msg = decode_group_message(env.data)
        except ProtocolError as exc:
            self.dropped += 1
            log.debug("dropped a datagram from the agent: %s", exc)
            return None
        match msg:
            case Broadcast(text=text, source_instance=source, seq=seq):
                return BroadcastReceived(text=text, source_instance=source, seq=seq)
            case Notification(event=event):
                return NotificationReceived(event=event)
            case StatusResponse(seq=seq, server=server):
                if seq == self._latest_seq:
                    self._responses.append(server)
                else:
                    self.dropped += 1
                return None
            case StatusResponseDone(seq=seq):
                if seq != self._latest_seq:
                    self.dropped += 1
                    return None
                servers, self._responses = tuple(self._responses), []
                return StatusReceived(seq=seq, servers=servers)
            case Nack(orig_msg_type=orig, log_msg=reason):
                return NackReceived(orig_msg_type=orig, reason=reason)
            case StatusQuery() | Subscribe() | Unsubscribe():
                self.dropped += 1
                return None


def _bind(address: str) -> AbstractSocket:
    try:
        return AbstractSocket(address)
    except _SocketAddressInUse:
        raise AddressInUse(
            f"the address {address!r} is already bound in this network namespace "
            "(another server-group app?): give another address"
        ) from None


def _send_result(result: SendResult, agent: str) -> bool:
    """True when sent, False to retry later; raises when retrying cannot help."""
    if result is SendResult.SENT:
        return True
    if result is SendResult.NOT_BOUND:
        raise _agent_missing(agent)
    if result is SendResult.TOO_BIG:
        raise GroupMessagingError("the message is too big for one datagram")
    return False


def _busy(agent: str, timeout: float) -> AgentBusy:
    return AgentBusy(f"the guest agent at {agent} did not take the message within {timeout:g} s")


# -- the synchronous client ------------------------------------------------------------

BroadcastCallback = Callable[[str, str | None], object]
NotificationCallback = Callable[[JsonObject], object]
StatusCallback = Callable[[list[JsonObject]], object]
NackCallback = Callable[[str, str], object]


class ServerGroupClient:
    """A synchronous client; see the module docstring. Build it with `init`."""

    def __init__(
        self,
        broadcast_cb: BroadcastCallback | None = None,
        notification_cb: NotificationCallback | None = None,
        status_cb: StatusCallback | None = None,
        *,
        address: str = SERVER_GROUP_ADDR,
        agent: str = MESSAGING_ADDR,
        nack_cb: NackCallback | None = None,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        resubscribe_interval: float = DEFAULT_RESUBSCRIBE_INTERVAL,
    ) -> None:
        self._core = ClientCore(address=address, agent=agent)
        self.broadcast_cb = broadcast_cb
        self.notification_cb = notification_cb
        self.status_cb = status_cb
        self.nack_cb = nack_cb
        self._send_timeout = send_timeout
        self._resubscribe_interval = resubscribe_interval
        self._subscribed_at: float | None = None
        self._sock: AbstractSocket | None = _bind(address)
        if self._core.subscribes:
            try:
                self.subscribe()
            except BaseException:
                self.close()
                raise

    @property
    def address(self) -> str:
        return self._core.address

    @property
    def dropped(self) -> int:
        """Datagrams dropped: not from the agent, not server-group traffic, stale status."""
        return self._core.dropped

    def fileno(self) -> int:
        """The socket to watch with select/poll; call `process()` when it is readable."""
        return self._socket().fileno()

    def process(self) -> int:
        """Handle every message waiting now, calling the callbacks; returns how many.

        Raises `NackError` at a nack when no `nack_cb` was given.
        """
        handled = 0
        for event in self._events():
            handled += 1
            self._dispatch(event)
        return handled

    def receive(self) -> list[ClientEvent]:
        """The typed events waiting now, without calling the callbacks (nacks included)."""
        return list(self._events())

    def _events(self) -> Iterator[ClientEvent]:
        sock = self._socket()
        while True:
            datagram = sock.receive_nowait()
            if datagram is None:
                break
            event = self._core.receive(datagram)
            if event is not None:
                yield event
        self._renew_subscription()

    def broadcast(self, text: str) -> None:
        """Send `text` to every other member of the group (raises `InvalidBroadcast` first)."""
        self._send(self._core.broadcast(text))

    def request_status(self) -> int:
        """Ask for every member's status; `status_cb` gets the answer. Returns the query's seq."""
        if self._core.subscribes:
            self.subscribe()
        seq, datagram = self._core.status_query()
        self._send(datagram)
        return seq

    def subscribe(self) -> None:
        """(Re)subscribe this address to the group's traffic (done for you; see above)."""
        if self._core.subscribes:
            self._send(self._core.datagram(Subscribe()))
            self._subscribed_at = time.monotonic()

    def close(self) -> None:
        """Unsubscribe (when subscribed) and release the address; closing twice is fine."""
        if self._sock is None:
            return
        if self._subscribed_at is not None:
            with contextlib.suppress(GroupMessagingError, OSError):
                self._sock.send_to(self._core.agent, self._core.datagram(Unsubscribe()))
        self._sock.close()
        self._sock = None

    def __enter__(self) -> ServerGroupClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _socket(self) -> AbstractSocket:
        if self._sock is None:
            raise GroupMessagingError("the server-group client is closed")
        return self._sock

    def _send(self, datagram: bytes) -> None:
        sock = self._socket()
        deadline = time.monotonic() + self._send_timeout
        while not _send_result(sock.send_to(self._core.agent, datagram), self._core.agent):
            if time.monotonic() >= deadline:
                raise _busy(self._core.agent, self._send_timeout)
            time.sleep(_SEND_RETRY_INTERVAL)

    def _renew_subscription(self) -> None:
        at = self._subscribed_at
        if at is None or time.monotonic() - at < self._resubscribe_interval:
            return
        try:
            self.subscribe()
        except GroupMessagingError as exc:
            log.info("cannot renew the subscription of %r yet: %s", self.address, exc)

    def _dispatch(self, event: ClientEvent) -> None:
        match event:
            case BroadcastReceived(text=text, source_instance=source):
                if self.broadcast_cb is not None:
                    self.broadcast_cb(text, source)
            case NotificationReceived(event=notification):
                if self.notification_cb is not None:
                    self.notification_cb(notification)
            case StatusReceived(servers=servers):
                if self.status_cb is not None:
                    self.status_cb(list(servers))
            case NackReceived(orig_msg_type=orig, reason=reason):
                if self.nack_cb is None:
                    raise NackError(orig, reason)
                self.nack_cb(orig, reason)


def init(
    broadcast_cb: BroadcastCallback | None = None,
    notification_cb: NotificationCallback | None = None,
    status_cb: StatusCallback | None = None,
    *,
    address: str = SERVER_GROUP_ADDR,
    agent: str = MESSAGING_ADDR,
    nack_cb: NackCallback | None = None,
) -> ServerGroupClient:
    """Bind `address` and return the client (the original's `init_sg`)."""
    return ServerGroupClient(
        broadcast_cb, notification_cb, status_cb, address=address, agent=agent, nack_cb=nack_cb
    )


# -- the asyncio client ------------------------------------------------------------------


class AsyncServerGroupClient:
    """The asyncio client: `async with AsyncServerGroupClient() as c: async for e in c.events()`.

    Nacks arrive as `NackReceived` events (nothing raises for them).
    """

    def __init__(
        self,
        *,
        address: str = SERVER_GROUP_ADDR,
        agent: str = MESSAGING_ADDR,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        resubscribe_interval: float = DEFAULT_RESUBSCRIBE_INTERVAL,
    ) -> None:
        self._core = ClientCore(address=address, agent=agent)
        self._send_timeout = send_timeout
        self._resubscribe_interval = resubscribe_interval
        self._sock: AbstractSocket | None = None
        self._renewer: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return self._core.address

    @property
    def dropped(self) -> int:
        return self._core.dropped

    def bind(self) -> None:
        """Bind the address now (`open` does it when not done yet); binding twice is fine.

        The socket belongs to the network namespace of the calling thread.
        """
        if self._sock is None:
            self._sock = _bind(self._core.address)

    async def open(self) -> None:
        """Bind the address and, at another address than the default, subscribe."""
        if self._renewer is not None:
            return
        self.bind()
        if self._core.subscribes:
            try:
                await self.subscribe()
            except BaseException:
                await self.close()
                raise
            self._renewer = asyncio.create_task(self._renew(), name="servergroup-resubscribe")

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self._sock is None:
            return
        if self._core.subscribes:
            with contextlib.suppress(OSError):
                self._sock.send_to(self._core.agent, self._core.datagram(Unsubscribe()))
        self._sock.close()
        self._sock = None

    async def __aenter__(self) -> AsyncServerGroupClient:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def broadcast(self, text: str) -> None:
        """Send `text` to every other member (raises `InvalidBroadcast` before sending)."""
        await self._send(self._core.broadcast(text))

    async def request_status(self) -> int:
        """Ask for every member's status; a `StatusReceived` with this seq follows."""
        if self._core.subscribes:
            await self.subscribe()
        seq, datagram = self._core.status_query()
        await self._send(datagram)
        return seq

    async def subscribe(self) -> None:
        if self._core.subscribes:
            await self._send(self._core.datagram(Subscribe()))

    async def events(self) -> AsyncIterator[ClientEvent]:
        """Every event, as it arrives, until the client is closed."""
        while True:
            sock = self._socket()
            datagram = await sock.receive()
            event = self._core.receive(datagram)
            if event is not None:
                yield event

    async def next_event(self, timeout: float) -> ClientEvent:
        """The next event; `TimeoutError` after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                event = self._core.receive(await self._socket().receive())
                if event is not None:
                    return event

    def _socket(self) -> AbstractSocket:
        if self._sock is None:
            raise GroupMessagingError("the server-group client is not open")
        return self._sock

    async def _send(self, datagram: bytes) -> None:
        sock = self._socket()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._send_timeout
        while not _send_result(sock.send_to(self._core.agent, datagram), self._core.agent):
            if loop.time() >= deadline:
                raise _busy(self._core.agent, self._send_timeout)
            await asyncio.sleep(_SEND_RETRY_INTERVAL)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._resubscribe_interval)
            try:
                await self.subscribe()
            except GroupMessagingError as exc:
                log.info("cannot renew the subscription of %r yet: %s", self.address, exc)


__all__ = [
    "DEFAULT_RESUBSCRIBE_INTERVAL",
    "DEFAULT_SEND_TIMEOUT",
    "AddressInUse",
    "AgentBusy",
    "AgentUnavailable",
    "AsyncServerGroupClient",
    "BroadcastReceived",
    "ClientCore",
    "ClientEvent",
    "GroupMessagingError",
    "InvalidAddress",
    "InvalidBroadcast",
    "NackError",
    "NackReceived",
    "NotificationReceived",
    "ServerGroupClient",
    "StatusReceived",
    "init",
]
