"""The backup's state machine: what it accepts, applies, acknowledges, and when it takes over. Pure.

Theory of operation. The backup follows one primary of one service at one
*generation* (the fencing generation of the pair's key in etcd). It:

- answers a `Hello` with `Welcome` only when the service, the page size,
  the region layout and the disk size are the ones it was started for and
  the generation is no older than any it has seen; otherwise `Refuse`.
- stages each epoch in memory as it arrives (`EpochBegin`, `Pages`,
  `DiskWrite`) and checks it at `EpochEnd`: same epoch, the counts and the
  digest of what it holds (`protocol.EpochDigest`), and for a full epoch
  every page of every region, once and in order. Only then does it emit
  `ApplyCheckpoint` followed by `SendAck`: the driver applies the pages and
  makes the disk writes durable, then acknowledges. **Nothing of an incomplete or
  invalid epoch is ever applied.** An invalid one is dropped with its
  stream (`DropStream`), and the next epoch accepted must be full.
- the first epoch after a hello must be full (re-protection: a new backup
  gets a full copy, then increments); an incremental epoch must be the one
  after the last applied.

Takeover. The primary's heartbeats come on their own channel; a closed
checkpoint stream is not a failure (Remus failed over on it; we do not).
When the primary has been silent for `primary_timeout` and the backup has
applied at least one complete checkpoint, it drops any partial epoch and
asks its driver to claim the pair's fencing key at generation g + 1
(`ClaimActive`). Won: `Activate` (rebuild the service from the last
applied checkpoint and serve). Lost: the primary kept the pair (it went
unprotected): the backup stands down and waits for a new hello. A pair key
seen at a newer generation (`fenced`) stands a follower down and stops an
active one; a waiting backup only notes it.

Invariants: applied epochs increase; `ApplyCheckpoint` is emitted only for
an epoch whose end matched; `Activate` only after a won claim, and at most
once; every refusal is an event the driver logs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from servergroup.common.errors import UsageError
from servergroup.replication.protocol import (
    Ack,
    DiskWrite,
    EpochBegin,
    EpochDigest,
    EpochEnd,
    Heartbeat,
    Hello,
    Message,
    Pages,
    Refuse,
    Welcome,
)

INFINITY = math.inf


class BackupPhase(Enum):
    WAITING = "waiting"  # no primary yet, or it went away before a full checkpoint
    FOLLOWING = "following"  # between epochs
    RECEIVING = "receiving"  # inside an epoch
    CLAIMING = "claiming"  # the primary fell silent; claiming the pair's key
    ACTIVE = "active"  # took over: serving
    STOOD_DOWN = "stood down"  # the primary kept the pair at a newer generation
    STOPPED = "stopped"  # fenced while active


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupConfig:
    service: str
    page_size: int
    regions: tuple[tuple[str, int], ...]
    disk_size: int = 0
    heartbeat_interval: float = 0.1
    primary_timeout: float = 1.0

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0:
            raise UsageError("the heartbeat interval must be positive.")
        if self.primary_timeout <= 2 * self.heartbeat_interval:
            raise UsageError(
                "the primary timeout must be over twice the heartbeat interval,"
                " or one late heartbeat looks like a dead primary."
            )
        for name, size in self.regions:
            if size <= 0 or size % self.page_size:
                raise UsageError(f"region {name!r} is not a whole number of pages.")


# --- actions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SendWelcome:
    generation: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SendRefuse:
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DropStream:
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyCheckpoint:
    """Apply a complete epoch: its pages, then its disk writes (made durable)."""

    epoch: int
    full: bool
    pages: tuple[Pages, ...]
    writes: tuple[DiskWrite, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SendAck:
    generation: int
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SendHeartbeat:
    generation: int
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimActive:
    previous: int
    generation: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Activate:
    """Rebuild the service from the checkpoint of `epoch` and serve, as `generation`."""

    generation: int
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StopService:
    reason: str


# --- events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointRejected:
    reason: str
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryLost:
    reason: str
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StoodDown:
    reason: str
    at: float


BackupAction = (
    SendWelcome
    | SendRefuse
    | DropStream
    | ApplyCheckpoint
    | SendAck
    | SendHeartbeat
    | ClaimActive
    | Activate
    | StopService
    | CheckpointRejected
    | PrimaryLost
    | StoodDown
)


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupStatus:
    phase: BackupPhase
    generation: int
    applied: int
    primary_heard_at: float
    staged_bytes: int


@dataclass(slots=True)
class _Staging:
    begin: EpochBegin
    digest: EpochDigest = field(default_factory=EpochDigest)
    pages: list[Pages] = field(default_factory=list)
    writes: list[DiskWrite] = field(default_factory=list)
    #: Per region, the page a full epoch's next run must start at (it must end at the last).
    covered: list[int] = field(default_factory=list)
    size: int = 0


class BackupMachine:
    """See the module docstring."""

    def __init__(self, config: BackupConfig, *, generation: int, now: float) -> None:
        self._config = config
        self._pages = [size // config.page_size for _, size in config.regions]
        self.generation = generation
        self.phase = BackupPhase.WAITING
        #: The last epoch applied since the last hello (0: none).
        self.applied = 0
        self._needs_full = True
        self._staging: _Staging | None = None
        self._heard_at = now
        self._next_heartbeat_at = INFINITY

    # -- the checkpoint stream -----------------------------------------------------------

    def received(self, message: Message, now: float) -> list[BackupAction]:
        """A message arrived on the checkpoint stream."""
        match message:
            case Hello():
                return self._hello(message, now)
            case Heartbeat():
                return self.heartbeat(message, now)
            case EpochBegin():
                return self._begin(message, now)
            case Pages() | DiskWrite():
                return self._stage(message, now)
            case EpochEnd():
                return self._end(message, now)
            case Welcome() | Refuse() | Ack():
                return self._reject(f"a primary does not send {type(message).__name__}", now)
        raise UsageError(f"{message!r} is not a replication message.")

    def stream_closed(self, now: float) -> list[BackupAction]:
        """The checkpoint stream ended: a partial epoch is dropped, never applied."""
        self._staging = None
        self._needs_full = True
        if self.phase is BackupPhase.RECEIVING:
            self.phase = BackupPhase.FOLLOWING
        return []

    def _hello(self, hello: Hello, now: float) -> list[BackupAction]:
        if self.phase in (BackupPhase.ACTIVE, BackupPhase.CLAIMING, BackupPhase.STOPPED):
            return self._refuse(f"this backup is {self.phase.value}, not following", now)
        if self.phase is BackupPhase.RECEIVING:
            return self._reject("a hello arrived inside an epoch", now)
        cfg = self._config
        if hello.service != cfg.service:
            return self._refuse(
                f"this backup is for service {cfg.service!r}, not {hello.service!r}", now
            )
        if hello.page_size != cfg.page_size:
            return self._refuse(f"the page size is {cfg.page_size}, not {hello.page_size}", now)
        if hello.regions != cfg.regions:
            return self._refuse("the service's regions differ from this backup's", now)
        if hello.disk_size != cfg.disk_size:
            return self._refuse(f"the disk size is {cfg.disk_size}, not {hello.disk_size}", now)
        if hello.generation < self.generation:
            return self._refuse(
                f"generation {hello.generation} is stale (this backup has seen {self.generation})",
                now,
            )
        self.generation = hello.generation
        self.phase = BackupPhase.FOLLOWING
        self.applied = 0
        self._needs_full = True
        self._staging = None
        self._heard_at = now
        self._next_heartbeat_at = now
        return [SendWelcome(generation=hello.generation)]

    def _begin(self, begin: EpochBegin, now: float) -> list[BackupAction]:
        if self.phase is not BackupPhase.FOLLOWING:
            return self._reject(f"an epoch began while the backup is {self.phase.value}", now)
        if begin.generation != self.generation:
            return self._reject(
                f"epoch {begin.epoch} is of generation {begin.generation}, not {self.generation}",
                now,
            )
        if self._needs_full and not begin.full:
            return self._reject(f"epoch {begin.epoch} is incremental; a full one is needed", now)
        if not begin.full and begin.epoch != self.applied + 1:
            return self._reject(f"epoch {begin.epoch} does not follow epoch {self.applied}", now)
        if begin.full and begin.epoch <= self.applied:
            return self._reject(f"full epoch {begin.epoch} is not newer than {self.applied}", now)
        self.phase = BackupPhase.RECEIVING
        self._staging = _Staging(begin=begin, covered=[0] * len(self._pages))
        return []

    def _stage(self, message: Pages | DiskWrite, now: float) -> list[BackupAction]:
        staging = self._staging
        if self.phase is not BackupPhase.RECEIVING or staging is None:
            return self._reject("data arrived outside an epoch", now)
        size = len(message.data)
        if isinstance(message, Pages):
            if message.region >= len(self._pages):
                return self._reject(f"region number {message.region} does not exist", now)
            limit = self._pages[message.region]
            count = 0
            for first, length in message.runs:
                if length <= 0 or first + length > limit:
                    return self._reject(
                        f"pages {first}..{first + length} are not inside region number"
                        f" {message.region}",
                        now,
                    )
                if staging.begin.full:
                    # A full epoch sends each region's pages once, in order.
                    if first != staging.covered[message.region]:
                        return self._reject(
                            f"full epoch {staging.begin.epoch} skips or repeats pages of region"
                            f" number {message.region}",
                            now,
                        )
                    staging.covered[message.region] = first + length
                count += length
            if count == 0 or size != count * self._config.page_size:
                return self._reject(
                    f"{size} bytes of data are not the {count} pages the runs name", now
                )
            staging.pages.append(message)
        else:
            if message.offset + size > self._config.disk_size:
                return self._reject(f"a disk write at {message.offset} overruns the disk", now)
            staging.writes.append(message)
        staging.digest.add(message)
        staging.size += size
        return []

    def _end(self, end: EpochEnd, now: float) -> list[BackupAction]:
        staging = self._staging
        if self.phase is not BackupPhase.RECEIVING or staging is None:
            return self._reject("an epoch ended that never began", now)
        begin = staging.begin
        if end.epoch != begin.epoch:
            return self._reject(f"epoch {begin.epoch} ended as epoch {end.epoch}", now)
        if staging.digest.end(end.epoch) != end:
            return self._reject(
                f"epoch {end.epoch} is not what its end describes (missing, repeated or"
                " changed data)",
                now,
            )
        if begin.full and staging.covered != self._pages:
            return self._reject(f"full epoch {end.epoch} does not cover every page", now)
        self._staging = None
        self.phase = BackupPhase.FOLLOWING
        self.applied = end.epoch
        self._needs_full = False
        return [
            ApplyCheckpoint(
                epoch=end.epoch,
                full=begin.full,
                pages=tuple(staging.pages),
                writes=tuple(staging.writes),
            ),
            SendAck(generation=self.generation, epoch=end.epoch),
        ]

    def _reject(self, reason: str, now: float) -> list[BackupAction]:
        """The stream is out of step or lying: drop it and everything staged."""
        self._staging = None
        self._needs_full = True
        if self.phase is BackupPhase.RECEIVING:
            self.phase = BackupPhase.FOLLOWING
        return [CheckpointRejected(reason=reason, at=now), DropStream(reason=reason)]

    def _refuse(self, reason: str, now: float) -> list[BackupAction]:
        return [
            CheckpointRejected(reason=reason, at=now),
            SendRefuse(reason=reason),
            DropStream(reason=reason),
        ]

    # -- liveness and authority ----------------------------------------------------------

    def heartbeat(self, heartbeat: Heartbeat, now: float) -> list[BackupAction]:
        """A heartbeat from the primary."""
        following = self.phase in (BackupPhase.FOLLOWING, BackupPhase.RECEIVING)
        if heartbeat.generation == self.generation and following:
            self._heard_at = max(self._heard_at, now)
        elif heartbeat.generation > self.generation and following:
            return self._stand_down(
                f"the primary runs at generation {heartbeat.generation} without us",
                now,
                generation=heartbeat.generation,
            )
        return []

    def tick(self, now: float) -> list[BackupAction]:
        out: list[BackupAction] = []
        if self.phase not in (BackupPhase.FOLLOWING, BackupPhase.RECEIVING):
            return out
        if now >= self._next_heartbeat_at:
            out.append(SendHeartbeat(generation=self.generation, epoch=self.applied))
            self._next_heartbeat_at = now + self._config.heartbeat_interval
        if now >= self._heard_at + self._config.primary_timeout:
            silent = now - self._heard_at
            self._staging = None
            if self.applied == 0:
                self.phase = BackupPhase.WAITING
                self._next_heartbeat_at = INFINITY
                out.append(
                    PrimaryLost(
                        reason=f"no heartbeat for {silent:.2f} s, and no complete checkpoint"
                        " to take over from",
                        at=now,
                    )
                )
                return out
            self.phase = BackupPhase.CLAIMING
            out.append(PrimaryLost(reason=f"no heartbeat for {silent:.2f} s", at=now))
            out.append(ClaimActive(previous=self.generation, generation=self.generation + 1))
        return out

    def claim_won(self, generation: int, now: float) -> list[BackupAction]:
        if self.phase is not BackupPhase.CLAIMING:
            return []
        self.generation = generation
        self.phase = BackupPhase.ACTIVE
        return [Activate(generation=generation, epoch=self.applied)]

    def claim_lost(self, now: float) -> list[BackupAction]:
        if self.phase is not BackupPhase.CLAIMING:
            return []
        return self._stand_down("the primary kept the pair's key", now)

    def fenced(self, generation: int, now: float) -> list[BackupAction]:
        """The pair's key moved to `generation`."""
        if generation <= self.generation:
            return []
        if self.phase is BackupPhase.ACTIVE:
            self.phase = BackupPhase.STOPPED
            return [StopService(reason=f"the pair moved to generation {generation}, past ours")]
        if self.phase is BackupPhase.STOPPED:
            return []
        if self.phase is BackupPhase.WAITING:
            # Following nobody, there is nothing to stand down from: this is the
            # usual start, a new pair's primary making the key before it says hello.
            self.generation = generation
            return []
        return self._stand_down(
            f"the pair moved to generation {generation}", now, generation=generation
        )

    def _stand_down(
        self, reason: str, now: float, *, generation: int | None = None
    ) -> list[BackupAction]:
        """Stop following; a hello at `generation` or later may make us a backup again."""
        if generation is not None:
            self.generation = max(self.generation, generation)
        self.phase = BackupPhase.STOOD_DOWN
        self._staging = None
        self._needs_full = True
        self._next_heartbeat_at = INFINITY
        return [StoodDown(reason=reason, at=now)]

    def next_timer(self) -> float:
        if self.phase not in (BackupPhase.FOLLOWING, BackupPhase.RECEIVING):
            return INFINITY
        return min(self._next_heartbeat_at, self._heard_at + self._config.primary_timeout)

    def status(self) -> BackupStatus:
        return BackupStatus(
            phase=self.phase,
            generation=self.generation,
            applied=self.applied,
            primary_heard_at=self._heard_at,
            staged_bytes=0 if self._staging is None else self._staging.size,
        )
