"""The primary's epoch state machine: when to checkpoint, when output may leave. Pure.

Theory of operation (Remus's order, seed 004 and REFERENCE.md "Remus").
The protected service runs in *epochs*. At the end of epoch n the machine
tells its driver, in this order:

1. `SuspendDispatch(n)`: stop dispatching client input; handlers already
   running finish. The driver calls `suspended(now)` once they have.
2. (failure point ``s``) `Capture(n, full)`: the postsuspend hooks: take the
   dirty pages and this epoch's disk writes into a local buffer, and seal
   the output buffer at n (later output belongs to n + 1). (``s2``)
3. (``r``) `PrepareResume(n)`: the preresume hooks. (``r2``)
4. `ResumeDispatch(n + 1)`: epoch n + 1 runs speculatively from here.
5. `SendCheckpoint(n, full)`: stream the captured checkpoint to the backup.
6. When the backup acknowledges epoch n complete (`acked`): (``c``)
   `CommitDisk(n)` then `ReleaseOutput(n)`: disk writes before network
   output (``c2``). An ack of n commits every captured epoch up to n.

Steps 1 to 5 come out of one `suspended` call, so a driver that carries out
actions in order cannot resume before capturing, nor stream before resuming.
`InjectFailure(point)` appears at the armed point (`replication.hooks`).

One checkpoint is in flight at a time: epoch n + 1 ends no sooner than
`interval` after epoch n ended and not before n is acknowledged (as
Remus's save loop). `request_checkpoint` (the output buffer is full) ends
the running epoch as soon as that allows.

Liveness and authority. The backup's heartbeats (`heard_from_backup`) say
it is alive; a broken checkpoint stream alone is not a failure (the driver
reconnects, calls `stream_reset`, and the next checkpoint is full; its ack
commits every epoch captured before it). When the backup is silent for
`backup_timeout`:

- policy CONTINUE: the machine asks its driver to claim the pair's fencing
  key in etcd with generation g + 1 and itself as the only active
  (`ClaimActive`). Output captured but never acknowledged is held until the
  claim is won: from then the backup, fenced, can never take over from an
  older checkpoint, so releasing it loses nothing anyone was told. The
  primary then runs UNPROTECTED (every epoch commits at once) and says so
  in its status, until `backup_attached` (the next checkpoint is full).
  If the claim is lost, the backup took over first: the primary stops
  without releasing anything (`StopService`).
- policy STOP: it stops at once (`StopService`), releasing nothing.

`fenced(generation)` (the pair's key moved past our generation, seen by the
driver's watch) stops the primary at any moment; so does `claim_lost`.
Output is released only by a `ReleaseOutput` action, and the machine emits
one only after an ack of the current generation or a won claim: at no
moment do two actives release output.

Invariants: epochs are captured in order 1, 2, 3, ...; `ReleaseOutput(n)`
comes after `CommitDisk(n)` and only for n captured; commits are monotonic;
nothing is emitted after `StopService`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from servergroup.common.errors import UsageError
from servergroup.replication.hooks import FailurePoint

INFINITY = math.inf


class Mode(Enum):
    """Whether output waits for the backup."""

    PROTECTED = "protected"  # every epoch waits for the backup's ack
    CLAIMING = "claiming"  # the backup fell silent; claiming the fencing key
    UNPROTECTED = "unprotected"  # no backup: epochs commit when captured
    STOPPED = "stopped"


class OnBackupLoss(Enum):
    """What the primary does when its backup falls silent."""

    CONTINUE = "continue"
    STOP = "stop"


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryConfig:
    interval: float = 0.2
    heartbeat_interval: float = 0.1
    backup_timeout: float = 1.0
    on_backup_loss: OnBackupLoss = OnBackupLoss.CONTINUE
    #: Run with no backup at all from the start (the seed's --no-backup).
    no_backup: bool = False

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.heartbeat_interval <= 0:
            raise UsageError("the checkpoint and heartbeat intervals must be positive.")
        if self.backup_timeout <= 2 * self.heartbeat_interval:
            raise UsageError(
                "the backup timeout must be over twice the heartbeat interval,"
                " or one late heartbeat looks like a dead backup."
            )


# --- actions (what the driver does, in order) ------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SuspendDispatch:
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Capture:
    epoch: int
    full: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepareResume:
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeDispatch:
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SendCheckpoint:
    generation: int
    epoch: int
    full: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitDisk:
    """Make the disk writes of every epoch up to `epoch` final."""

    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseOutput:
    """Release the buffered output of every epoch up to `epoch` to the clients."""

    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class InjectFailure:
    point: FailurePoint


@dataclass(frozen=True, slots=True, kw_only=True)
class SendHeartbeat:
    generation: int
    epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimActive:
    """Compare-and-set the pair's key from `previous` to `generation`, us as the only active."""

    previous: int
    generation: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StopService:
    reason: str


# --- events (what the driver logs and shows) -------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupLost:
    reason: str
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class WentUnprotected:
    generation: int
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Protected:
    generation: int
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AckIgnored:
    epoch: int
    reason: str


PrimaryAction = (
    SuspendDispatch
    | Capture
    | PrepareResume
    | ResumeDispatch
    | SendCheckpoint
    | CommitDisk
    | ReleaseOutput
    | InjectFailure
    | SendHeartbeat
    | ClaimActive
    | StopService
    | BackupLost
    | WentUnprotected
    | Protected
    | AckIgnored
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryStatus:
    """What `servergroup replication status` shows of a primary."""

    mode: Mode
    generation: int
    epoch: int
    committed: int
    captured: int
    awaiting: int | None
    last_suspend_at: float
    backup_heard_at: float


class PrimaryMachine:
    """See the module docstring."""

    def __init__(self, config: PrimaryConfig, *, generation: int, now: float) -> None:
        self._config = config
        self.generation = generation
        self.mode = Mode.UNPROTECTED if config.no_backup else Mode.PROTECTED
        #: The epoch running now.
        self.epoch = 1
        self._suspending = False
        #: The epoch sent and not yet acknowledged.
        self.awaiting: int | None = None
        #: The last epoch captured, and the last committed (0: none yet).
        self.captured = 0
        self.committed = 0
        self._full_next = True
        self._next_epoch_at = now + config.interval
        self._next_heartbeat_at = now
        self._backup_heard_at = now
        self._last_suspend_at = now
        self._fail_at: FailurePoint | None = None

    # -- inputs --------------------------------------------------------------------------

    def arm_failure(self, point: FailurePoint | None) -> None:
        """Die at `point` in the next epoch that reaches it (None disarms)."""
        self._fail_at = point

    def request_checkpoint(self, now: float) -> None:
        """End the running epoch as soon as the one-in-flight rule allows (output is full)."""
        self._next_epoch_at = min(self._next_epoch_at, now)

    def tick(self, now: float) -> list[PrimaryAction]:
        """Apply the passage of time: heartbeats, backup silence, the end of an epoch."""
        if self.mode is Mode.STOPPED:
            return []
        out: list[PrimaryAction] = []
        if now >= self._next_heartbeat_at:
            out.append(SendHeartbeat(generation=self.generation, epoch=self.committed))
            self._next_heartbeat_at = now + self._config.heartbeat_interval
        if (
            self.mode is Mode.PROTECTED
            and now >= self._backup_heard_at + self._config.backup_timeout
        ):
            silent = now - self._backup_heard_at
            # Claiming or stopped from here: no epoch ends below.
            out += self._backup_lost(f"no heartbeat from the backup for {silent:.2f} s", now)
        if self._may_end_epoch() and now >= self._next_epoch_at:
            self._suspending = True
            out.append(SuspendDispatch(epoch=self.epoch))
        return out

    def suspended(self, now: float) -> list[PrimaryAction]:
        """Dispatch has stopped and in-flight handlers are done: capture, resume, send."""
        if self.mode is Mode.STOPPED:
            return []
        if not self._suspending:
            raise UsageError("suspended() without a SuspendDispatch to answer.")
        self._suspending = False
        n = self.epoch
        full = self._full_next
        out: list[PrimaryAction] = []
        out += self._point(FailurePoint.S)
        out.append(Capture(epoch=n, full=full))
        out += self._point(FailurePoint.S2)
        out += self._point(FailurePoint.R)
        out.append(PrepareResume(epoch=n))
        out += self._point(FailurePoint.R2)
        out.append(ResumeDispatch(epoch=n + 1))
        self.captured = n
        self.epoch = n + 1
        self._last_suspend_at = now
        self._next_epoch_at = now + self._config.interval
        if self.mode is Mode.PROTECTED:
            out.append(SendCheckpoint(generation=self.generation, epoch=n, full=full))
            self.awaiting = n
            self._full_next = False
        elif self.mode is Mode.UNPROTECTED:
            out += self._commit(n)
        return out

    def acked(self, generation: int, epoch: int, now: float) -> list[PrimaryAction]:
        """The backup acknowledged `epoch` complete."""
        if self.mode is not Mode.PROTECTED:
            return [AckIgnored(epoch=epoch, reason=f"the primary is {self.mode.value}")]
        if generation != self.generation:
            return [AckIgnored(epoch=epoch, reason=f"it is for generation {generation}")]
        if self.awaiting is None or epoch != self.awaiting:
            if epoch > self.captured:
                return self._backup_lost(f"the backup acknowledged epoch {epoch}, never sent", now)
            return [AckIgnored(epoch=epoch, reason="it is not the epoch awaited")]
        self.awaiting = None
        self._backup_heard_at = max(self._backup_heard_at, now)
        return self._commit(epoch)

    def heard_from_backup(self, generation: int, now: float) -> None:
        """A heartbeat (or any message) came from the backup of `generation`."""
        if generation == self.generation:
            self._backup_heard_at = max(self._backup_heard_at, now)

    def stream_reset(self, now: float) -> None:
        """The checkpoint stream broke and was reopened: the in-flight epoch is lost to it."""
        self.awaiting = None
        self._full_next = True

    def backup_attached(self, generation: int, now: float) -> list[PrimaryAction]:
        """A backup welcomed us under `generation` (written to the pair's key by the driver)."""
        if self.mode is Mode.STOPPED:
            return []
        if generation < self.generation:
            raise UsageError("a backup attaches with a generation no older than the primary's.")
        if self.mode is Mode.CLAIMING:
            # Both would compare-and-set the pair's key from one generation: the
            # driver must let the claim finish first.
            raise UsageError("a backup cannot attach while the primary claims the pair.")
        was = self.mode
        self.generation = generation
        self.mode = Mode.PROTECTED
        self.awaiting = None
        self._full_next = True
        self._backup_heard_at = now
        return [] if was is Mode.PROTECTED else [Protected(generation=generation, at=now)]

    def claim_won(self, generation: int, now: float) -> list[PrimaryAction]:
        """We hold the pair's key at `generation` as the only active: commit what waited."""
        if self.mode is not Mode.CLAIMING:
            return []
        self.generation = generation
        self.mode = Mode.UNPROTECTED
        self.awaiting = None
        out: list[PrimaryAction] = [WentUnprotected(generation=generation, at=now)]
        if self.captured > self.committed:
            out += self._commit(self.captured)
        return out

    def claim_lost(self, now: float) -> list[PrimaryAction]:
        """Someone else holds the pair's key at a newer generation."""
        return self._stop("another node took the pair's key: it is the active now")

    def fenced(self, generation: int, now: float) -> list[PrimaryAction]:
        """The pair's key moved to `generation`; if past ours, we are no longer the active."""
        if generation <= self.generation:
            return []
        return self._stop(f"the pair moved to generation {generation}, past ours")

    # -- outputs -------------------------------------------------------------------------

    def next_timer(self) -> float:
        """When `tick` must run next."""
        if self.mode is Mode.STOPPED:
            return INFINITY
        at = self._next_heartbeat_at
        if self.mode is Mode.PROTECTED:
            at = min(at, self._backup_heard_at + self._config.backup_timeout)
        if self._may_end_epoch():
            at = min(at, self._next_epoch_at)
        return at

    def status(self) -> PrimaryStatus:
        return PrimaryStatus(
            mode=self.mode,
            generation=self.generation,
            epoch=self.epoch,
            committed=self.committed,
            captured=self.captured,
            awaiting=self.awaiting,
            last_suspend_at=self._last_suspend_at,
            backup_heard_at=self._backup_heard_at,
        )

    # -- internals -----------------------------------------------------------------------

    def _may_end_epoch(self) -> bool:
        return (
            not self._suspending
            and self.awaiting is None
            and self.mode in (Mode.PROTECTED, Mode.UNPROTECTED)
        )

    def _point(self, point: FailurePoint) -> list[PrimaryAction]:
        if self._fail_at is point:
            self._fail_at = None
            return [InjectFailure(point=point)]
        return []

    def _commit(self, epoch: int) -> list[PrimaryAction]:
        out: list[PrimaryAction] = []
        out += self._point(FailurePoint.C)
        out += [CommitDisk(epoch=epoch), ReleaseOutput(epoch=epoch)]
        out += self._point(FailurePoint.C2)
        self.committed = epoch
        return out

    def _backup_lost(self, reason: str, now: float) -> list[PrimaryAction]:
        out: list[PrimaryAction] = [BackupLost(reason=reason, at=now)]
        self.awaiting = None
        if self._config.on_backup_loss is OnBackupLoss.STOP:
            return out + self._stop(f"{reason}, and the policy is to stop")
        self.mode = Mode.CLAIMING
        return [*out, ClaimActive(previous=self.generation, generation=self.generation + 1)]

    def _stop(self, reason: str) -> list[PrimaryAction]:
        if self.mode is Mode.STOPPED:
            return []
        self.mode = Mode.STOPPED
        self._suspending = False
        return [StopService(reason=reason)]
