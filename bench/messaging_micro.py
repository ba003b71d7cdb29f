"""Micro-benchmark: the CPU of the message path's hot functions, one call at a time.

The end-to-end benchmark (bench/messaging.py) runs some 30 processes on the
machine, and on a machine shared with other work its figures move by half
from one run to the next. This one times the pure functions each broadcast
goes through, in one process, each the best of many short runs (so that a
run the scheduler interrupted does not count), which is steady enough to
compare two versions of the code on a busy machine: run it in each tree
(`PYTHONPATH=<tree>/src python bench/messaging_micro.py`).

    .venv/bin/python bench/messaging_micro.py [--number 500] [--repeat 200]

What it times (a 100-byte broadcast text, the address names the lab uses):
the client's datagram; the guest agent's check of an application's
datagram and its guest frame; the host's frame of a broadcast for one
address; an item's size in a batch; the socket helpers run per datagram;
decoding a batch of 10.
"""

from __future__ import annotations

import argparse
import logging
import socket
import timeit
from collections.abc import Callable

from servergroup.groups import service
from servergroup.groups.protocol import Broadcast, encode_broadcast_json, encode_group_message
from servergroup.guestcomm import sockets
from servergroup.guestcomm.drops import Counters, DropLog
from servergroup.guestcomm.protocol import (
    Envelope,
    encode_envelope,
    encode_guest_frame,
    host_frame_with,
)
from servergroup.servers.model import BroadcastBatch, BroadcastItem, decode_batch, encode_batch

TEXT = "t3 msg0 1234 12345.678901 " + "." * 74
INSTANCE = "instance-0123abcd"


def cases() -> dict[str, Callable[[], object]]:
    item = BroadcastItem("m0", INSTANCE, TEXT)
    request = encode_group_message(Broadcast(text=TEXT, id=77))
    app_datagram = encode_envelope(Envelope(dest_addr="cgcs.server_grp", data=request))
    drops = DropLog(logging.getLogger("bench"), Counters())
    datagram = sockets.Datagram(data=app_datagram, sender="sgc-1234-abcd", truncated=False)
    value = encode_batch(
        BroadcastBatch(group="bench", host="h1", host_total=100,
                       sent_at="2026-12-06T14:00:00.000+00:00", items=(item,) * 10)
    )  # fmt: skip
    trunc = getattr(sockets, "_MSG_TRUNC", socket.MSG_TRUNC)

    def guest_frame() -> object:
        envelope = sockets.app_envelope(datagram, drops)
        assert envelope is not None
        return encode_guest_frame(envelope)

    def host_frame() -> object:
        data = encode_broadcast_json(TEXT, INSTANCE, 12345)
        assert data is not None
        return host_frame_with("cgcs.server_grp", "cgcs.server_grp", data)

    return {
        "client: a broadcast's datagram": lambda: encode_envelope(
            Envelope(
                dest_addr="cgcs.server_grp",
                data=encode_group_message(Broadcast(text=TEXT, id=77)),
            )
        ),
        "agent: check an app's datagram, make its guest frame": guest_frame,
        "host: a broadcast's frame for one address": host_frame,
        "host: an item's size in a batch": lambda: service._item_size(item),
        "socket helpers per datagram (MSG_TRUNC, names)": lambda: (
            64 & trunc,
            sockets.sender_name(b"\0sgc-1234-abcd"),
            sockets.abstract_address("cgcs.messaging"),
        ),
        "host: decode a batch of 10": lambda: decode_batch(value),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--number", type=int, default=500, help="calls per timed run")
    parser.add_argument("--repeat", type=int, default=200, help="timed runs; the best counts")
    args = parser.parse_args()
    for name, fn in cases().items():
        best = min(timeit.repeat(fn, number=args.number, repeat=args.repeat)) / args.number
        print(f"{name:55s} {best * 1e6:7.2f} µs")


if __name__ == "__main__":
    main()
