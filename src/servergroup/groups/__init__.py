"""Group messaging: the group service (host side), the client library and the sample app.

The pure cores are `protocol` (the inner server-group messages of spec
section 4) and `notify` (which registry change makes which notification);
`service` is the host-side driver, `client` the guest-side library, `app` the
sample application of seed 000.

Re-exported here: what an application inside a server uses (the client
library and the messages). `groups.service.GroupService` is not: it pulls in
the etcd client, which an application should not pay for.
"""

from servergroup.groups.client import (
    AddressInUse,
    AgentBusy,
    AgentUnavailable,
    AsyncServerGroupClient,
    BroadcastReceived,
    BroadcastStats,
    BroadcastUnconfirmed,
    ClientEvent,
    GroupMessagingError,
    InvalidAddress,
    InvalidBroadcast,
    NackError,
    NackReceived,
    NotificationReceived,
    ServerGroupClient,
    StatusReceived,
    init,
)
from servergroup.groups.protocol import (
    MAX_BROADCAST_BYTES,
    Broadcast,
    BroadcastAck,
    GroupMessage,
    MsgType,
    Nack,
    Notification,
    StatusQuery,
    StatusResponse,
    StatusResponseDone,
    Subscribe,
    UnknownMessageType,
    Unsubscribe,
    check_broadcast_text,
    decode_group_message,
    encode_group_message,
)

__all__ = [
    "MAX_BROADCAST_BYTES",
    "AddressInUse",
    "AgentBusy",
    "AgentUnavailable",
    "AsyncServerGroupClient",
    "Broadcast",
    "BroadcastAck",
    "BroadcastReceived",
    "BroadcastStats",
    "BroadcastUnconfirmed",
    "ClientEvent",
    "GroupMessage",
    "GroupMessagingError",
    "InvalidAddress",
    "InvalidBroadcast",
    "MsgType",
    "Nack",
    "NackError",
    "NackReceived",
    "Notification",
    "NotificationReceived",
    "ServerGroupClient",
    "StatusQuery",
    "StatusReceived",
    "StatusResponse",
    "StatusResponseDone",
    "Subscribe",
    "UnknownMessageType",
    "Unsubscribe",
    "check_broadcast_text",
    "decode_group_message",
    "encode_group_message",
    "init",
]
