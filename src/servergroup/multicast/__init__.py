"""Image distribution: one sender, many receivers, UDP multicast with TCP repair (seed 001).

Read top-down: `protocol` (packet codecs), `rate` (the loss-driven rate
controller), `sending` and `receiving` (the two state machines) and
`config` are pure; `transport` holds the asyncio socket drivers; `sender`
and `receiver` run one transfer each (`run_sender`, `run_receiver`), which is
also the library API.
"""

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
