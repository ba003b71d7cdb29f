"""The exactly-one checker: a journal of agent actions in, every double owner out (pure).

Theory of operation (no I/O, no clock: it reads records someone wrote).

The integration tests and `bench/failover.py` run a test agent that appends
one JSON line per action to a journal shared by all nodes of one machine
(`encode_record` / `decode_record`): when it `begin`s and `end`s each of
`start`, `stop`, `promote`, `demote` of an instance, on which node, with
which fencing token, at what time (one clock for all nodes: they share the
machine) and, at the end, with which exit code.

From that, `check(records)` rebuilds for every instance its **ownership
intervals**, conservatively: an interval opens when a `start` *begins* on a
node (the resource may be running from then on) and closes only when a
`stop` on that node *ends* with success; a `start` that failed still opens
one (a failed start may leave something running) until it is stopped. The
**master** of a service is tracked the same way, from a `promote`'s begin to
the end of a successful `demote` or `stop` on that node. A journal that ends
with an interval open leaves it open to the end.

It reports (`Violation`, one sentence each):

- two intervals of one instance on different nodes that overlap (two
  owners), or two master intervals of one service that overlap;
- a start whose fencing token is below one an earlier start of that
  instance used, or equal to one used on another node (tokens only
  increase; a restart in place keeps its key, so its token).

`overlap_seconds` adds up the double-owner time, for the benchmark's table.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass

from servergroup.common.errors import RemoteError

ACTIONS = ("start", "stop", "promote", "demote")


class JournalError(RemoteError):
    """A journal line is not a record."""


class Phase(enum.Enum):
    BEGIN = "begin"
    END = "end"


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One line of the journal."""

    at: float
    node: str
    instance: str  # OCF_RESOURCE_INSTANCE: "<service>:<index>", as Pacemaker names clones
    action: str
    phase: Phase
    token: int | None = None
    code: int | None = None  # at the end; None: it did not end normally

    @property
    def service(self) -> str:
        return self.instance.rsplit(":", 1)[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class Interval:
    """Who held what, from when until when (None: still at the end of the journal)."""

    subject: str  # an instance, or "<service> master"
    node: str
    token: int | None
    begin_at: float
    end_at: float | None

    def overlap(self, other: Interval) -> float:
        """Seconds both held it (0 when they did not overlap; inf when both are open)."""
        end = min(
            self.end_at if self.end_at is not None else float("inf"),
            other.end_at if other.end_at is not None else float("inf"),
        )
        return max(0.0, end - max(self.begin_at, other.begin_at))


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    sentence: str
    seconds: float = 0.0


def encode_record(record: Record) -> str:
    """One JSON line (no newline) for `record`."""
    data: dict[str, object] = {
        "at": record.at,
        "node": record.node,
        "instance": record.instance,
        "action": record.action,
        "phase": record.phase.value,
    }
    if record.token is not None:
        data["token"] = record.token
    if record.code is not None:
        data["code"] = record.code
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def decode_record(line: str) -> Record:
    """The record of one journal line; `JournalError` (one sentence) if it is not one."""
    try:
        data = json.loads(line)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        token, code = data.get("token"), data.get("code")
        record = Record(
            at=float(data["at"]),
            node=str(data["node"]),
            instance=str(data["instance"]),
            action=str(data["action"]),
            phase=Phase(data["phase"]),
            token=None if token is None else int(token),
            code=None if code is None else int(code),
        )
    except (ValueError, TypeError, KeyError, OverflowError):
        raise JournalError(f"journal line {line[:80]!r} is not a record.") from None
    if record.action not in ACTIONS:
        raise JournalError(f"journal line {line[:80]!r} has an unknown action.")
    return record


def intervals(records: Iterable[Record]) -> list[Interval]:
    """The ownership and master intervals the records show (see the module's docstring)."""
    found: list[Interval] = []
    open_: dict[tuple[str, str], Interval] = {}  # (subject, node) -> interval

    def begin(subject: str, record: Record) -> None:
        if (subject, record.node) not in open_:
            open_[(subject, record.node)] = Interval(
                subject=subject,
                node=record.node,
                token=record.token,
                begin_at=record.at,
                end_at=None,
            )

    def end(subject: str, record: Record) -> None:
        current = open_.pop((subject, record.node), None)
        if current is not None:
            found.append(
                Interval(
                    subject=subject,
                    node=current.node,
                    token=current.token,
                    begin_at=current.begin_at,
                    end_at=record.at,
                )
            )

    for record in sorted(records, key=lambda r: (r.at, r.phase is Phase.END)):
        master = f"{record.service} master"
        succeeded = record.phase is Phase.END and record.code in (0, 7)
        if record.phase is Phase.BEGIN and record.action == "start":
            begin(record.instance, record)
        elif record.phase is Phase.BEGIN and record.action == "promote":
            begin(master, record)
        elif succeeded and record.action == "stop":
            end(record.instance, record)
            end(master, record)
        elif succeeded and record.action == "demote":
            end(master, record)
    found.extend(open_.values())
    return sorted(found, key=lambda i: (i.subject, i.begin_at, i.node))


def check(records: Iterable[Record]) -> list[Violation]:
    """Every double owner, double master and non-increasing token the journal shows."""
    records = list(records)
    violations: list[Violation] = []
    spans = intervals(records)
    for k, first in enumerate(spans):
        for second in spans[k + 1 :]:
            if second.subject != first.subject or second.node == first.node:
                continue
            seconds = first.overlap(second)
            if seconds > 0:
                violations.append(
                    Violation(
                        sentence=(
                            f"{first.subject} was held by {first.node} (token {first.token}) "
                            f"and {second.node} (token {second.token}) at once from "
                            f"{max(first.begin_at, second.begin_at):.3f}."
                        ),
                        seconds=seconds,
                    )
                )
    highest: dict[str, tuple[int, str]] = {}
    for record in sorted(records, key=lambda r: r.at):
        if record.action != "start" or record.phase is not Phase.BEGIN or record.token is None:
            continue
        seen = highest.get(record.instance)
        if seen is not None and (
            record.token < seen[0] or (record.token == seen[0] and record.node != seen[1])
        ):
            violations.append(
                Violation(
                    sentence=(
                        f"{record.instance} started on {record.node} with token {record.token} "
                        f"after token {seen[0]} on {seen[1]}."
                    )
                )
            )
        if seen is None or record.token > seen[0]:
            highest[record.instance] = (record.token, record.node)
    return violations


def overlap_seconds(violations: Iterable[Violation]) -> float:
    """The double-owner time of `violations`, added up."""
    return sum(v.seconds for v in violations)


__all__ = [
    "ACTIONS",
    "Interval",
    "JournalError",
    "Phase",
    "Record",
    "Violation",
    "check",
    "decode_record",
    "encode_record",
    "intervals",
    "overlap_seconds",
]
