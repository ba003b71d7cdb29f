"""The I/O under the machines: sockets, the paced multicast pass, image input and output.

Nothing here decides anything about the protocol; it moves bytes the way the
state machines ask and reports how it went. Blocking work (reading the
image, multicasting a pass at a steady rate, writing and hashing the output)
runs in worker threads so the event loop keeps answering the TCP side.

The data path costs CPU per system call more than per byte, so on Linux it
moves many datagrams per call where the kernel can: the sender hands up to
64 equal-sized datagrams to one `sendmsg` with UDP segmentation offload
(`UDP_SEGMENT`; the kernel or the NIC cuts them apart, each still a datagram
of its own on the wire), and the receiver takes up to 128 datagrams per
`recvmmsg`, each scattered straight into the slot of the buffer it belongs
to (`ScatterReceiver`); it also asks for UDP receive offload (`UDP_GRO`),
getting runs of datagrams in one receive where the device coalesces them
(GRO). Each falls back to one datagram per call where the kernel or the
device says no.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import glob
import logging
import mmap
import os
import re
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import BinaryIO

from blake3 import blake3

from servergroup.common.errors import RemoteError, UsageError
from servergroup.common.process import ProcessIdentity, alive
from servergroup.multicast.protocol import IP_UDP_OVERHEAD, Auth, data_header

log = logging.getLogger(__name__)

# <linux/in.h> and <asm-generic/socket.h>; not every Python build names them.
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
SO_RCVBUFFORCE = 33
#: Receive buffer we ask for on the multicast socket: room for bursts while
#: the event loop is busy elsewhere (root may exceed net.core.rmem_max).
RECEIVE_BUFFER = 64 * 1024 * 1024
#: Send buffer of the multicast socket: what a descheduled sender leaves queued
#: for the link (the kernel doubles it; ~32 ms at 1 Gbit/s).
SEND_BUFFER = 2 * 1024 * 1024
#: The pacer sleeps only when it is this far ahead of its schedule.
PACING_SLACK = 0.002

# <linux/udp.h>: segmentation and receive offload for UDP (Linux 4.18 / 5.0).
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
#: The most datagrams one segmented send may carry (UDP_MAX_SEGMENTS).
MAX_SEGMENTS = 64
#: The most bytes of datagrams one send may carry (an IPv4 packet less its headers).
MAX_SEND_BYTES = 65535 - IP_UDP_OVERHEAD
#: Room for one receive: a run of coalesced datagrams is at most 64 KiB.
RECEIVE_SPACE = 2 * 65536
_SEGMENTATION_REFUSED = frozenset(
    (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.ENOTSUP)
)


class TransferError(RemoteError):
    """The network or the disk failed the transfer (the message says which, and where)."""


# --- sockets --------------------------------------------------------------------------


def describe_os_error(exc: OSError) -> str:
    return exc.strerror or str(exc)


def multicast_sender_socket(local_ip: IPv4Address, ttl: int = 1) -> socket.socket:
    """A UDP socket that multicasts out of the interface with `local_ip`, never fragmenting."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((str(local_ip), 0))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, local_ip.packed)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        with contextlib.suppress(OSError):  # a smaller buffer only costs speed
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"LOCAL_IP {local_ip} is not an address of this host.") from None
        raise TransferError(f"cannot multicast from {local_ip}: {describe_os_error(exc)}") from None
    return sock


def multicast_receiver_socket(
    group: IPv4Address, port: int, local_ip: IPv4Address
) -> socket.socket:
    """A non-blocking UDP socket that receives `group`:`port` on the interface with `local_ip`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except OSError:  # not root: the most net.core.rmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((str(group), port))
        membership = struct.pack("4s4s", group.packed, local_ip.packed)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # without it: one datagram per receive
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRNOTAVAIL, errno.ENODEV):
            raise UsageError(f"LOCAL_IP {local_ip} is not an address of this host.") from None
        raise TransferError(
            f"cannot receive multicast {group}:{port} on {local_ip}: {describe_os_error(exc)}"
        ) from None
    return sock


def interface_mtu(local_ip: IPv4Address) -> tuple[str, int]:
    """(name, MTU) of the interface that holds `local_ip`; UsageError if none does."""
    import psutil  # only the sender's start needs it

    stats = psutil.net_if_stats()
    for name, addresses in psutil.net_if_addrs().items():
        holds = any(a.family == socket.AF_INET and a.address == str(local_ip) for a in addresses)
        if holds and name in stats and stats[name].mtu > 0:
            return name, stats[name].mtu
    raise UsageError(f"LOCAL_IP {local_ip} is not an address of this host.")


# --- the sender's buffers -------------------------------------------------------------


@dataclass(slots=True)
class PreparedBuffer:
    """One buffer of the image, cut into packets whose headers and tags are computed."""

    buffer_id: int
    data: bytes
    payload_size: int
    headers: list[bytes]
    tags: list[bytes]

    @property
    def packet_count(self) -> int:
        return len(self.headers)

    @property
    def full_size(self) -> int:
        """Bytes of a datagram with a whole payload (all but maybe the last)."""
        if not self.headers:
            return 0
        return len(self.headers[0]) + self.payload_size + len(self.tags[0])

    def parts(self, index: int) -> tuple[bytes, memoryview, bytes]:
        start = index * self.payload_size
        payload = memoryview(self.data)[start : start + self.payload_size]
        return self.headers[index], payload, self.tags[index]

    def packet(self, index: int) -> bytes:
        return b"".join(self.parts(index))


def prepare_buffer(
    session: int, buffer_id: int, data: bytes, payload_size: int, auth: Auth | None
) -> PreparedBuffer:
    view = memoryview(data)
    headers: list[bytes] = []
    tags: list[bytes] = []
    for start in range(0, len(data), payload_size):
        header, tag = data_header(
            session, buffer_id, len(headers), view[start : start + payload_size], auth
        )
        headers.append(header)
        tags.append(tag)
    return PreparedBuffer(
        buffer_id=buffer_id, data=data, payload_size=payload_size, headers=headers, tags=tags
    )


def image_digest() -> blake3:
    """The hash of a whole image: BLAKE3 (32 bytes).

    The image is checked end to end by this digest, which the sender computes
    as it reads and each receiver as it writes. BLAKE3 rather than SHA-256:
    ~4.7 GB/s against ~1.3 GB/s (SHA-NI) on one core here, which is ~0.6 CPU-s
    less per GiB on every receiver and on the sender, and it is as strong a
    check (a 256-bit cryptographic hash). The user never asked for SHA-256:
    the digest is the protocol's own check, reported for the record.
    """
    return blake3()


class ImageReader:
    """Reads the image in buffer-sized pieces (short reads from pipes are joined) and hashes it."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._hash = image_digest()
        self.total = 0

    def read(self, size: int) -> bytes:
        parts: list[bytes] = []
        wanted = size
        while wanted:
            try:
                chunk = self._source.read(wanted)
            except OSError as exc:
                raise TransferError(f"cannot read the image: {describe_os_error(exc)}") from None
            if not chunk:
                break
            parts.append(chunk)
            wanted -= len(chunk)
        data = b"".join(parts)
        self._hash.update(data)
        self.total += len(data)
        return data

    def digest(self) -> bytes:
        return self._hash.digest()


class Multicaster:
    """Sends passes of packets to the group: paced, several datagrams per call where it can.

    Used from one worker thread at a time. The first segmented send the
    kernel refuses turns segmentation off for the rest of the transfer.
    """

    def __init__(self, sock: socket.socket, destination: tuple[str, int]) -> None:
        self._sock = sock
        self._destination = destination
        self.segmenting = sys.platform == "linux"

    def send_pass(
        self,
        buffer: PreparedBuffer,
        indices: Sequence[int],
        rate: float,
        stop: threading.Event,
    ) -> float:
        """Multicast these packets at `rate` bits/s (blocking); the seconds it took.

        Packets go in runs of equal size (one call each when segmenting); a
        shorter packet (a buffer's last) ends its run. The pacer keeps the
        average at `rate` and sleeps between runs when it is ahead.
        """
        started = time.monotonic()
        seconds_per_bit = 1.0 / max(rate, 1.0)
        full = buffer.full_size
        most = max(1, min(MAX_SEGMENTS, MAX_SEND_BYTES // full)) if full else 1
        if not self.segmenting:
            most = 1
        sent_bits = 0
        run: list[bytes | memoryview] = []
        count = 0
        run_bits = 0
        parts = buffer.parts
        for index in indices:
            header, payload, tag = parts(index)
            size = len(header) + len(payload) + len(tag)
            run.append(header)
            run.append(payload)
            if tag:
                run.append(tag)
            count += 1
            run_bits += (size + IP_UDP_OVERHEAD) * 8
            if count < most and size == full:
                continue
            self._send_run(run, count, full)
            run = []
            count = 0
            sent_bits += run_bits
            run_bits = 0
            if stop.is_set():
                break
            ahead = started + sent_bits * seconds_per_bit - time.monotonic()
            if ahead > PACING_SLACK:
                time.sleep(ahead)
        if run and not stop.is_set():
            self._send_run(run, count, full)
        return max(time.monotonic() - started, 1e-6)

    def _send_run(self, run: list[bytes | memoryview], count: int, segment: int) -> None:
        """Send `count` datagrams whose parts are `run`; all but the last are `segment` long."""
        if count > 1 and self.segmenting:
            option = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment))]
            try:
                self._send(run, option)
                return
            except OSError as exc:
                if exc.errno not in _SEGMENTATION_REFUSED:
                    raise _send_error(exc) from None
                self.segmenting = False
                log.info(
                    "the kernel refuses UDP segmentation here (%s); one datagram per call",
                    describe_os_error(exc),
                )
        per = len(run) // count
        for start in range(0, len(run), per):
            try:
                self._send(run[start : start + per], [])
            except OSError as exc:
                raise _send_error(exc) from None

    def _send(self, parts: list[bytes | memoryview], option: list[tuple[int, int, bytes]]) -> None:
        while True:
            try:
                self._sock.sendmsg(parts, option, 0, self._destination)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    raise
                time.sleep(0.0005)  # a full queue: wait for it to drain


class ScatterReceiver:
    """Many datagrams per system call, each received straight into the buffer it belongs to.

    `recvmmsg(2)` through ctypes (Python has no binding): up to `VLEN`
    datagrams per call, each scattered over three pieces (`receiving.Landing`
    says where): its header into `headers`, the next `slot_size` bytes (the
    payload, when it is the packet expected there) into the slot of the
    buffer's memory it is expected in, the rest (a tag, or a longer datagram
    whole) into `tails`. The payload is never copied by the process, and one
    call takes what a wake-up finds. The ctypes call releases the GIL.
    """

    #: Datagrams per call: what a wake-up finds at 1 Gbit/s (see the receiver's
    #: COALESCE_DELAY), in one call.
    VLEN = 256
    #: A tail holds the rest of any datagram (a UDP payload is at most 65507 bytes).
    TAIL = 65536
    _MSG = 64  # sizeof(struct mmsghdr) on 64-bit Linux
    _IOV = 3

    def __init__(self, sock: socket.socket, header_size: int) -> None:
        vlen = self.VLEN
        self._fd = sock.fileno()
        self.header_size = header_size
        self.headers = bytearray(header_size * vlen)
        # Anonymous pages, faulted in only where something lands (a tag, a
        # rare long datagram): a bytearray would clear all 16 MiB at start.
        self.tails = memoryview(
            mmap.mmap(-1, self.TAIL * vlen, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        )
        # Each struct iovec is (base, length); a datagram has three.
        self._iov = array.array("Q", bytes(16 * self._IOV * vlen))
        self._messages = bytearray(self._MSG * vlen)
        self._pins = [ctypes.c_char.from_buffer(b) for b in (self.headers, self.tails)]
        headers, tails = (ctypes.addressof(p) for p in self._pins)
        iov_at = self._iov.buffer_info()[0]
        messages = memoryview(self._messages).cast("Q")
        for j in range(vlen):
            first = j * 2 * self._IOV
            self._iov[first : first + 6] = array.array(
                "Q",
                (headers + j * header_size, header_size, 0, 0, tails + j * self.TAIL, self.TAIL),
            )
            # struct msghdr: name, namelen, iov, iovlen, control, controllen, flags.
            messages[j * 8 + 2] = iov_at + j * 16 * self._IOV
            messages[j * 8 + 3] = self._IOV
        messages.release()
        self._lengths = memoryview(self._messages).cast("I")[14 :: self._MSG // 4]
        # The slots' addresses go into the iovecs as one big integer, one 64-bit
        # lane per datagram (`_addresses`): Python's int arithmetic does in one
        # step what a loop over the slots would do per slot (~25 us per call).
        self._bases = memoryview(self._iov)[2 :: 2 * self._IOV]
        self._ones = array.array("Q", [1] * vlen).tobytes()
        self._ramp = array.array("Q", range(vlen)).tobytes()
        self._messages_pin = ctypes.c_char.from_buffer(self._messages)
        self._messages_at = ctypes.addressof(self._messages_pin)
        self._slot_size = 0

    def receive(
        self, memory: bytearray | memoryview, slots: Sequence[int], slot_size: int
    ) -> list[int]:
        """Receive up to len(slots) datagrams without waiting; their lengths ([] if none)."""
        count = min(len(slots), self.VLEN)
        if count == 0:
            return []
        pin = ctypes.c_char.from_buffer(memory)
        base = ctypes.addressof(pin)
        iov = self._iov
        self._bases[:count] = self._addresses(base, slots, count, slot_size)
        if slot_size != self._slot_size:
            iov[3::6] = array.array("Q", (slot_size,) * self.VLEN)
            self._slot_size = slot_size
        assert _recvmmsg is not None  # made only where there is one
        got = _recvmmsg(self._fd, self._messages_at, count, MSG_DONTWAIT, None)
        del pin
        if got < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return []
            raise OSError(code, os.strerror(code))
        return self._lengths[:got].tolist()

    def _addresses(self, base: int, slots: Sequence[int], count: int, size: int) -> memoryview:
        """base + slots[j] * size for j < count, as native 64-bit words.

        Each lane of the big integers below holds one datagram's number: an
        address (below 2**64) never carries into the next lane, so adding or
        multiplying the whole integers adds or multiplies every lane at once.
        """
        order = sys.byteorder
        width = 8 * count
        ones = int.from_bytes(self._ones[:width], order)
        if isinstance(slots, range) and slots.step == 1:
            lanes = (base + slots.start * size) * ones + size * int.from_bytes(
                self._ramp[:width], order
            )
        else:
            indices = array.array("Q", slots[:count]).tobytes()
            lanes = base * ones + size * int.from_bytes(indices, order)
        return memoryview(lanes.to_bytes(width, order)).cast("Q")


def _load_recvmmsg() -> Callable[..., int] | None:
    if sys.platform != "linux" or struct.calcsize("P") != 8:
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).recvmmsg
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    function.restype = ctypes.c_int
    recvmmsg: Callable[..., int] = function
    return recvmmsg


MSG_DONTWAIT = 0x40
_recvmmsg = _load_recvmmsg()


def scatter_receiver(sock: socket.socket, header_size: int) -> ScatterReceiver | None:
    """A `ScatterReceiver` on `sock`, or None where the system has no recvmmsg."""
    return ScatterReceiver(sock, header_size) if _recvmmsg is not None else None


def buffer_memory(size: int) -> memoryview:
    """Memory for one buffer of the receiver: anonymous pages, huge ones where the kernel has them.

    A zeroed bytearray is written whole when made (CPython clears it): every
    4 KiB page faulted in and cleared by the process, ~20 ms of CPU per 32
    MiB buffer here. Anonymous pages are faulted in by the first receive
    into them instead, and with transparent huge pages (`MADV_HUGEPAGE`;
    most kernels give them on request) 512 times fewer: measured ~6 ms per
    32 MiB. A receiver allocates two to four buffers and then reuses them.
    """
    if size <= 0:
        return memoryview(bytearray(size))
    try:
        pages = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError, AttributeError):  # no anonymous mappings here
        return memoryview(bytearray(size))
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        with contextlib.suppress(OSError):  # a kernel without huge pages: small ones
            pages.madvise(advice)
    return memoryview(pages)


def _send_error(exc: OSError) -> TransferError:
    if exc.errno == errno.EMSGSIZE:
        return TransferError("a datagram is larger than the interface's MTU; lower --mtu.")
    return TransferError(f"multicast failed: {describe_os_error(exc)}")


# --- the receiver's output ------------------------------------------------------------


class Sink:
    """Where a receiver writes the image: in order, hashed (BLAKE3), visible only when verified."""

    def __init__(self) -> None:
        self._hash = image_digest()
        self.written = 0

    @property
    def where(self) -> str:
        raise NotImplementedError

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._write(data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise TransferError(f"the disk is full writing {self.where}.") from None
            raise TransferError(f"cannot write {self.where}: {describe_os_error(exc)}") from None
        self._hash.update(data)
        self.written += len(data)

    def check(self, total_bytes: int, digest: bytes) -> str:
        """'' if what was written is the image; else why not."""
        if self.written != total_bytes:
            return f"got {self.written} bytes, the image has {total_bytes}"
        if self._hash.digest() != digest:
            return "the BLAKE3 digest of what arrived differs from the sender's"
        return ""

    def commit(self) -> None:
        """Make the verified image visible (raises TransferError)."""

    def discard(self) -> None:
        """Forget a failed image."""

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError


class StreamSink(Sink):
    """A stream such as stdout: bytes are out as they arrive; a failure can only be reported."""

    def __init__(self, stream: BinaryIO, name: str = "standard output") -> None:
        super().__init__()
        self._stream = stream
        self._name = name

    @property
    def where(self) -> str:
        return self._name

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self._stream.write(data)

    def commit(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise TransferError(f"cannot write {self._name}: {describe_os_error(exc)}") from None


class FileSink(Sink):
    """A file written under a hidden temporary name beside it, renamed when verified.

    The temporary name is `.NAME.<pid>-<start>.<random>.part`: the writer's
    PID and its start time (so a reused PID is told apart). A failed transfer
    removes its temporary file; a receiver killed with SIGKILL cannot, but
    never leaves a partial file under NAME, and the next `FileSink` for the
    same NAME removes the part files whose writer is no longer running.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path
        for stale in remove_stale_parts(path):
            log.info("removed %s, left by a receiver that is no longer running", stale)
        me = ProcessIdentity.me()
        prefix = f".{path.name}.{me.pid}-{me.start_time}."
        try:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=PART_SUFFIX, dir=path.parent)
        except OSError as exc:
            raise UsageError(f"cannot write to {path.parent}: {describe_os_error(exc)}.") from None
        self._fd = fd
        self._tmp_name: Path | None = Path(name)

    @property
    def where(self) -> str:
        return str(self._path)

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def commit(self) -> None:
        try:
            os.fsync(self._fd)
            if self._tmp_name is not None:
                os.replace(self._tmp_name, self._path)
                self._tmp_name = None
        except OSError as exc:
            self.discard()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise TransferError(f"the disk is full writing {self._path}.") from None
            raise TransferError(f"cannot write {self._path}: {describe_os_error(exc)}") from None
        finally:
            self._close()

    def discard(self) -> None:
        if self._tmp_name is not None:
            with contextlib.suppress(OSError):
                self._tmp_name.unlink()
            self._tmp_name = None
        self._close()

    def _close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


PART_SUFFIX = ".part"


def remove_stale_parts(path: Path) -> list[Path]:
    """Remove the part files for `path` whose writer has exited; the ones removed.

    Only names of the form `FileSink` gives are touched; a part file of a
    receiver that still runs (even one writing the same NAME) stays.
    """
    pattern = re.compile(
        re.escape(f".{path.name}.") + r"(\d+)-(\d+)\.[a-z0-9_]+" + re.escape(PART_SUFFIX)
    )
    removed = []
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.*{PART_SUFFIX}"))
    except OSError:
        return []
    for candidate in candidates:
        match = pattern.fullmatch(candidate.name)
        if match is None:
            continue
        pid, start = int(match[1]), int(match[2])
        # A start time of 0: written where it could not be read; the PID is all there is.
        if alive(pid) if start == 0 else alive(ProcessIdentity(pid=pid, start_time=start)):
            continue
        with contextlib.suppress(OSError):
            candidate.unlink()
            removed.append(candidate)
    return removed
    return True
