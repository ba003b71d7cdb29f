"""A scripted stand-in for the guest scale agent, run inside a lab server (tests only).

Bound at the abstract `cgcs.scale` of the server's namespace, it answers the
host's `scale_request`s as spec section 5 says, over a directory of its own
laid out like `/sys/devices/system/cpu` (`online`, `cpuN/online`), never the
machine's CPUs. `--mode` makes it misbehave on purpose: `silent` (never
answers), `garbage` (answers something that is not a reply), `fail` (answers
`result` fail), `nack`, `wrong-cpu` (takes vCPU 0 offline). With `--sync` it
first asks the host which vCPUs must be offline (our boot-sync extension)
and takes them offline. It writes `ready` in its directory once it listens.

Plain standard library, on purpose: it checks the host against the spec's
bytes, not against our own codec.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path


def cpu_list(cpus: list[int]) -> str:
    parts: list[str] = []
    for cpu in sorted(cpus):
        if parts and "-" not in parts[-1] and int(parts[-1]) == cpu - 1:
            parts[-1] = f"{parts[-1]}-{cpu}"
        elif parts and "-" in parts[-1] and int(parts[-1].split("-")[1]) == cpu - 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{cpu}"
        else:
            parts.append(str(cpu))
    return ",".join(parts)


class Cpus:
    def __init__(self, root: Path, vcpus: int) -> None:
        self.root = root
        for cpu in range(1, vcpus):
            d = root / f"cpu{cpu}"
            d.mkdir(parents=True, exist_ok=True)
            if not (d / "online").exists():
                (d / "online").write_text("1\n")
        self.vcpus = vcpus
        self.write_online()

    def online(self) -> list[int]:
        return [0] + [
            c
            for c in range(1, self.vcpus)
            if (self.root / f"cpu{c}" / "online").read_text().strip() == "1"
        ]

    def set(self, cpu: int, on: bool) -> None:
        (self.root / f"cpu{cpu}" / "online").write_text("1\n" if on else "0\n")
        self.write_online()

    def write_online(self) -> None:
        (self.root / "online").write_text(cpu_list(self.online()) + "\n")


def send(sock: socket.socket, dest: str, data: dict[str, object]) -> None:
    envelope = {"version": 2, "dest_addr": dest, "data": data}
    sock.sendto(json.dumps(envelope).encode(), b"\0cgcs.messaging")


def answer(cpus: Cpus, data: dict[str, object], mode: str) -> dict[str, object] | None:
    if mode == "silent":
        return None
    if data.get("msg_type") != "scale_request" or data.get("resource") != "cpu":
        return {"version": 2, "msg_type": "nack", "log_msg": "not a scale request"}
    direction = data.get("direction")
    base: dict[str, object] = {"version": 2, "resource": "cpu", "direction": direction}
    if "id" in data:
        base["id"] = data["id"]
    if mode == "garbage":
        return {**base, "result": "perhaps"}
    if mode == "nack":
        return {"version": 2, "msg_type": "nack", "log_msg": "scaling is disabled here"}
    if mode == "fail":
        return {**base, "result": "fail", "err_msg": "the helper says no"}
    if direction == "down":
        online = cpus.online()
        cpu = 0 if mode == "wrong-cpu" else max(online)
        if cpu == 0 and mode != "wrong-cpu":
            return {**base, "result": "fail", "err_msg": "only CPU 0 is online"}
        if cpu:
            cpus.set(cpu, False)
        return {**base, "result": "success", "offline_cpu": cpu, "online_cpus": cpus.online()}
    if direction == "up":
        up = data.get("online_cpu")
        if not isinstance(up, int) or not 0 < up < cpus.vcpus:
            return {**base, "result": "fail", "err_msg": f"no CPU {up!r} here"}
        cpus.set(up, True)
        return {**base, "result": "success", "online_cpu": up, "online_cpus": cpus.online()}
    return {"version": 2, "msg_type": "nack", "log_msg": f"direction {direction!r}"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--vcpus", type=int, required=True)
    parser.add_argument("--mode", default="normal")
    parser.add_argument("--sync", action="store_true")
    args = parser.parse_args()
    cpus = Cpus(args.dir, args.vcpus)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0cgcs.scale")
    if args.sync:
        # Asked again each second: a guest agent whose host is not connected yet drops it.
        sock.settimeout(1.0)
        data: dict[str, object] = {}
        for _ in range(15):
            ask = {"version": 2, "msg_type": "scale_sync_request", "resource": "cpu"}
            send(sock, "cgcs.scale", ask)
            try:
                data = json.loads(sock.recv(65536)).get("data", {})
            except TimeoutError:
                continue
            if data.get("msg_type") == "scale_sync":
                break
        else:
            raise SystemExit("the host never answered the boot sync")
        listed = data["offline_cpus"]
        assert isinstance(listed, list)
        offline = [c for c in listed if 0 < c < cpus.vcpus]
        for cpu in range(1, cpus.vcpus):
            cpus.set(cpu, cpu not in offline)
        (args.dir / "synced").write_text(json.dumps(offline) + "\n")
        sock.settimeout(None)
    (args.dir / "ready").write_text("1\n")
    while True:
        raw, _ = sock.recvfrom(65536)
        try:
            envelope = json.loads(raw)
            data = envelope["data"]
            source = envelope["source_addr"]
        except (ValueError, KeyError, TypeError):
            continue
        reply = answer(cpus, data, args.mode)
        if reply is not None:
            send(sock, source, reply)


if __name__ == "__main__":
    sys.exit(main())
