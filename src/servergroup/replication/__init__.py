"""Checkpoint replication (seed 004): Remus-style protection of a stateful Python service.

Read top-down. Pure cores: `pages` (page runs), `protocol` (the checkpoint
stream's messages on `common.framing`), `hooks` (the failure points s s2 r
r2 c c2), `primary_machine` and `backup_machine` (the epoch in Remus's
order, takeover and fencing decisions), `output` (client output held per
epoch). Then the memory side: `regions` (memfd-backed tracked regions),
`tracking` (the `DirtyTracker` protocol and the hashing tracker), `uffd`
(the kernel tracker on userfaultfd and PAGEMAP_SCAN), `checkpoint`
(capture on the primary, apply on the backup), `disk` (the replicated
disk), `channel` (the stream and heartbeat connections). Then the daemons:
`authority` (session lease and the pair's key), `front` (the client
socket), `primary` (`servergroup protect`) and `backup` (`servergroup
backup`). See docs/design/replication.md.
"""

from servergroup.replication.backup_machine import BackupConfig, BackupMachine, BackupPhase
from servergroup.replication.channel import Channel, ChannelClosed, MemoryChannel, TcpChannel
from servergroup.replication.checkpoint import Captured, Capturer, apply
from servergroup.replication.disk import ReplicatedDisk
from servergroup.replication.hooks import FailurePoint, parse_failure_point
from servergroup.replication.output import OutputBuffer, OutputOverflow, Send
from servergroup.replication.pages import DirtyPages, PageRuns
from servergroup.replication.pair import PairKey, PairRecord
from servergroup.replication.primary_machine import (
    Mode,
    OnBackupLoss,
    PrimaryConfig,
    PrimaryMachine,
)
from servergroup.replication.protocol import MessageDecoder, ReplicationProtocolError
from servergroup.replication.regions import PAGE_SIZE, Region, RegionSet
from servergroup.replication.tracking import (
    DirtyTracker,
    HashTracker,
    TrackerKind,
    open_tracker,
)

__all__ = [
    "PAGE_SIZE",
    "BackupConfig",
    "BackupMachine",
    "BackupPhase",
    "Captured",
    "Capturer",
    "Channel",
    "ChannelClosed",
    "DirtyPages",
    "DirtyTracker",
    "FailurePoint",
    "HashTracker",
    "MemoryChannel",
    "MessageDecoder",
    "Mode",
    "OnBackupLoss",
    "OutputBuffer",
    "OutputOverflow",
    "PageRuns",
    "PairKey",
    "PairRecord",
    "PrimaryConfig",
    "PrimaryMachine",
    "Region",
    "RegionSet",
    "ReplicatedDisk",
    "ReplicationProtocolError",
    "Send",
    "TcpChannel",
    "TrackerKind",
    "apply",
    "open_tracker",
    "parse_failure_point",
]
