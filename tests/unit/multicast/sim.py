"""An in-memory network for the sender and receiver machines, with scripted time and loss.

`Sim(image, clients=3, ...)` wires one `SenderMachine` to N
`ReceiverMachine`s. Control messages and repairs go through the real codecs
(encoded, then fed to a `StreamDecoder` in odd-sized pieces); multicast
datagrams go through `loss(client, buffer_id, index, pass_number)`, which
says whether that client loses that packet. Time moves only when nothing is
left to deliver: to the next timer of any machine. Hooks let a test play a
client that dies, stalls, or never gets multicast.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from blake3 import blake3

from servergroup.multicast import receiving as rx
from servergroup.multicast import sending as tx
from servergroup.multicast.protocol import (
    Auth,
    DataPacket,
    ProtocolError,
    StreamDecoder,
    data_header,
    encode_message,
)
from servergroup.multicast.rate import RateSettings

SESSION = 0x5EED
Loss = Callable[[int, int, int, int], bool]


def no_loss(client: int, buffer_id: int, index: int, pass_number: int) -> bool:
    return False


@dataclass
class Client:
    id: int
    machine: rx.ReceiverMachine
    decoder: StreamDecoder
    output: bytearray = field(default_factory=bytearray)
    hasher: object = None
    joined: bool = False
    open: bool = True
    frozen: bool = False
    report: rx.ReceiverReport | None = None
    inbox: deque[bytes] = field(default_factory=deque)


class Sim:
    def __init__(
        self,
        image: bytes,
        clients: int = 3,
        *,
        expected: int | None = None,
        payload_size: int = 100,
        buffer_packets: int = 16,
        loss: Loss = no_loss,
        timeout: float = 5.0,
        join_timeout: float = 30.0,
        auth: Auth | None = None,
        split: int = 7,
        rate: RateSettings | None = None,
        repair_passes: int = 2,
        overlap: bool = True,
    ) -> None:
        self.image = image
        self.now = 100.0
        self.loss = loss
        self.auth = auth
        self.split = split
        self.payload_size = payload_size
        self.buffer_packets = buffer_packets
        self.settings = tx.SenderSettings(
            session=SESSION,
            expected_clients=clients if expected is None else expected,
            group=IPv4Address("239.1.2.3"),
            port=9999,
            payload_size=payload_size,
            buffer_packets=buffer_packets,
            timeout=timeout,
            join_timeout=join_timeout,
            rate=rate or RateSettings(initial=1e8),
            repair_passes=repair_passes,
            overlap=overlap,
        )
        self.sender = tx.SenderMachine(self.settings)
        self.clients = {
            i: Client(
                id=i,
                machine=rx.ReceiverMachine(
                    rx.ReceiverSettings(name=f"c{i}", timeout=timeout, auth=auth)
                ),
                decoder=StreamDecoder(auth),
            )
            for i in range(clients)
        }
        self.buffers: dict[int, bytes] = {}
        self.offset = 0
        self.hasher = blake3()
        self.events: list[object] = []
        self.multicasts: list[tx.Multicast] = []
        #: For each multicast pass: the buffers completed (every client Done) before it began.
        self.completed_before: list[list[int]] = []
        self.repairs: list[tx.SendRepairs] = []
        self.report: tx.SenderReport | None = None
        self.to_sender: deque[tuple[int, bytes]] = deque()
        self.sender_decoders = {i: StreamDecoder(auth) for i in self.clients}
        self.pending_writes: deque[tuple[int, int, int]] = deque()
        self.closed_by_sender: set[int] = set()
        #: Client ids whose outputs a test intercepts (e.g. one that never answers).
        self.mute: set[int] = set()
        #: Called for every data packet a client would get on multicast; may change it.
        self.on_datagram: Callable[[int, bytes], bytes | None] | None = None

    # --- running ----------------------------------------------------------------------

    def start(self, connect: list[int] | None = None) -> None:
        self._sender(self.sender.start(self.now))
        for i in self.clients if connect is None else connect:
            self.connect(i)

    def connect(self, i: int) -> None:
        self._sender(self.sender.client_connected(i, f"10.0.0.{i}", self.now))
        self._client(i, self.clients[i].machine.connected(self.now))

    def run(self, limit: float = 600.0) -> tx.SenderReport:
        end = self.now + limit
        while self.report is None and self.now < end:
            if self.drain():
                continue
            timers = [self.sender.next_timer()] + [
                c.machine.next_timer() for c in self.clients.values() if c.open and not c.frozen
            ]
            due = [t for t in timers if t is not None]
            if not due:
                break
            self.now = max(self.now, min(due))
            self._sender(self.sender.handle_timer(self.now))
            for c in self.clients.values():
                if c.open and not c.frozen:
                    self._client(c.id, c.machine.handle_timer(self.now))
        # Let the receivers see what the sender's last actions told them.
        while self.drain():
            pass
        assert self.report is not None, f"no report after {limit} s; sender {self.sender.phase}"
        return self.report

    def drain(self) -> bool:
        """Deliver one queued thing; False when nothing was queued."""
        if self.pending_writes:
            i, buffer_id, length = self.pending_writes.popleft()
            c = self.clients[i]
            if c.open:
                self._client(i, c.machine.delivered(buffer_id, length, self.now))
            return True
        if self.to_sender:
            i, data = self.to_sender.popleft()
            if not data:
                self._sender(self.sender.client_closed(i, "EOF", self.now))
                return True
            try:
                for _, message in self.sender_decoders[i].feed(data):
                    assert not isinstance(message, DataPacket)
                    self._sender(self.sender.message_received(i, message, self.now))
            except ProtocolError as exc:
                self._sender(self.sender.client_misbehaved(i, str(exc), self.now))
            return True
        for c in self.clients.values():
            if c.inbox and not c.frozen:
                data = c.inbox.popleft()
                if not c.open:
                    return True
                if not data:
                    self._client(c.id, c.machine.connection_closed("EOF", self.now))
                    return True
                try:
                    for session, packet in c.decoder.feed(data):
                        if isinstance(packet, DataPacket):
                            self._client(c.id, c.machine.repair_received(packet, self.now))
                        else:
                            self._client(
                                c.id, c.machine.message_received(session, packet, self.now)
                            )
                except ProtocolError as exc:
                    self._client(c.id, c.machine.protocol_error(exc, self.now))
                return True
        return False

    # --- the sender's driver ----------------------------------------------------------

    def _sender(self, outputs: list[tx.Output]) -> None:
        for action in outputs:
            match action:
                case tx.SendTo(client=i, message=message):
                    self._to_client(i, encode_message(message, SESSION, self.auth))
                case tx.SendRepairs(client=i, buffer_id=b, indices=indices):
                    self.repairs.append(action)
                    for index in indices:
                        self._to_client(i, self._packet(b, index))
                    self._sender(self.sender.repairs_written(i, b, self.now))
                case tx.Multicast():
                    self.multicasts.append(action)
                    self.completed_before.append(
                        [e.buffer_id for e in self.events if isinstance(e, tx.BufferCompleted)]
                    )
                    self._multicast(action)
                case tx.Disconnect(client=i):
                    if i in self.clients and i not in self.closed_by_sender:
                        # What was queued before the close still arrives, then EOF.
                        self.closed_by_sender.add(i)
                        self.clients[i].inbox.append(b"")
                case tx.LoadBuffer(buffer_id=b):
                    self._load(b)
                case tx.ReleaseBuffer(buffer_id=b):
                    del self.buffers[b]
                case tx.Finished(report=report):
                    self.report = report
                case _:
                    self.events.append(action)

    def _to_client(self, i: int, data: bytes) -> None:
        c = self.clients[i]
        if not c.open or i in self.closed_by_sender:
            return
        for start in range(0, len(data), self.split):
            c.inbox.append(data[start : start + self.split])

    def _packet(self, buffer_id: int, index: int) -> bytes:
        data = self.buffers[buffer_id]
        payload = data[index * self.payload_size : (index + 1) * self.payload_size]
        header, tag = data_header(SESSION, buffer_id, index, payload, self.auth)
        return header + payload + tag

    def _multicast(self, m: tx.Multicast) -> None:
        for index in m.indices:
            packet = self._packet(m.buffer_id, index)
            for c in self.clients.values():
                if not (c.joined and c.open) or c.frozen:
                    continue
                if self.loss(c.id, m.buffer_id, index, m.pass_number):
                    continue
                datagram: bytes | None = packet
                if self.on_datagram is not None:
                    datagram = self.on_datagram(c.id, packet)
                if datagram is not None:
                    self._client(c.id, c.machine.datagram_received(datagram, self.now))
        size = len(m.indices) * self.payload_size
        elapsed = size * 8 / m.rate
        self.now += elapsed
        self._sender(self.sender.multicast_sent(m.buffer_id, m.pass_number, elapsed, self.now))

    def _load(self, buffer_id: int) -> None:
        chunk = self.image[self.offset : self.offset + self.payload_size * self.buffer_packets]
        self.offset += len(chunk)
        self.hasher.update(chunk)
        if chunk:
            self.buffers[buffer_id] = chunk
            count = -(-len(chunk) // self.payload_size)
            info = tx.LoadedBuffer(buffer_id=buffer_id, packet_count=count, byte_length=len(chunk))
        else:
            info = tx.LoadedBuffer(
                buffer_id=buffer_id,
                packet_count=0,
                byte_length=0,
                total_bytes=self.offset,
                digest=self.hasher.digest(),
            )
        self._sender(self.sender.buffer_loaded(info, self.now))

    # --- a receiver's driver ----------------------------------------------------------

    def _client(self, i: int, outputs: Sequence[rx.Output]) -> None:
        c = self.clients[i]
        for action in outputs:
            match action:
                case rx.Send(message=message):
                    if i not in self.mute and c.open:
                        data = encode_message(message, SESSION, self.auth)
                        for start in range(0, len(data), self.split):
                            self.to_sender.append((i, data[start : start + self.split]))
                case rx.JoinGroup():
                    c.joined = True
                case rx.Deliver(buffer_id=b, data=data):
                    c.output += data
                    self.pending_writes.append((i, b, len(data)))
                case rx.Verify(total_bytes=total, digest=digest):
                    ok = len(c.output) == total and blake3(c.output).digest() == digest
                    self._client(i, c.machine.verified(ok, "" if ok else "bad digest", self.now))
                case rx.Close(report=report):
                    c.report = report
                    c.open = False
                    self.to_sender.append((i, b""))
                case _:
                    self.events.append(action)

    def kill(self, i: int) -> None:
        """The client process dies: its connection closes, it hears nothing more."""
        c = self.clients[i]
        c.open = False
        c.inbox.clear()
        self._sender(self.sender.client_closed(i, "reset by peer", self.now))
