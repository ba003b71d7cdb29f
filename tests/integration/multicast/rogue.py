"""Bad actors the integration tests run inside lab hosts (a plain script: no project imports).

rogue.py datagrams GROUP PORT SECONDS
    Multicasts, for SECONDS, a mix of: random bytes; packets that look like
    ours (right magic and version) with a bad crc; well-formed packets of
    another session; packets flagged as authenticated with a wrong tag.
rogue.py connections HOST PORT SECONDS
    Opens one TCP connection that sends garbage and one that says nothing,
    and keeps both open for SECONDS.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import time

import crc32c

HEADER = struct.Struct("!2sBBIIIHHI")
#: The protocol's version (servergroup.multicast.protocol.VERSION; no project imports here).
VERSION = 3


def packet(session: int, buffer_id: int, index: int, payload: bytes, flags: int = 0) -> bytes:
    fields = HEADER.pack(b"SG", VERSION, 1, session, buffer_id, index, len(payload), flags, 0)
    crc = crc32c.crc32c(payload, crc32c.crc32c(fields[:-4]))
    return fields[:-4] + crc.to_bytes(4, "big") + payload


def datagrams(group: str, port: int, seconds: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    end = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < end:
        index = sent % 50
        good = packet(0xBAD5E55, 0, index, os.urandom(100))
        for datagram in (
            os.urandom(64),
            good[:20] + bytes([good[20] ^ 0xFF]) + good[21:],  # bad crc
            good,  # another session
            packet(0xBAD5E55, 0, index, os.urandom(100), flags=1) + os.urandom(16),  # bad tag
        ):
            sock.sendto(datagram, (group, port))
        sent += 1
        time.sleep(0.002)
    print(f"sent {sent * 4}", flush=True)


def connections(host: str, port: int, seconds: float) -> None:
    end = time.monotonic() + seconds
    silent = garbage = None
    while time.monotonic() < end and (silent is None or garbage is None):
        try:
            silent = silent or socket.create_connection((host, port), timeout=1)
            garbage = garbage or socket.create_connection((host, port), timeout=1)
        except OSError:
            time.sleep(0.05)
    assert garbage is not None
    with contextlib.suppress(OSError):
        garbage.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(200))
    print("connected", flush=True)
    time.sleep(max(0.0, end - time.monotonic()))


if __name__ == "__main__":
    mode, address, port_text, seconds_text = sys.argv[1:5]
    if mode == "datagrams":
        datagrams(address, int(port_text), float(seconds_text))
    else:
        connections(address, int(port_text), float(seconds_text))
