"""Benchmark: one image to N lab hosts over 1 Gbit/s links, servergroup against its peers.

In one run, for each MTU, receiver count N and loss rate, on a lab of
1 + N hosts whose links are limited to `--link` by `tc tbf` (both ways) and
which drop that share of incoming UDP datagrams (nftables), it times:

- servergroup: `servergroup image send|receive` (adaptive rate, the default);
- uftp: `uftpd` on each receiver, `uftp -R <link rate>` (`-b 8800` at MTU 9000);
- udpcast: `udp-receiver` on each receiver, `udp-sender --min-receivers N`;
- tcp: parallel TCP unicast, `sendfile` of the whole image to each receiver.

The time of a run is from starting the sender to the last receiver having
the whole image (servergroup's modules are compiled to bytecode first, as
an installed package has them). Ideal is image size / link rate. Outputs are checked (size
and SHA-256 of three 1 MiB samples). Writes a table on stdout and
bench/results/multicast.{md,json}.

    .venv/bin/python bench/multicast.py          # 512 MiB, N 1/4/8, loss 0/1/5, MTU 9000 (+1500)
    .venv/bin/python bench/multicast.py --quick  # 64 MiB, N 1/4, loss 0/5, MTU 9000

uftp and udpcast come from Debian (`apt-get install uftp udpcast`); this
script installs them when they are missing. Needs root.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from servergroup.lab import Lab

RESULTS = Path(__file__).resolve().parent / "results"
SG = [sys.executable, "-m", "servergroup"]
TOOLS = ("servergroup", "uftp", "udpcast", "tcp")
RUN_TIMEOUT = 120.0
TCP_PORT = 19999

TCP_SERVER = """
import os, socket, sys, threading
path, n, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("", port)); srv.listen(64); print("ready", flush=True)
def serve(conn):
    with conn, open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size; offset = 0
        while offset < size:
            offset += os.sendfile(conn.fileno(), f.fileno(), offset, size - offset)
threads = []
for _ in range(n):
    conn, _ = srv.accept()
    t = threading.Thread(target=serve, args=(conn,)); t.start(); threads.append(t)
for t in threads: t.join()
"""
TCP_CLIENT = """
import socket, sys, time
host, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + 30
while True:
    try:
        s = socket.create_connection((host, port)); break
    except OSError:
        if time.monotonic() > deadline: raise
        time.sleep(0.05)
with s, open(out, "wb") as f:
    while True:
        data = s.recv(1 << 20)
        if not data: break
        f.write(data)
"""


@dataclass
class Row:
    tool: str
    mtu: int
    receivers: int
    loss: float
    size: int
    seconds: float | None
    ideal: float
    ratio: float | None
    ok: bool
    note: str = ""


def ensure_tools() -> None:
    missing = [
        pkg for pkg, exe in (("uftp", "uftp"), ("udpcast", "udp-sender")) if not shutil.which(exe)
    ]
    if missing:
        print(f"installing {' '.join(missing)} (apt-get)", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
            subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env, check=True)


def compile_bytecode() -> None:
    """Compile servergroup's modules once, as an installed package has them.

    With PYTHONDONTWRITEBYTECODE set (this checkout's shell sets it), every
    `servergroup` process would otherwise compile its sources again at start
    (~0.2 s of CPU each, the sender's on the clock).
    """
    import compileall

    import servergroup

    compileall.compile_dir(str(Path(servergroup.__file__).parent), quiet=1)


def sample_digest(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for offset in (0, size // 2, max(0, size - (1 << 20))):
            f.seek(offset)
            h.update(f.read(1 << 20))
    return h.hexdigest()


def check_outputs(paths: list[Path], size: int, want: str) -> bool:
    return all(
        p.exists() and p.stat().st_size == size and sample_digest(p, size) == want for p in paths
    )


def wait_all(procs: list[subprocess.Popen[bytes]], deadline: float) -> bool:
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
    return True


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def run_servergroup(
    lab: Lab, image: Path, work: Path, n: int, mtu: int
) -> tuple[float | None, list[Path], str]:
    hosts = lab.hosts()
    server = str(hosts[0].address)
    outs = [work / f"sg-{h.name}.img" for h in hosts[1:]]
    receivers = [
        lab.popen(
            h.name,
            [
                *SG,
                "image",
                "receive",
                str(h.address),
                server,
                "--output",
                str(out),
                "--timeout",
                "30",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for h, out in zip(hosts[1:], outs, strict=True)
    ]
    time.sleep(0.5)  # the receivers' interpreters start; they retry connecting meanwhile
    started = time.monotonic()
    with image.open("rb") as f:
        sender = lab.popen(
            "h1",
            [*SG, "image", "send", server, str(n), "--mtu", str(mtu), "--json"],
            stdin=f,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    try:
        done = wait_all([sender, *receivers], started + RUN_TIMEOUT)
        elapsed = time.monotonic() - started
        note = ""
        if sender.stdout is not None and done:
            report = json.loads(sender.stdout.read().decode().strip().splitlines()[-1])
            tcp = sum(c["tcp_packets"] for c in report["clients"])
            note = f"rate {report['final_rate_bps'] / 1e6:.0f} Mbit/s, {tcp} pkts over TCP"
        return (elapsed if done and sender.returncode == 0 else None), outs, note
    finally:
        stop([sender, *receivers])


def run_uftp(
    lab: Lab, image: Path, work: Path, n: int, mtu: int, link: int
) -> tuple[float | None, list[Path], str]:
    hosts = lab.hosts()
    dirs = [work / f"uftp-{h.name}" for h in hosts[1:]]
    for d in dirs:
        d.mkdir()
    receivers = [
        lab.popen(
            h.name,
            ["uftpd", "-d", "-q", "-I", "eth0", "-B", "8388608", "-D", str(d)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for h, d in zip(hosts[1:], dirs, strict=True)
    ]
    ids = ",".join(f"0x{int(h.address):08X}" for h in hosts[1:])
    time.sleep(0.5)
    argv = ["uftp", "-q", "-I", "eth0", "-B", "8388608", "-H", ids, "-R", str(link // 1000)]
    if mtu >= 9000:
        argv += ["-b", "8800"]
    started = time.monotonic()
    sender = lab.popen(
        "h1", [*argv, str(image)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        done = wait_all([sender], started + RUN_TIMEOUT)
        elapsed = time.monotonic() - started
        return (
            (elapsed if done and sender.returncode == 0 else None),
            [d / image.name for d in dirs],
            "",
        )
    finally:
        stop([sender, *receivers])


def run_udpcast(lab: Lab, image: Path, work: Path, n: int) -> tuple[float | None, list[Path], str]:
    hosts = lab.hosts()
    outs = [work / f"udpcast-{h.name}.img" for h in hosts[1:]]
    receivers = [
        lab.popen(
            h.name,
            [
                "udp-receiver",
                "--interface",
                "eth0",
                "--nokbd",
                "--portbase",
                "9000",
                "--file",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for h, out in zip(hosts[1:], outs, strict=True)
    ]
    time.sleep(0.3)
    started = time.monotonic()
    sender = lab.popen(
        "h1",
        [
            "udp-sender",
            "--interface",
            "eth0",
            "--nokbd",
            "--portbase",
            "9000",
            "--min-receivers",
            str(n),
            "--rexmit-hello-interval",
            "500",
            "--file",
            str(image),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        done = wait_all([sender, *receivers], started + RUN_TIMEOUT)
        elapsed = time.monotonic() - started
        return (elapsed if done and sender.returncode == 0 else None), outs, ""
    finally:
        stop([sender, *receivers])


def run_tcp(lab: Lab, image: Path, work: Path, n: int) -> tuple[float | None, list[Path], str]:
    hosts = lab.hosts()
    server = str(hosts[0].address)
    outs = [work / f"tcp-{h.name}.img" for h in hosts[1:]]
    sender = lab.popen(
        "h1",
        [sys.executable, "-c", TCP_SERVER, str(image), str(n), str(TCP_PORT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert sender.stdout is not None
    sender.stdout.readline()
    started = time.monotonic()
    receivers = [
        lab.popen(
            h.name,
            [sys.executable, "-c", TCP_CLIENT, server, str(TCP_PORT), str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for h, out in zip(hosts[1:], outs, strict=True)
    ]
    try:
        done = wait_all([sender, *receivers], started + RUN_TIMEOUT)
        elapsed = time.monotonic() - started
        ok = done and all(p.returncode == 0 for p in receivers)
        return (elapsed if ok else None), outs, ""
    finally:
        stop([sender, *receivers])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="64 MiB, N 1/4, loss 0/5, MTU 9000")
    parser.add_argument("--size-mib", type=int)
    parser.add_argument("--receivers", help="comma-separated, e.g. 1,4,8")
    parser.add_argument("--loss", help="comma-separated percentages, e.g. 0,1,5")
    parser.add_argument("--mtu", help="comma-separated, e.g. 9000,1500")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--link", default="1gbit", help="per-host link rate (tc tbf)")
    parser.add_argument(
        "--output", default="multicast", help="result file stem under bench/results"
    )
    args = parser.parse_args()
    quick = args.quick
    size = (args.size_mib or (64 if quick else 512)) << 20
    counts = [int(x) for x in (args.receivers or ("1,4" if quick else "1,4,8")).split(",")]
    losses = [float(x) for x in (args.loss or ("0,5" if quick else "0,1,5")).split(",")]
    mtus = [int(x) for x in (args.mtu or ("9000" if quick else "9000,1500")).split(",")]
    tools = args.tools.split(",")
    link = 1_000_000_000 if args.link == "1gbit" else int(float(args.link))
    ensure_tools()
    compile_bytecode()

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="sg-bench-", dir="/dev/shm") as tmp:
        base = Path(tmp)
        image = base / "image.bin"
        with image.open("wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        want = sample_digest(image, size)
        lab = Lab("bmc", owner_pid=os.getpid())
        try:
            for mtu in mtus:
                for n in counts:
                    for loss in losses:
                        if mtu != mtus[0] and (n != 4 or loss > 1):
                            continue  # the second MTU is for reference: N=4, low loss only
                        lab.up(n + 1, mtu=mtu, rate=args.link, loss=loss or None)
                        for tool in tools:
                            work = base / "work"
                            work.mkdir()
                            try:
                                if tool == "servergroup":
                                    seconds, outs, note = run_servergroup(lab, image, work, n, mtu)
                                elif tool == "uftp":
                                    seconds, outs, note = run_uftp(lab, image, work, n, mtu, link)
                                elif tool == "udpcast":
                                    seconds, outs, note = run_udpcast(lab, image, work, n)
                                else:
                                    seconds, outs, note = run_tcp(lab, image, work, n)
                                ok = seconds is not None and check_outputs(outs, size, want)
                            finally:
                                shutil.rmtree(work, ignore_errors=True)
                            ideal = size * 8 / link
                            row = Row(
                                tool=tool,
                                mtu=mtu,
                                receivers=n,
                                loss=loss,
                                size=size,
                                seconds=round(seconds, 3) if seconds else None,
                                ideal=round(ideal, 3),
                                ratio=round(seconds / ideal, 2) if seconds else None,
                                ok=ok,
                                note=note,
                            )
                            rows.append(row)
                            shown = (
                                f"{seconds:.2f} s ({seconds / ideal:.2f}x)" if seconds else "failed"
                            )
                            verdict = "ok" if ok else "BAD OUTPUT"
                            print(
                                f"mtu {mtu} n {n} loss {loss:g}% {tool:12s} {shown} {verdict}",
                                note,
                                file=sys.stderr,
                                flush=True,
                            )
        finally:
            lab.down()
    write_results(rows, args.output, size, link)


def write_results(rows: list[Row], stem: str, size: int, link: int) -> None:
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}",
        "size_bytes": size,
        "link_bps": link,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (RESULTS / f"{stem}.json").write_text(
        json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2) + "\n"
    )
    keys = sorted({(r.mtu, r.receivers, r.loss) for r in rows}, key=lambda k: (-k[0], k[1], k[2]))
    tools = [t for t in TOOLS if any(r.tool == t for r in rows)]
    lines = [
        f"# Multicast image distribution: {size >> 20} MiB over {link / 1e9:g} Gbit/s links",
        "",
        f"{meta['machine']}; {meta['when']}. Time from starting the sender until every",
        "receiver has the whole image (outputs checked); in brackets the ratio to the ideal",
        "(size / link rate).",
        "",
        "| MTU | N | loss | " + " | ".join(tools) + " | goal met |",
        "|---|---|---|" + "---|" * len(tools) + "---|",
    ]
    for mtu, n, loss in keys:
        cells = []
        by_tool = {r.tool: r for r in rows if (r.mtu, r.receivers, r.loss) == (mtu, n, loss)}
        for tool in tools:
            r = by_tool.get(tool)
            if r is None:
                cells.append("-")
            elif r.seconds is None or not r.ok:
                cells.append("failed")
            else:
                cells.append(f"{r.seconds:.2f} s ({r.ratio:.2f}x)")
        ours = by_tool.get("servergroup")
        goal = "-"
        if ours is not None and ours.ratio is not None and ours.ok:
            bound = 1.25 if loss <= 1 else 1.5
            peers = [
                by_tool[t].seconds
                for t in ("uftp", "udpcast")
                if t in by_tool and by_tool[t].seconds
            ]
            within = ours.ratio <= bound
            faster = all(
                ours.seconds is not None and ours.seconds < p for p in peers if p is not None
            )
            goal = (
                "yes"
                if within and faster
                else "no: "
                + ", ".join(
                    x
                    for x, bad in (
                        (f"> {bound}x ideal", not within),
                        ("slower than a peer", not faster),
                    )
                    if bad
                )
            )
        elif ours is not None:
            goal = "no: failed"
        lines.append(f"| {mtu} | {n} | {loss:g} % | " + " | ".join(cells) + f" | {goal} |")
    notes = [r for r in rows if r.tool == "servergroup" and r.note]
    if notes:
        lines += ["", "servergroup details:", ""]
        lines += [f"- MTU {r.mtu}, N {r.receivers}, loss {r.loss:g} %: {r.note}" for r in notes]
    text = "\n".join(lines) + "\n"
    (RESULTS / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
