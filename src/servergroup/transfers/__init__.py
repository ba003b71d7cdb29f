"""Image transfers as the cluster sees them: records in etcd written by `image send|receive`.

`record` (pure) holds the records, their keys under `transfers/`, the write
pacer and `join()`; `where` says which etcd to record in, if any;
`recorder` runs a transfer through the multicast package's public API while
writing its record (`run_recorded_sender`, `run_recorded_receiver`) and
reads them back (`read_transfers`), which is what the HTTP API and the
dashboard serve. This package sits above `multicast` and below `api`
(pyproject's layers contract).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from servergroup.common.lazy import lazy_names
from servergroup.transfers.where import recording_endpoints

if TYPE_CHECKING:
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
        run_recorded_receiver,
        run_recorded_sender,
    )

#: The records and the recorder (with the etcd side of `servergroup.coordination`)
#: load on first use: `image send|receive` with nothing to record in needs neither.
_load = lazy_names(
    __name__,
    {
        **dict.fromkeys(
            (
                "RETENTION_INTERVAL",
                "TRANSFERS",
                "ClientRow",
                "ReceiverRecord",
                "RecordError",
                "SenderRecord",
                "Transfer",
                "TransferState",
            ),
            ".record",
        ),
        **dict.fromkeys(
            ("read_transfers", "run_recorded_receiver", "run_recorded_sender"), ".recorder"
        ),
    },
)


def __getattr__(name: str) -> Any:
    return _load(name)


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
