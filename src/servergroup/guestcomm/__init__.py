"""Guest-host protocol v2: the pure codec and framing, the guest agent, the host channel relay.

Read it top-down: `protocol` (pure), `sockets` and `drops` (drivers'
helpers), then the two daemons' halves, `guest` and `relay`.
"""

from servergroup.guestcomm.drops import Counters, Reason
from servergroup.guestcomm.guest import DEFAULT_CHANNEL_DEVICE, GuestAgent, GuestConfig, run_guest
from servergroup.guestcomm.protocol import (
    MAX_ADDR_LENGTH,
    MAX_DATAGRAM,
    MAX_DEPTH,
    MAX_INSTANCE_LENGTH,
    MAX_LINE,
    MESSAGING_ADDR,
    SCALE_ADDR,
    SERVER_GROUP_ADDR,
    VERSION,
    ChannelDecoder,
    Dropped,
    DropReason,
    Envelope,
    Json,
    JsonObject,
    ProtocolError,
    decode_envelope,
    encode_envelope,
    encode_guest_frame,
    encode_host_frame,
)
from servergroup.guestcomm.relay import ChangeCallback, ChannelRelay, Handler
from servergroup.guestcomm.sockets import AbstractSocket, AddressInUse, Datagram, SendResult

__all__ = [
    "DEFAULT_CHANNEL_DEVICE",
    "MAX_ADDR_LENGTH",
    "MAX_DATAGRAM",
    "MAX_DEPTH",
    "MAX_INSTANCE_LENGTH",
    "MAX_LINE",
    "MESSAGING_ADDR",
    "SCALE_ADDR",
    "SERVER_GROUP_ADDR",
    "VERSION",
    "AbstractSocket",
    "AddressInUse",
    "ChangeCallback",
    "ChannelDecoder",
    "ChannelRelay",
    "Counters",
    "Datagram",
    "DropReason",
    "Dropped",
    "Envelope",
    "GuestAgent",
    "GuestConfig",
    "Handler",
    "Json",
    "JsonObject",
    "ProtocolError",
    "Reason",
    "SendResult",
    "decode_envelope",
    "encode_envelope",
    "encode_guest_frame",
    "encode_host_frame",
    "run_guest",
]
