"""The Prometheus metrics of servergroup: every metric object, in one place.

Theory of operation. Each metric is a module-level object of
prometheus-client, registered once in the process's default registry when
this module is first imported; a component that does something worth
counting increments the object here (one line beside the counter or log line
it already keeps), and the host daemon's HTTP API serves the registry at
`/metrics` (`servergroup.api`). Nothing here does I/O or reads a clock:
durations are measured by the caller and `observe()`d.

Names follow Prometheus's conventions: a `servergroup_` prefix, `_total` on
counters (added by the library), base units (`_seconds`, `_bytes`), and
labels only of small closed sets (a direction, an operation kind, a result),
never a server's or a service's name: the number of series stays bounded
however many servers come and go.

A process that is not the host daemon (`servergroup image send`,
`servergroup protect`) increments the same objects; its numbers are its own
(prometheus-client keeps them per process), served by its `--metrics ADDR`
or written by `--metrics-file PATH` (`common.exporter`).

Labelled children used on hot paths are bound once here (`RELAYED_FROM_GUEST`,
...), so an increment is one locked add.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# The `_created` series (each metric's creation time) double the exposition and
# say nothing an operator uses: the process's start time is there already.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Buckets for operations an operator waits on (a lifecycle operation, a scale, a failover).
OPERATION_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Buckets for checkpoint pauses (a few milliseconds each).
PAUSE_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
#: Buckets for sizes in bytes (a checkpoint).
SIZE_BUCKETS: Final = tuple(float(4096 * 4**i) for i in range(10))  # 4 KiB .. 1 GiB

# -- group messaging (the relay and the group service) ----------------------------------

MESSAGES_RELAYED: Final = Counter(
    "servergroup_messages_relayed",
    "Messages the host's channel relay carried, by direction.",
    ["direction"],
)
RELAYED_FROM_GUEST: Final = MESSAGES_RELAYED.labels(direction="from_guest")
RELAYED_TO_GUEST: Final = MESSAGES_RELAYED.labels(direction="to_guest")

NACKS: Final = Counter(
    "servergroup_nacks",
    "Nacks the group service sent to guests (a request refused or not stored).",
)
NOTIFICATIONS: Final = Counter(
    "servergroup_notifications",
    "Notification messages the group service sent to guests (one per recipient).",
)

# -- servers ---------------------------------------------------------------------------

LIFECYCLE_OPERATIONS: Final = Counter(
    "servergroup_lifecycle_operations",
    "Lifecycle operations a host's server manager carried out, by kind and result.",
    ["operation", "result"],
)
EVACUATIONS: Final = Counter(
    "servergroup_evacuations",
    "Servers of dead hosts this host's evacuator rebuilt elsewhere.",
)

# -- scaling ---------------------------------------------------------------------------

SCALE_OPERATIONS: Final = Counter(
    "servergroup_scale_operations",
    "vCPU scale requests a host carried out, by direction and result.",
    ["direction", "result"],
)
SCALE_LATENCY: Final = Histogram(
    "servergroup_scale_latency_seconds",
    "Seconds from a scale request's arrival at its host to its result, by direction.",
    ["direction"],
    buckets=OPERATION_BUCKETS,
)

# -- the service manager ---------------------------------------------------------------

SERVICE_FAILOVERS: Final = Counter(
    "servergroup_service_failovers",
    "Service instances this host started that another node held last (failover or relocation).",
)
SERVICE_FAILOVER_DURATION: Final = Histogram(
    "servergroup_service_failover_duration_seconds",
    "Seconds from the moment this host saw a service instance's owner key go (its owner's "
    "lease expired, or it was stopped) to the instance started here, for a failover or move.",
    buckets=OPERATION_BUCKETS,
)
MONITOR_FAILURES: Final = Counter(
    "servergroup_monitor_failures",
    "OCF monitor actions that found a service instance failed on this host.",
)

# -- image distribution (its own process: `servergroup image send|receive`) ---------------

TRANSFER_BYTES: Final = Counter(
    "servergroup_transfer_bytes",
    "Image bytes the sender has delivered to every client (buffers completed).",
)
TRANSFER_RATE: Final = Gauge(
    "servergroup_transfer_rate_bytes_per_second",
    "The multicast sending rate the sender's rate control chose last.",
)
TRANSFER_REPAIRS: Final = Counter(
    "servergroup_transfer_repairs",
    "Packets the sender sent again over a client's TCP repair connection.",
)

# -- checkpoint replication (its own process: `servergroup protect|backup`) ---------------

CHECKPOINT_EPOCHS: Final = Counter(
    "servergroup_checkpoint_epochs",
    "Checkpoint epochs the primary committed (the backup acknowledged them).",
)
CHECKPOINT_SIZE: Final = Histogram(
    "servergroup_checkpoint_size_bytes",
    "Bytes of one checkpoint (dirty pages and disk writes).",
    buckets=SIZE_BUCKETS,
)
CHECKPOINT_PAUSE: Final = Histogram(
    "servergroup_checkpoint_pause_seconds",
    "Seconds the primary's request dispatch was paused to capture one epoch.",
    buckets=PAUSE_BUCKETS,
)
CHECKPOINT_LAG: Final = Gauge(
    "servergroup_checkpoint_lag_epochs",
    "Epochs captured by the primary and not yet acknowledged by its backup.",
)

__all__ = [
    "CHECKPOINT_EPOCHS",
    "CHECKPOINT_LAG",
    "CHECKPOINT_PAUSE",
    "CHECKPOINT_SIZE",
    "EVACUATIONS",
    "LIFECYCLE_OPERATIONS",
    "MESSAGES_RELAYED",
    "MONITOR_FAILURES",
    "NACKS",
    "NOTIFICATIONS",
    "OPERATION_BUCKETS",
    "PAUSE_BUCKETS",
    "RELAYED_FROM_GUEST",
    "RELAYED_TO_GUEST",
    "SCALE_LATENCY",
    "SCALE_OPERATIONS",
    "SERVICE_FAILOVERS",
    "SERVICE_FAILOVER_DURATION",
    "SIZE_BUCKETS",
    "TRANSFER_BYTES",
    "TRANSFER_RATE",
    "TRANSFER_REPAIRS",
]
