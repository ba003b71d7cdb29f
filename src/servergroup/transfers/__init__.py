"""Image transfers as the cluster sees them: records in etcd written by `image send|receive`.

`record` (pure) holds the records, their keys under `transfers/`, the write
pacer and `join()`; `recorder` runs a transfer through the multicast
package's public API while writing its record (`run_recorded_sender`,
`run_recorded_receiver`) and reads them back (`read_transfers`), which is
what the HTTP API and the dashboard serve. This package sits above
`multicast` and below `api` (pyproject's layers contract).
"""

from servergroup.transfers.record import (
    RETENTION_INTERVAL,
    TRANSFERS,
    ClientRow,
    ReceiverRecord,
    RecordError,
    SenderRecord,
    Transfer,
    TransferState,
)
from servergroup.transfers.recorder import (
    read_transfers,
    recording_endpoints,
    run_recorded_receiver,
    run_recorded_sender,
)

__all__ = [
    "RETENTION_INTERVAL",
    "TRANSFERS",
    "ClientRow",
    "ReceiverRecord",
    "RecordError",
    "SenderRecord",
    "Transfer",
    "TransferState",
    "read_transfers",
    "recording_endpoints",
    "run_recorded_receiver",
    "run_recorded_sender",
]
