"""The etcd backend of the `Coordinator` protocol, on the aetcd asyncio client.

Theory of operation:

- One aetcd `Client` (one gRPC channel) at a time, to one member of the
  endpoint list. Every request is bounded by `request_timeout` (renewals by
  the caller's own, shorter, timeout). A request that fails for a transport
  reason (unavailable, deadline, no leader) *rotates* to the next member:
  the old channel is closed, a new one opened, the connection `generation`
  increases, and the request is retried with jittered backoff until the
  operation's deadline; then `StoreUnavailable`.
- A member that hangs (SIGSTOP, partition) is noticed by the first request
  that times out against it; the session's lease renewals, which run every
  few hundred milliseconds, make sure that happens quickly.
- Watches run as tasks that follow the generation: when the connection
  rotates, or the watch stream ends with an error, the watch is re-created on
  the new channel from the revision of the last event it delivered. Events of
  that revision already delivered are skipped by key, so across a reconnect
  no event is lost or repeated (etcd's watch order is by revision, then by
  key order inside a transaction).
- Transactions that must return the store revision (create, guarded writes)
  use the KV stub of the aetcd client directly, because aetcd's
  `transaction()` drops the response header.
- `create` is made safe to retry: if an earlier attempt actually succeeded
  before timing out, the key exists with our lease and value, and we take
  its create revision as ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aetcd
import grpc
from aetcd import rpc

from servergroup.common.backoff import Backoff
from servergroup.common.clock import Clock, SystemClock
from servergroup.config import CoordinationConfig, Endpoint
from servergroup.coordination.errors import (
    CoordinationError,
    FencingError,
    LeaseNotFound,
    RevisionConflict,
    StoreFull,
    StoreUnavailable,
    WatchCompacted,
)
from servergroup.coordination.tls import TlsClient, load_credentials
from servergroup.coordination.types import (
    Compare,
    CompareTarget,
    Delete,
    EventKind,
    Get,
    Guard,
    KeyValue,
    Lease,
    Put,
    Range,
    TxnOp,
    TxnResult,
    WatchEvent,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Retries after a transport error: 20 ms doubling to 0.5 s, each drawn from 0.5x to 1.5x.
RETRY_BACKOFF = Backoff(initial=0.02, max_delay=0.5, factor=2.0, jitter=(0.5, 1.5))

# gRPC status codes that mean "this member cannot serve us now": try another.
_TRANSPORT_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


# Which field of etcd's Compare holds each numeric target.
_COMPARE_FIELDS = {
    CompareTarget.CREATE: (rpc.Compare.CREATE, "create_revision"),
    CompareTarget.MOD: (rpc.Compare.MOD, "mod_revision"),
    CompareTarget.VERSION: (rpc.Compare.VERSION, "version"),
}


# What gRPC's error details say when a TLS handshake failed (a certificate that is
# not trusted, or none where the member demands one).
_TLS_FAILURES = ("TSI_", "SSL", "ssl", "handshake", "Handshake", "certificate")


class _TransportError(Exception):
    """A failure that rotating to another member may cure."""


def _range_end(prefix: bytes) -> bytes:
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # prefix of all 0xff: to the end of the key space


def _is_transport(exc: BaseException) -> bool:
    if isinstance(exc, (asyncio.TimeoutError, _TransportError, ConnectionError, OSError)):
        return True
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in _TRANSPORT_CODES
    if isinstance(
        exc,
        (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError, aetcd.WatchTimeoutError),
    ):
        return True
    if isinstance(exc, aetcd.InternalError):
        return True
    if isinstance(exc, aetcd.ClientError):
        cause = exc.__cause__
        return cause is not None and _is_transport(cause)
    return False


async def _bounded(awaitable: Awaitable[T], timeout: float) -> T:
    """Await with a deadline, abandoning (cancelled, not awaited) what overruns it.

    `asyncio.wait_for` waits for the cancelled operation to finish; a gRPC or
    aetcd coroutine that is slow to honour cancellation (a lock it must take
    back, a stream that never answers) would then hold us past any deadline.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_consume_result)
        raise TimeoutError
    return task.result()


def _consume_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


def _cancelled_by_channel_close() -> bool:
    """True if a CancelledError came from gRPC (channel closed), not from our own cancel."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0


def _store_full(exc: BaseException) -> bool:
    """True for etcd's NOSPACE refusal ("etcdserver: mvcc: database space exceeded")."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return "database space exceeded" in (exc.details() or "")
    return exc.__cause__ is not None and _store_full(exc.__cause__)


def _lease_gone(exc: BaseException) -> bool:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() == grpc.StatusCode.NOT_FOUND or "lease not found" in (exc.details() or "")
    if isinstance(exc, aetcd.ClientError):
        return "lease not found" in str(exc) or (
            exc.__cause__ is not None and _lease_gone(exc.__cause__)
        )
    return False


class EtcdCoordinator:
    """A `Coordinator` on a real etcd cluster (one or more members)."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        prefix: str,
        config: CoordinationConfig | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("EtcdCoordinator needs at least one endpoint")
        self._endpoints = tuple(endpoints)
        self._prefix = prefix
        self._config = config or CoordinationConfig()
        # https:// endpoints: the config's CA and client certificate, read once, now.
        self._credentials = (
            load_credentials(self._config) if any(e.secure for e in self._endpoints) else None
        )
        self._clock: Clock = clock or SystemClock()
        self._index = random.randrange(len(self._endpoints))
        self._client: aetcd.Client | None = None
        self._generation = 0
        self._rotated = asyncio.Event()
        self._closed = False
        self._watches: set[_EtcdWatch] = set()
        self._closing: set[asyncio.Task[None]] = set()

    # -- connection management ---------------------------------------------

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """Every member this client may talk to."""
        return self._endpoints

    @property
    def endpoint(self) -> Endpoint:
        """The member this client is talking to now."""
        return self._endpoints[self._index]

    @property
    def generation(self) -> int:
        """Increases each time the client moves to a new connection."""
        return self._generation

    def _connected_client(self) -> aetcd.Client:
        if self._closed:
            raise CoordinationError("the coordinator is closed")
        if self._client is None:
            ep = self._endpoints[self._index]
            # Our own deadlines bound every call; aetcd's timeout stays unset.
            if ep.secure and self._credentials is not None:
                self._client = TlsClient(
                    host=ep.host, port=ep.port, credentials=self._credentials, timeout=None
                )
            else:
                self._client = aetcd.Client(host=ep.host, port=ep.port, timeout=None)
        return self._client

    async def _ensure_client(self) -> aetcd.Client:
        client = self._connected_client()
        await client.connect()
        return client

    def rotate(self, generation: int) -> None:
        """Move to the next member, unless someone already did since `generation`."""
        if generation != self._generation or self._closed:
            return
        old = self._client
        self._client = None
        self._index = (self._index + 1) % len(self._endpoints)
        self._generation += 1
        self._rotated.set()
        self._rotated = asyncio.Event()
        log.info("etcd: switching to %s", self._endpoints[self._index])
        if old is not None:
            task = asyncio.get_running_loop().create_task(self._close_client(old))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_client(client: aetcd.Client) -> None:
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            await _bounded(client.close(), 2.0)

    async def _call(
        self,
        what: str,
        fn: Callable[[aetcd.Client], Awaitable[T]],
        *,
        attempt_timeout: float | None = None,
        deadline_timeout: float | None = None,
    ) -> T:
        """Run `fn` against the current member, rotating and retrying on transport errors."""
        attempt = attempt_timeout or self._config.request_timeout
        total = deadline_timeout if deadline_timeout is not None else self._config.operation_timeout
        deadline = self._clock.monotonic() + total
        last: BaseException | None = None
        async for _ in RETRY_BACKOFF.attempts(self._clock, total):
            generation = self._generation
            remaining = deadline - self._clock.monotonic()
            try:
                limit = max(0.01, min(attempt, remaining))
                client = await _bounded(self._ensure_client(), limit)
                return await _bounded(fn(client), limit)
            except asyncio.CancelledError as exc:
                if not _cancelled_by_channel_close():
                    raise
                last = exc  # another task rotated and closed the channel under us
            except Exception as exc:
                if _store_full(exc):  # RESOURCE_EXHAUSTED, but no other member can help
                    raise self._full(what) from None
                if isinstance(exc, AttributeError) and self._generation != generation:
                    # Another task rotated meanwhile and closed this client under us
                    # (aetcd's close drops its stubs: "'NoneType' object has no
                    # attribute 'Txn'"): try again on the new one.
                    last = exc
                    continue
                if not _is_transport(exc):
                    raise
                last = exc
                self.rotate(generation)
        where = ", ".join(str(e) for e in self._endpoints)
        reason = type(last).__name__ if last is not None else "timeout"
        detail = str(last).strip().splitlines()[0] if last is not None and str(last) else ""
        if isinstance(last, grpc.aio.AioRpcError) and last.details():
            detail = str(last.details()).strip()  # e.g. why a TLS handshake failed
        hint = ""
        if self._credentials is not None and any(m in detail for m in _TLS_FAILURES):
            hint = "; the TLS handshake failed: check coordination ca_file, cert_file and key_file"
        raise StoreUnavailable(
            f"etcd at {where} did not answer {what} within {total:g} s "
            f"({reason}{': ' + detail if detail else ''}){hint}."
        )

    def _full(self, what: str) -> StoreFull:
        where = ",".join(str(e) for e in self._endpoints)
        return StoreFull(
            f"etcd at {where} refused {what}: its database reached its space quota (NOSPACE "
            f"alarm) and it accepts no write until an operator compacts its history, "
            f"defragments it and disarms the alarm, e.g. `etcdctl --endpoints={where} compact "
            f"<revision from 'endpoint status -w json'>`, then `defrag` and `alarm disarm`."
        )

    # -- key/value -----------------------------------------------------------

    def _k(self, key: str) -> bytes:
        return (self._prefix + key).encode()

    def _kv(self, raw: Any) -> KeyValue:
        return KeyValue(
            key=raw.key.decode()[len(self._prefix) :],
            value=bytes(raw.value),
            create_revision=raw.create_revision,
            mod_revision=raw.mod_revision,
            version=raw.version,
            lease=raw.lease,
        )

    async def get(self, key: str) -> KeyValue | None:
        async def op(c: aetcd.Client) -> Any:
            return await c.kvstub.Range(rpc.RangeRequest(key=self._k(key)))

        resp = await self._call(f"get {key}", op)
        return self._kv(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: str) -> Range:
        start = self._k(prefix)

        async def op(c: aetcd.Client) -> Any:
            req = rpc.RangeRequest(
                key=start,
                range_end=_range_end(start),
                sort_order=rpc.RangeRequest.ASCEND,
                sort_target=rpc.RangeRequest.KEY,
            )
            return await c.kvstub.Range(req)

        resp = await self._call(f"get_prefix {prefix}", op)
        return Range(items=tuple(self._kv(kv) for kv in resp.kvs), revision=resp.header.revision)

    def _guard_compare(self, guard: Guard) -> Any:
        return rpc.Compare(
            result=rpc.Compare.EQUAL,
            target=rpc.Compare.CREATE,
            key=self._k(guard.key),
            create_revision=guard.create_revision,
        )

    async def _txn(self, what: str, request: Any) -> Any:
        async def op(c: aetcd.Client) -> Any:
            return await c.kvstub.Txn(request)

        try:
            return await self._call(what, op)
        except grpc.aio.AioRpcError as exc:
            if _lease_gone(exc):
                raise LeaseNotFound(f"{what}: the lease has expired") from None
            raise CoordinationError(f"{what} failed: {exc.details()}") from None

    def _compare(self, c: Compare) -> Any:
        key = self._k(c.key)
        if c.target is CompareTarget.VALUE:
            assert isinstance(c.expected, bytes)
            return rpc.Compare(
                result=rpc.Compare.EQUAL, target=rpc.Compare.VALUE, key=key, value=c.expected
            )
        target, field = _COMPARE_FIELDS[c.target]
        return rpc.Compare(result=rpc.Compare.EQUAL, target=target, key=key, **{field: c.expected})

    def _request_op(self, op: TxnOp) -> Any:
        key = self._k(op.key)
        if isinstance(op, Put):
            return rpc.RequestOp(
                request_put=rpc.PutRequest(key=key, value=op.value, lease=op.lease)
            )
        if isinstance(op, Delete):
            return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))
        return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        request = rpc.TxnRequest(
            compare=[self._compare(c) for c in compares],
            success=[self._request_op(op) for op in success],
            failure=[self._request_op(op) for op in failure],
        )
        what = "transaction on " + ", ".join(sorted({op.key for op in (*success, *failure)}))
        resp = await self._txn(what, request)
        ops = success if resp.succeeded else failure
        reads: dict[str, KeyValue | None] = {}
        deleted: set[str] = set()
        for op, answer in zip(ops, resp.responses, strict=True):
            if isinstance(op, Get):
                kvs = answer.response_range.kvs
                reads[op.key] = self._kv(kvs[0]) if kvs else None
            elif isinstance(op, Delete) and answer.response_delete_range.deleted:
                deleted.add(op.key)
        return TxnResult(
            succeeded=bool(resp.succeeded),
            revision=int(resp.header.revision),
            reads=reads,
            deleted=frozenset(deleted),
        )

    def _conditions(self, key: str, guard: Guard | None, if_mod_revision: int | None) -> Any:
        compare = [self._guard_compare(guard)] if guard else []
        if if_mod_revision is not None:
            compare.append(self._compare(Compare.unchanged(key, if_mod_revision)))
        failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=self._k(key)))]
        if guard is not None and guard.key != key:
            failure.append(rpc.RequestOp(request_range=rpc.RangeRequest(key=self._k(guard.key))))
        return compare, failure

    def _refusal(
        self, what: str, key: str, guard: Guard | None, if_mod_revision: int | None, resp: Any
    ) -> CoordinationError:
        """Why a guarded or conditional write was refused, from its failure reads."""
        current = resp.responses[0].response_range.kvs
        if guard is not None:
            held = resp.responses[-1].response_range.kvs
            if not held or held[0].create_revision != guard.create_revision:
                return FencingError(f"{what} {key} refused: fencing token is stale")
        now = current[0].mod_revision if current else 0
        return RevisionConflict(
            f"{what} {key} refused: it changed since revision {if_mod_revision} (now {now})"
        )

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        lease: int = 0,
        guard: Guard | None = None,
        if_mod_revision: int | None = None,
    ) -> int:
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=self._k(key), value=value, lease=lease))
        compare, failure = self._conditions(key, guard, if_mod_revision)
        resp = await self._txn(
            f"put {key}", rpc.TxnRequest(compare=compare, success=[put], failure=failure)
        )
        if resp.succeeded:
            return int(resp.header.revision)
        current = resp.responses[0].response_range.kvs
        refusal = self._refusal("write to", key, guard, if_mod_revision, resp)
        if (
            isinstance(refusal, RevisionConflict)
            and current
            and current[0].value == value
            and current[0].lease == lease
        ):
            return int(current[0].mod_revision)  # our own earlier attempt took effect
        raise refusal

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int | None:
        full = self._k(key)
        absent = rpc.Compare(
            result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=full, create_revision=0
        )
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=full, value=value, lease=lease))
        read = rpc.RequestOp(request_range=rpc.RangeRequest(key=full))
        resp = await self._txn(
            f"create {key}", rpc.TxnRequest(compare=[absent], success=[put], failure=[read])
        )
        if resp.succeeded:
            return int(resp.header.revision)
        kvs = resp.responses[0].response_range.kvs
        if kvs and lease and kvs[0].lease == lease and kvs[0].value == value:
            return int(kvs[0].create_revision)  # our own earlier attempt won
        return None

    async def delete(
        self, key: str, *, guard: Guard | None = None, if_mod_revision: int | None = None
    ) -> bool:
        op_ = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=self._k(key)))
        compare, failure = self._conditions(key, guard, if_mod_revision)
        resp = await self._txn(
            f"delete {key}", rpc.TxnRequest(compare=compare, success=[op_], failure=failure)
        )
        if not resp.succeeded:
            raise self._refusal("delete of", key, guard, if_mod_revision, resp)
        return bool(resp.responses[0].response_delete_range.deleted)

    async def delete_prefix(self, prefix: str) -> int:
        start = self._k(prefix)

        async def op(c: aetcd.Client) -> Any:
            req = rpc.DeleteRangeRequest(key=start, range_end=_range_end(start))
            return await c.kvstub.DeleteRange(req)

        resp = await self._call(f"delete_prefix {prefix}", op)
        return int(resp.deleted)

    # -- leases ----------------------------------------------------------------

    async def grant(self, ttl: int) -> Lease:
        async def op(c: aetcd.Client) -> Any:
            return await c.leasestub.LeaseGrant(rpc.LeaseGrantRequest(TTL=int(ttl)))

        resp = await self._call("lease grant", op)
        if resp.error:
            raise CoordinationError(f"lease grant failed: {resp.error}")
        return Lease(id=int(resp.ID), ttl=int(resp.TTL))

    async def keep_alive(self, lease_id: int, *, timeout: float | None = None) -> int:
        async def op(c: aetcd.Client) -> Any:
            call = c.leasestub.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]))
            try:
                async for reply in call:
                    return reply
                raise _TransportError("keep-alive stream ended without a reply")
            finally:
                call.cancel()

        attempt = timeout or self._config.renew_timeout
        reply = await self._call(
            "lease keep-alive", op, attempt_timeout=attempt, deadline_timeout=attempt
        )
        if reply.TTL <= 0:
            raise LeaseNotFound(f"lease {lease_id:x} has expired or was revoked")
        return int(reply.TTL)

    async def revoke(self, lease_id: int) -> None:
        async def op(c: aetcd.Client) -> Any:
            return await c.leasestub.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease_id))

        try:
            await self._call("lease revoke", op)
        except grpc.aio.AioRpcError as exc:
            if not _lease_gone(exc):
                raise CoordinationError(f"lease revoke failed: {exc.details()}") from None

    # -- watches -----------------------------------------------------------------

    async def watch(self, prefix: str, *, start_revision: int) -> _EtcdWatch:
        w = _EtcdWatch(self, prefix, start_revision)
        self._watches.add(w)
        await w.start()
        return w

    async def _open_watch(self, key: bytes, start_revision: int) -> tuple[Any, int, asyncio.Event]:
        """Create an aetcd watch on the current member; return it, the generation it was
        made on and that generation's `rotated` event (set once the client moves on:
        already set if it moved while the watch was being made, so that a watch made on
        a client closed meanwhile is left at once, not waited on for ever)."""
        generation = self._generation
        rotated = self._rotated
        client = await _bounded(self._ensure_client(), self._config.request_timeout)
        w = await _bounded(
            client.watch(key, range_end=_range_end(key), start_revision=start_revision),
            self._config.request_timeout,
        )
        return w, generation, rotated

    @property
    def rotated(self) -> asyncio.Event:
        """Set when the client moves to another connection (a fresh event each time)."""
        return self._rotated

    async def close(self) -> None:
        for w in list(self._watches):
            await w.close()
        self._watches.clear()
        self._closed = True
        if self._client is not None:
            await self._close_client(self._client)
            self._client = None
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def __aenter__(self) -> EtcdCoordinator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _EtcdWatch:
    """A resumable watch: follows the coordinator across reconnects."""

    def __init__(self, owner: EtcdCoordinator, prefix: str, start_revision: int) -> None:
        self._owner = owner
        self._key = owner._k(prefix)
        self._strip = len(owner.prefix)
        self._next_revision = max(1, start_revision)
        self._seen_at_revision: set[bytes] = set()  # keys delivered at next_revision - 1
        self._queue: asyncio.Queue[WatchEvent | BaseException | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _resume_revision(self) -> int:
        # Re-read the last delivered revision so its remaining events arrive;
        # the ones already delivered are skipped by key.
        return self._next_revision - 1 if self._seen_at_revision else self._next_revision

    def _deliver(self, event: Any) -> None:
        kv = event.kv
        rev = int(kv.mod_revision)
        key = bytes(kv.key)
        if rev < self._next_revision - 1:
            return
        if rev == self._next_revision - 1:
            if key in self._seen_at_revision:
                return
        else:
            self._seen_at_revision = set()
            self._next_revision = rev + 1
        self._seen_at_revision.add(key)
        kind = EventKind.PUT if event.kind == aetcd.EventKind.PUT else EventKind.DELETE
        self._queue.put_nowait(
            WatchEvent(
                kind=kind,
                key=key.decode()[self._strip :],
                value=bytes(kv.value),
                revision=rev,
                create_revision=int(kv.create_revision),
                version=int(kv.version),
                lease=int(kv.lease),
            )
        )

    def _ends_watch(self, exc: BaseException, generation: int) -> bool:
        """Hand `exc` to the consumer if reconnecting cannot cure it; True if the watch ends.

        Whatever failed on a client the coordinator has since moved away from (and
        closed: "Channel is closed") is cured by the next one.
        """
        if isinstance(exc, aetcd.RevisionCompactedError):
            self._queue.put_nowait(
                WatchCompacted(
                    f"watch cannot resume at revision {self._resume_revision()}: "
                    f"etcd compacted up to {exc.compacted_revision}",
                    compact_revision=exc.compacted_revision,
                )
            )
            return True
        if not _is_transport(exc) and generation == self._owner.generation:
            self._queue.put_nowait(CoordinationError(f"watch failed: {exc}"))
            return True
        return False

    async def _run(self) -> None:
        bases = RETRY_BACKOFF.bases()
        base = next(bases)
        while not self._closed:
            generation = self._owner.generation
            try:
                w, generation, rotated = await self._owner._open_watch(
                    self._key, self._resume_revision()
                )
            except asyncio.CancelledError:
                if not _cancelled_by_channel_close():
                    raise
                await asyncio.sleep(RETRY_BACKOFF.draw(base))
                continue
            except Exception as exc:
                if self._ends_watch(exc, generation):
                    return
                self._owner.rotate(generation)
                await asyncio.sleep(RETRY_BACKOFF.draw(base))
                base = next(bases)
                continue
            bases = RETRY_BACKOFF.bases()
            base = next(bases)
            try:
                await self._pump(w, rotated)
            except asyncio.CancelledError:
                if not _cancelled_by_channel_close():
                    raise
            except Exception as exc:
                if self._ends_watch(exc, generation):
                    return
                # The stream broke: rotate so the next attempt tries another member.
                self._owner.rotate(generation)
            finally:
                with contextlib.suppress(Exception, asyncio.TimeoutError):
                    await _bounded(w.cancel(), 1.0)

    async def _pump(self, w: Any, rotated: asyncio.Event) -> None:
        """Deliver events until the stream ends or the coordinator rotates."""
        events = w.__aiter__()
        rotation = asyncio.ensure_future(rotated.wait())
        nxt: asyncio.Future[Any] | None = None
        try:
            while True:
                nxt = asyncio.ensure_future(events.__anext__())
                done, _ = await asyncio.wait({nxt, rotation}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    return
                try:
                    event = nxt.result()
                except StopAsyncIteration:
                    raise _TransportError("watch stream ended") from None
                finally:
                    nxt = None
                self._deliver(event)
        finally:
            rotation.cancel()
            if nxt is not None:
                nxt.cancel()
                await asyncio.gather(nxt, return_exceptions=True)

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[WatchEvent]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._owner._watches.discard(self)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._queue.put_nowait(None)


__all__ = ["EtcdCoordinator"]
