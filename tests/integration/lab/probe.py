"""Small network probes the lab tests run inside lab hosts (this machine has no `ping`).

    probe.py ping DST [--count N] [--wait S]
        ICMP echo over a raw socket: sends N requests at once, then collects
        replies for up to S seconds; prints {"sent": N, "received": R}.
    probe.py recv --port P [--group G] [--wait S] [--idle S]
        Counts UDP datagrams on port P (joining multicast group G if given);
        prints "ready" once listening, then {"received": R, "sizes": [...]}
        when S seconds passed or nothing came for `--idle` seconds after the first.
    probe.py send DST --port P [--count N] [--size B] [--df]
        Sends N datagrams of B bytes, paced so no receive buffer overflows;
        with --df, refuses to fragment; prints {"sent": N} or {"error": ...}.

No imports from the project: the probe runs as a plain script.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
# <linux/in.h>; the socket module has them only on some Python builds
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(dst: str, count: int, wait: float) -> dict[str, int]:
    ident = os.getpid() & 0xFFFF
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        for seq in range(count):
            header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
            payload = b"servergroup-lab"
            header = struct.pack(
                "!BBHHH", ICMP_ECHO_REQUEST, 0, _checksum(header + payload), ident, seq
            )
            sock.sendto(header + payload, (dst, 0))
        seen: set[int] = set()
        deadline = time.monotonic() + wait
        while len(seen) < count:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                break
            packet, (source, _) = sock.recvfrom(65535)
            ihl = (packet[0] & 0x0F) * 4
            kind, _, _, got_ident, seq = struct.unpack("!BBHHH", packet[ihl : ihl + 8])
            if kind == ICMP_ECHO_REPLY and got_ident == ident and source == dst:
                seen.add(seq)
    return {"sent": count, "received": len(seen)}


def recv(port: int, group: str | None, wait: float, idle: float) -> dict[str, object]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("", port))
        if group:
            membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0"))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        print("ready", flush=True)
        sizes: list[int] = []
        deadline = time.monotonic() + wait
        last = None
        while True:
            now = time.monotonic()
            left = deadline - now
            if last is not None:
                left = min(left, last + idle - now)
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                break
            data = sock.recv(65535)
            sizes.append(len(data))
            last = time.monotonic()
    return {"received": len(sizes), "sizes": sorted(set(sizes))}


def send(dst: str, port: int, count: int, size: int, df: bool) -> dict[str, object]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        if df:
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        payload = b"x" * size
        for seq in range(count):
            try:
                sock.sendto(payload, (dst, port))
            except OSError as exc:
                return {"sent": seq, "error": exc.strerror}
            if seq % 50 == 49:
                time.sleep(0.002)  # pace: receivers are Python too
    return {"sent": count}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("ping")
    p.add_argument("dst")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--wait", type=float, default=2.0)
    r = sub.add_parser("recv")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--group")
    r.add_argument("--wait", type=float, default=10.0)
    r.add_argument("--idle", type=float, default=0.5)
    s = sub.add_parser("send")
    s.add_argument("dst")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--df", action="store_true")
    args = parser.parse_args()
    result: dict[str, object]
    if args.what == "ping":
        result = dict(ping(args.dst, args.count, args.wait))
    elif args.what == "recv":
        result = recv(args.port, args.group, args.wait, args.idle)
    else:
        result = send(args.dst, args.port, args.count, args.size, args.df)
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
