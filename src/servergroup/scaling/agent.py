"""The guest's scale agent: takes vCPUs offline and online when the host asks (seed 003).

Theory of operation. The agent is an application of the guest agent: it
binds the abstract address `cgcs.scale` and takes only datagrams that the
guest agent (`cgcs.messaging`) delivers, so a request comes from the host
over the channel, never from another program of the guest. It answers each
request through the guest agent to the request's `source_addr` (the host's
`scale-<hex>` helper, or the host's scaler). All CPU access goes through a
`sysfs.CpuSysfs` under the configured sysfs root: a qemu server's own
kernel, or a lab server's tree.

- **down** (`scale_request`, direction "down"): run the helper
  `--cpu_del`; `choice.choose_offline` turns its exit status and the CPUs
  online into the CPU to take offline (never CPU 0; with only CPU 0 online
  the reply is `fail`); take it offline (already offline counts as done)
  and reply `success` with it and the online list read back from sysfs.
- **up**: take the CPU the host names online, then run the helper
  `--cpu_add N [online list]`. A helper that fails is logged; the CPU stays
  online. A CPU already online is a success without running the helper
  (a host that repeats a request whose reply it lost changes nothing).
- **deadline**: a request must be answered within its `timeout_ms`, counted
  from when the agent received it. A helper still running then is killed
  with its process group and the reply is `fail`; on a scale-up the CPU is
  taken offline again first, so that `fail` always means "nothing changed".
- **one at a time**: requests are served in arrival order, each to its end
  before the next, so two requests in flight never pick the same CPU.
- **garbage**: a request that does not decode is answered with a `nack`
  (`log_msg`: one sentence) when it says who sent it, else logged and dropped.
- **boot sync** (ours, an extension of protocol v2; docs/design/scaling.md):
  at start, before it reports ready, the agent asks the host's `cgcs.scale`
  which vCPUs must be offline (`scale_sync_request`) and makes the guest
  match the answer (`scale_sync`): exactly those CPUs offline (CPU 0
  excepted), the others online; the helper is not run (applications have not
  started). Without an answer it asks again, with jitter, until
  `sync_timeout`, then goes on as it is (logged). With a `metadata_url` it
  reads the original's metadata key `offline_cpuset` (`set([1, 2])`) over
  HTTP instead. A `scale_sync` that arrives later (a host that pushes its
  record) is applied the same way.

The agent runs on one thread (`run`, until `stop`): in `servergroup guest`
beside the guest agent's loop, or alone as `servergroup scale-agent`. It
imports neither asyncio nor the CLI framework: a qemu server's /init starts
it with the guest agent, and under emulation every import costs boot time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from servergroup.common.errors import ConfigError, RemoteError
from servergroup.common.logsetup import log_bug
from servergroup.guestcomm.protocol import (
    MESSAGING_ADDR,
    SCALE_ADDR,
    Envelope,
    JsonObject,
    ProtocolError,
    decode_envelope,
    encode_envelope,
)
from servergroup.guestcomm.sockets import AbstractSocket, Datagram, SendResult
from servergroup.scaling.choice import (
    HELPER_DEL_ARGS,
    Chosen,
    HelperEnd,
    HelperOutcome,
    choose_offline,
    describe,
    helper_add_args,
    timed_out_message,
)
from servergroup.scaling.cpus import CpuListError, format_cpu_list, parse_cpuset_repr
from servergroup.scaling.helper import DEFAULT_HELPER, run_helper
from servergroup.scaling.protocol import (
    Direction,
    Result,
    ScaleMessage,
    ScaleNack,
    ScaleReply,
    ScaleRequest,
    SyncReply,
    SyncRequest,
    decode_request,
    encode_message,
)
from servergroup.scaling.sysfs import CpuSysfs, CpuSysfsError, make_lab_tree, open_cpu_sysfs

log = logging.getLogger(__name__)

#: How long the boot sync waits for the host before going on.
DEFAULT_SYNC_TIMEOUT: Final = 10.0
#: First interval between two boot-sync requests (doubling, jittered, up to the maximum).
SYNC_RETRY_INITIAL: Final = 0.25
SYNC_RETRY_MAX: Final = 2.0
#: How long one fetch of the metadata URL may take.
METADATA_TIMEOUT: Final = 2.0
#: How long a reply may wait for room in the guest agent's queue before it is dropped.
SEND_TIMEOUT: Final = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleAgentConfig:
    """What `ScaleAgent` needs (every field has the real guest's default)."""

    #: The sysfs root: the CPUs are under `<sysfs_root>/sys/devices/system/cpu`.
    sysfs_root: Path = Path("/")
    #: The application's helper; a missing one is the original's "no helper".
    helper: Path = DEFAULT_HELPER
    #: The abstract address the agent binds.
    address: str = SCALE_ADDR
    #: The guest agent's address: what the agent sends through, and the only sender it believes.
    messaging_address: str = MESSAGING_ADDR
    #: How long the boot sync waits for an answer (0: no boot sync).
    sync_timeout: float = DEFAULT_SYNC_TIMEOUT
    #: Read the boot sync from this URL's `offline_cpuset` instead of asking over the channel.
    metadata_url: str | None = None
    #: A file written (the agent's PID) once the boot sync is over; removed at stop.
    ready_file: Path | None = None
    #: A lab server: make a lab CPU tree of this many CPUs under `sysfs_root` at start,
    #: all online, as a boot leaves them (`sysfs.make_lab_tree`).
    lab_cpus: int | None = None

    def __post_init__(self) -> None:
        if self.sync_timeout < 0:
            raise ConfigError("the boot sync timeout must be 0 (no boot sync) or more seconds.")
        if self.metadata_url is not None and not self.metadata_url.startswith(
            ("http://", "https://")
        ):
            raise ConfigError(
                f"the metadata URL {self.metadata_url!r} must be http:// or https://."
            )
        if self.lab_cpus is not None and self.lab_cpus < 1:
            raise ConfigError(f"a lab server has at least 1 CPU, not {self.lab_cpus}.")


class ScaleAgent:
    """Serves scale requests for this guest (see the module docstring)."""

    def __init__(self, config: ScaleAgentConfig, *, sysfs: CpuSysfs | None = None) -> None:
        self.config = config
        if sysfs is not None:
            self.sysfs = sysfs
        elif config.lab_cpus is not None:
            self.sysfs = make_lab_tree(config.sysfs_root, config.lab_cpus)
        else:
            self.sysfs = open_cpu_sysfs(config.sysfs_root)
        self._stop = threading.Event()
        self._wake: tuple[socket.socket, socket.socket] | None = None  # while `run` runs
        self._sock: AbstractSocket | None = None
        self._synced = threading.Event()
        #: Set once a host's (or the metadata's) offline set was applied.
        self._synced_by_host = False
        #: Requests served, by result (for the log at stop).
        self.served: dict[str, int] = {"success": 0, "fail": 0, "nack": 0}

    @property
    def synced(self) -> bool:
        """True once the boot sync is over (answered, given up, or not asked for)."""
        return self._synced.is_set()

    def stop(self) -> None:
        """End `run` (safe from another thread or a signal handler)."""
        self._stop.set()
        wake = self._wake
        if wake is not None:
            with contextlib.suppress(OSError):
                wake[1].send(b"\0")

    def run(self, *, on_ready: Callable[[], None] | None = None) -> None:
        """Bind the address, do the boot sync, then serve until `stop`.

        Raises `AddressInUse` when another scale agent has the address.
        `on_ready` is called once the boot sync is over.
        """
        config = self.config
        self._sock = AbstractSocket(config.address)
        wake = self._wake = socket.socketpair()
        selector = selectors.DefaultSelector()
        selector.register(self._sock.fileno(), selectors.EVENT_READ)
        selector.register(wake[0].fileno(), selectors.EVENT_READ)
        log.info(
            "scale agent ready at abstract %r: CPUs under %s (%s), helper %s",
            config.address,
            self.sysfs.root,
            type(self.sysfs).__name__,
            config.helper,
        )
        try:
            self._boot_sync(selector)
            self._ready(on_ready)
            while not self._stop.is_set():
                self._serve_ready(selector, None)
        finally:
            selector.close()
            self._sock.close()
            self._wake = None
            for end in wake:
                end.close()
            if config.ready_file is not None:
                with contextlib.suppress(OSError):
                    config.ready_file.unlink()
            log.info("scale agent stopped; replies: %s", json.dumps(self.served))

    def _ready(self, on_ready: Callable[[], None] | None) -> None:
        self._synced.set()
        if self.config.ready_file is not None:
            write_ready_file(self.config.ready_file)
        if on_ready is not None:
            on_ready()

    def _serve_ready(self, selector: selectors.BaseSelector, timeout: float | None) -> None:
        """Wait up to `timeout` for datagrams and handle every one waiting."""
        assert self._sock is not None
        for key, _ in selector.select(timeout):
            if key.fd != self._sock.fileno():  # the wake-up socket: `stop`
                with contextlib.suppress(OSError):
                    os.read(key.fd, 4096)
                continue
            while not self._stop.is_set():
                try:
                    datagram = self._sock.receive_nowait()
                except OSError:
                    log_bug(log, "receiving scale requests")
                    self._stop.wait(0.1)
                    break
                if datagram is None:
                    break
                try:
                    self.handle(datagram, time.monotonic())
                except Exception:
                    log_bug(log, "the scale agent's request handler")

    # -- boot sync ---------------------------------------------------------------------

    def _boot_sync(self, selector: selectors.BaseSelector) -> None:
        config = self.config
        if config.sync_timeout <= 0:
            log.info("boot sync: not asked for; CPUs online: %s", self._online_text())
            return
        deadline_at = time.monotonic() + config.sync_timeout
        if config.metadata_url is not None:
            self._metadata_sync(config.metadata_url, deadline_at)
            return
        delay = SYNC_RETRY_INITIAL
        while not self._stop.is_set() and not self._synced_by_host:
            self._send(config.address, SyncRequest())
            # Jitter: guests booted together do not ask together. (Not common.backoff,
            # whose clock imports asyncio: this runs at every VM boot.)
            wake_at = min(deadline_at, time.monotonic() + delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, SYNC_RETRY_MAX)
            while not self._stop.is_set() and not self._synced_by_host:
                left = wake_at - time.monotonic()
                if left <= 0:
                    break
                self._serve_ready(selector, left)
            if time.monotonic() >= deadline_at and not self._synced_by_host:
                log.warning(
                    "boot sync: no host answered within %g s; going on with CPUs %s online",
                    config.sync_timeout,
                    self._online_text(),
                )
                return

    def _metadata_sync(self, url: str, deadline_at: float) -> None:
        delay = SYNC_RETRY_INITIAL
        while not self._stop.is_set():
            try:
                offline = fetch_offline_cpuset(url, METADATA_TIMEOUT)
            except MetadataError as exc:
                if time.monotonic() + delay >= deadline_at:
                    log.warning(
                        "boot sync: %s; going on with CPUs %s online", exc, self._online_text()
                    )
                    return
                log.info("boot sync: %s; asking again", exc)
                self._stop.wait(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, SYNC_RETRY_MAX)
                continue
            self.apply_offline_set(offline, f"the metadata at {url}")
            return

    def apply_offline_set(self, offline: Sequence[int], source: str) -> None:
        """Make exactly `offline` (less CPU 0) offline and every other present CPU online."""
        self._synced_by_host = True
        try:
            present = self.sysfs.present()
        except CpuSysfsError as exc:
            log.error("boot sync from %s: %s", source, exc)
            return
        wanted = set(offline)
        if 0 in wanted:
            log.warning("boot sync from %s: CPU 0 is never taken offline; left online", source)
            wanted.discard(0)
        missing = sorted(wanted - set(present))
        if missing:
            log.warning(
                "boot sync from %s: this guest has no CPU(s) %s", source, format_cpu_list(missing)
            )
        for cpu in present:
            online = cpu not in wanted
            if not online and not self.sysfs.can_offline(cpu):
                log.warning("boot sync from %s: CPU %d cannot be taken offline", source, cpu)
                continue
            try:
                self.sysfs.set_online(cpu, online)
            except CpuSysfsError as exc:
                log.error("boot sync from %s: %s", source, exc)
        log.info(
            "boot sync from %s: offline %s asked; CPUs online now: %s",
            source,
            format_cpu_list(sorted(set(offline))) or "none",
            self._online_text(),
        )

    def _online_text(self) -> str:
        try:
            return format_cpu_list(self.sysfs.online()) or "none"
        except CpuSysfsError as exc:
            return f"unknown ({exc})"

    # -- requests ----------------------------------------------------------------------

    def handle(self, datagram: Datagram, received_at: float) -> None:
        """One datagram delivered to the agent, received at `received_at` (monotonic)."""
        if datagram.sender != self.config.messaging_address:
            log.warning(
                "dropped a datagram from %s: the scale agent takes requests only from the "
                "guest agent at %r",
                repr(datagram.sender) if datagram.sender else "a socket without an abstract name",
                self.config.messaging_address,
            )
            return
        try:
            if datagram.truncated:
                raise ProtocolError("the message is too big.")
            envelope = decode_envelope(datagram.data)
        except ProtocolError as exc:
            log.warning("dropped a message the guest agent delivered: %s", exc)
            return
        source = envelope.source_addr
        if source is None:
            log.warning("dropped a scale message without source_addr: nobody to answer")
            return
        try:
            msg = decode_request(envelope.data)
        except ProtocolError as exc:
            self._nack(source, str(exc))
            return
        match msg:
            case ScaleRequest():
                reply = self.serve(msg, received_at)
                self.served[reply.result.value] += 1
                self._send(source, reply)
            case SyncReply():
                self.apply_offline_set(msg.offline_cpus, f"the host ({source})")
            case SyncRequest():
                self._nack(source, f"a guest's {self.config.address} answers no sync requests.")

    def _nack(self, source: str, why: str) -> None:
        log.warning("nack to %r: %s", source, why)
        self.served["nack"] += 1
        self._send(source, ScaleNack(log_msg=why))

    def serve(self, request: ScaleRequest, received_at: float) -> ScaleReply:
        """Carry out one request; the reply says what was done (see the module docstring)."""
        deadline_at = received_at + request.timeout_ms / 1000
        try:
            if request.direction is Direction.DOWN:
                reply = self._down(request, deadline_at)
            else:
                reply = self._up(request, deadline_at)
        except CpuSysfsError as exc:
            reply = _fail(request, str(exc))
        if reply.result is Result.SUCCESS:
            log.info(
                "scale %s: CPU %s %s; CPUs online now: %s",
                request.direction.value,
                reply.cpu,
                "offline" if request.direction is Direction.DOWN else "online",
                format_cpu_list(reply.online_cpus),
            )
        else:
            log.warning("scale %s failed: %s", request.direction.value, reply.err_msg)
        return reply

    def _down(self, request: ScaleRequest, deadline_at: float) -> ScaleReply:
        online = self.sysfs.online()
        if not set(online) - {0}:
            # Not worth asking the helper: nothing may go.
            outcome = HelperOutcome(end=HelperEnd.MISSING)
        else:
            outcome = self._helper(list(HELPER_DEL_ARGS), deadline_at)
            online = self.sysfs.online()  # the helper may have taken a while
        if outcome.end is HelperEnd.TIMED_OUT:
            return _fail(request, timed_out_message("--cpu_del", request.timeout_ms))
        fixed = [cpu for cpu in online if cpu != 0 and not self.sysfs.can_offline(cpu)]
        choice = choose_offline(outcome, online, fixed)
        if not isinstance(choice, Chosen):
            return _fail(request, f"cannot scale down: {choice.reason}.")
        log.info("scale down: CPU %d, because %s", choice.cpu, choice.reason)
        self.sysfs.set_online(choice.cpu, False)
        return _success(request, choice.cpu, self.sysfs.online())

    def _up(self, request: ScaleRequest, deadline_at: float) -> ScaleReply:
        cpu = request.online_cpu
        assert cpu is not None  # decode_request requires it for "up"
        present = self.sysfs.present()
        if cpu not in present:
            return _fail(
                request,
                f"cannot scale up: this guest has no CPU {cpu} "
                f"(present: {format_cpu_list(present) or 'none'}).",
            )
        if cpu in self.sysfs.online():
            return _success(request, cpu, self.sysfs.online())
        self.sysfs.set_online(cpu, True)
        online = self.sysfs.online()
        outcome = self._helper(helper_add_args(cpu, online), deadline_at)
        if outcome.end is HelperEnd.TIMED_OUT:
            try:
                self.sysfs.set_online(cpu, False)
                undone = f"; CPU {cpu} was taken offline again"
            except CpuSysfsError as exc:
                undone = f"; CPU {cpu} stays online ({exc})"
            return _fail(request, timed_out_message("--cpu_add", request.timeout_ms) + undone)
        if outcome.end is not HelperEnd.MISSING and not (
            outcome.end is HelperEnd.EXITED and outcome.status == 0
        ):
            log.warning(
                "scale up: the helper %s after CPU %d came online; the CPU stays online",
                describe(outcome),
                cpu,
            )
        return _success(request, cpu, self.sysfs.online())

    def _helper(self, args: list[str], deadline_at: float) -> HelperOutcome:
        outcome = run_helper(self.config.helper, args, deadline_at, stop=self._stop)
        if outcome.end is not HelperEnd.MISSING:
            log.info(
                "helper %s %s %s%s",
                self.config.helper,
                " ".join(args),
                describe(outcome),
                f"; it printed: {outcome.output.strip()[:200]!r}" if outcome.output.strip() else "",
            )
        return outcome

    # -- sending -------------------------------------------------------------------------

    def _send(self, dest: str, msg: ScaleMessage) -> None:
        """Send `msg` through the guest agent to `dest`; waits a little for room, else drops."""
        assert self._sock is not None
        data: JsonObject = encode_message(msg)
        frame = encode_envelope(Envelope(dest_addr=dest, data=data))
        give_up_at = time.monotonic() + SEND_TIMEOUT
        while True:
            try:
                result = self._sock.send_to(self.config.messaging_address, frame)
            except OSError as exc:
                log.warning("cannot send to the guest agent: %s", exc.strerror or exc)
                return
            if not result.later:
                break
            if time.monotonic() > give_up_at or self._stop.wait(0.01):
                break
        if result is not SendResult.SENT:
            log.warning(
                "a %s for %r was not sent: the guest agent at %r: %s",
                type(msg).__name__,
                dest,
                self.config.messaging_address,
                result.value,
            )


def _fail(request: ScaleRequest, why: str) -> ScaleReply:
    return ScaleReply(direction=request.direction, result=Result.FAIL, err_msg=why, id=request.id)


def _success(request: ScaleRequest, cpu: int, online: Sequence[int]) -> ScaleReply:
    return ScaleReply(
        direction=request.direction,
        result=Result.SUCCESS,
        cpu=cpu,
        online_cpus=tuple(online),
        id=request.id,
    )


# -- inside the guest agent (`python -m servergroup.guestcomm`) ----------------------------


class ScaleExtension:
    """The scale agent's options for the guest agent's argparse entry point, and its companion."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("scale agent (at abstract cgcs.scale; on by default)")
        group.add_argument(
            "--no-scale-agent",
            dest="scale_agent",
            action="store_false",
            help="do not run the scale agent beside the guest agent",
        )
        group.add_argument(
            "--sysfs-root",
            type=Path,
            default=Path("/"),
            metavar="DIR",
            help="the CPUs are under DIR/sys/devices/system/cpu (default /: this kernel's)",
        )
        group.add_argument(
            "--lab-cpus",
            type=int,
            metavar="N",
            help="a lab server: make a CPU tree of N CPUs under --sysfs-root at start",
        )
        group.add_argument(
            "--scale-helper",
            type=Path,
            default=DEFAULT_HELPER,
            metavar="PATH",
            help=f"the application's scale helper (default {DEFAULT_HELPER})",
        )
        group.add_argument(
            "--metadata-url",
            metavar="URL",
            help="boot sync from the offline_cpuset of this metadata URL, not over the channel",
        )
        group.add_argument(
            "--scale-sync-timeout",
            type=float,
            default=DEFAULT_SYNC_TIMEOUT,
            metavar="S",
            help=f"how long the boot sync waits for the host (default {DEFAULT_SYNC_TIMEOUT:g}; "
            "0: no boot sync)",
        )
        group.add_argument(
            "--scale-ready-file",
            type=Path,
            metavar="PATH",
            help="write PATH once the boot sync is over (what starts applications waits for it)",
        )

    def companions(self, args: argparse.Namespace) -> list[ScaleAgent]:
        if not args.scale_agent:
            return []
        config = ScaleAgentConfig(
            sysfs_root=args.sysfs_root,
            helper=args.scale_helper,
            sync_timeout=args.scale_sync_timeout,
            metadata_url=args.metadata_url,
            ready_file=args.scale_ready_file,
            messaging_address=args.address,
            lab_cpus=args.lab_cpus,
        )
        return [ScaleAgent(config)]


# -- the original's metadata ------------------------------------------------------------


class MetadataError(RemoteError):
    """The metadata could not be read (one sentence)."""


def fetch_offline_cpuset(url: str, timeout: float) -> tuple[int, ...]:
    """The CPUs the metadata at `url` says are offline (its `offline_cpuset`).

    The body is either the value itself ("set([1, 2])") or a JSON object
    holding `offline_cpuset`, at its top or under `meta` (an OpenStack
    `meta_data.json`). No such key: no CPU is offline.
    """
    import urllib.error
    import urllib.request  # only here: most guests never read metadata

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read(65536).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MetadataError(f"cannot read the metadata at {url}: {reason}") from None
    return offline_cpuset_of(body)


def offline_cpuset_of(body: str) -> tuple[int, ...]:
    """The `offline_cpuset` in a metadata body (see `fetch_offline_cpuset`)."""
    value: object = body
    with contextlib.suppress(ValueError):
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            meta = parsed.get("meta")
            if "offline_cpuset" in parsed:
                value = parsed["offline_cpuset"]
            elif isinstance(meta, dict) and "offline_cpuset" in meta:
                value = meta["offline_cpuset"]
            else:
                return ()
        elif isinstance(parsed, list):
            value = json.dumps(parsed)
    if not isinstance(value, str):
        raise MetadataError(f"the metadata's offline_cpuset is {value!r}, not a set of CPUs")
    try:
        return parse_cpuset_repr(value)
    except CpuListError as exc:
        raise MetadataError(f"the metadata's offline_cpuset: {exc}") from None


def write_ready_file(path: Path) -> None:
    """Write `path` (this PID) whole; a failure is logged, the agent serves on."""
    part = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        part.write_text(f"{os.getpid()}\n")
        part.replace(path)
    except OSError as exc:
        log.warning("cannot write the ready file %s: %s", path, exc.strerror)
        with contextlib.suppress(OSError):
            part.unlink()


__all__ = [
    "DEFAULT_SYNC_TIMEOUT",
    "MetadataError",
    "ScaleAgent",
    "ScaleAgentConfig",
    "ScaleExtension",
    "fetch_offline_cpuset",
    "offline_cpuset_of",
]
