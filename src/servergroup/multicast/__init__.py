"""Image distribution: one sender, many receivers, UDP multicast with TCP repair (seed 001).

Read top-down: `protocol` (packet codecs), `rate` (the loss-driven rate
controller), `sending` and `receiving` (the two state machines) and
`config` are pure; `transport` holds the asyncio socket drivers; `sender`
and `receiver` run one transfer each (`run_sender`, `run_receiver`), which is
also the library API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from servergroup.common.lazy import lazy_names

if TYPE_CHECKING:
    from servergroup.multicast.config import (
        DEFAULT_GROUP,
        DEFAULT_PORT,
        ReceiveConfig,
        SendConfig,
        receive_config,
        send_config,
    )
    from servergroup.multicast.protocol import Auth, Counters, ProtocolError
    from servergroup.multicast.receiver import run_receiver
    from servergroup.multicast.receiving import ReceiverReport
    from servergroup.multicast.sender import run_sender
    from servergroup.multicast.sending import ClientReport, ClientStatus, SenderReport
    from servergroup.multicast.transport import FileSink, Sink, StreamSink, TransferError

#: Where each name of the API lives. Loaded when first used: a receiver
#: never loads the sender (nor the metrics it pulls in), ~0.1 CPU-s less at
#: every start.
_WHERE = {
    "DEFAULT_GROUP": "config",
    "DEFAULT_PORT": "config",
    "ReceiveConfig": "config",
    "SendConfig": "config",
    "receive_config": "config",
    "send_config": "config",
    "Auth": "protocol",
    "Counters": "protocol",
    "ProtocolError": "protocol",
    "run_receiver": "receiver",
    "ReceiverReport": "receiving",
    "run_sender": "sender",
    "ClientReport": "sending",
    "ClientStatus": "sending",
    "SenderReport": "sending",
    "FileSink": "transport",
    "Sink": "transport",
    "StreamSink": "transport",
    "TransferError": "transport",
}


_load = lazy_names(__name__, {name: f".{module}" for name, module in _WHERE.items()})


def __getattr__(name: str) -> Any:
    return _load(name)


__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_PORT",
    "Auth",
    "ClientReport",
    "ClientStatus",
    "Counters",
    "FileSink",
    "ProtocolError",
    "ReceiveConfig",
    "ReceiverReport",
    "SendConfig",
    "SenderReport",
    "Sink",
    "StreamSink",
    "TransferError",
    "receive_config",
    "run_receiver",
    "run_sender",
    "send_config",
]
