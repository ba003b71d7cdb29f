"""A kv client process for lab hosts: puts unique keys, prints each acknowledged one.

Usage: python kv_putter.py HOST PORT NAME. One line `KEY VALUE` on stdout per
put whose reply came, flushed at once; exits when the connection ends.
"""

from __future__ import annotations

import json
import socket
import sys


def main() -> None:
    host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with socket.create_connection((host, port), timeout=60) as sock, sock.makefile("rb") as replies:
        i = 0
        while True:
            key, value = f"{name}-{i}", f"value-{i}"
            try:
                sock.sendall(json.dumps({"op": "put", "key": key, "value": value}).encode() + b"\n")
                line = replies.readline()
            except OSError:
                return
            if not line:
                return
            if json.loads(line).get("ok"):
                print(key, value, flush=True)
            i += 1


if __name__ == "__main__":
    main()
