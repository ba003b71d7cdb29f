"""`stats.missed` of the client core against a simulated group: whatever the order of
acks, nacks and deliveries, it never counts this client's own broadcasts, never
counts more than were lost, never goes down, and once a later broadcast arrives
it has counted exactly the other members' broadcasts that were not delivered."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from servergroup.groups.client import ClientCore
from servergroup.groups.protocol import Broadcast, BroadcastAck, GroupMessage, Nack
from servergroup.groups.protocol import encode_group_message as encode
from servergroup.guestcomm.protocol import (
    MESSAGING_ADDR,
    SERVER_GROUP_ADDR,
    Envelope,
    encode_envelope,
)
from servergroup.guestcomm.sockets import Datagram

#: What became of each seq of the group: delivered to us, lost on its way, or ours.
DELIVERED, LOST, OWN = "delivered", "lost", "own"


def datagram(msg: GroupMessage) -> Datagram:
    raw = encode_envelope(Envelope(data=encode(msg), source_addr=SERVER_GROUP_ADDR))
    return Datagram(data=raw, sender=MESSAGING_ADDR, truncated=False)


@dataclass
class Run:
    core: ClientCore
    kinds: list[str]
    missed_seen: int = 0
    last_delivered: int = 0

    def step(self, msg: GroupMessage) -> None:
        self.core.receive(datagram(msg))
        if isinstance(msg, Broadcast) and msg.seq is not None:
            self.last_delivered = msg.seq
        missed = self.core.stats.missed
        assert missed >= self.missed_seen, "missed went down"
        lost = sum(1 for k in self.kinds[: self.last_delivered] if k == LOST)
        assert missed <= lost, "counted more than was lost"
        self.missed_seen = missed

    def send(self) -> int:
        ident, _ = self.core.broadcast("x")
        self.core.broadcast_sent(ident, "x", 0.0)
        return ident


@given(
    kinds=st.lists(st.sampled_from([DELIVERED, LOST, OWN]), max_size=60),
    delays=st.lists(st.integers(0, 6), min_size=60, max_size=60),
    coalesce=st.lists(st.booleans(), min_size=60, max_size=60),
    refused=st.lists(st.booleans(), min_size=60, max_size=60),
    max_acks=st.sampled_from([1, 2, 64]),
)
def test_missed_counts_the_others_lost_broadcasts_only(
    kinds: list[str],
    delays: list[int],
    coalesce: list[bool],
    refused: list[bool],
    max_acks: int,
) -> None:
    # Counting starts at the first broadcast received (documented): begin with one;
    # a hole is counted once it is known: end with one (a later broadcast arrives).
    kinds = [DELIVERED, *kinds, DELIVERED]
    core = ClientCore()
    core._gaps.max_acks = max_acks  # the bound on what it keeps: only delays the count
    run = Run(core, kinds)
    acks: list[tuple[int, int, int]] = []  # (due step, id, seq) awaiting delivery
    nacks: list[int] = []  # refused ids, always told before the next ack
    delivered_at = 0

    def flush_acks(now: int, everything: bool = False) -> None:
        while acks and (everything or acks[0][0] <= now):
            # The host may answer several at once with one cumulative ack.
            _, ident, seq = acks.pop(0)
            while acks and coalesce[ident % 60] and (everything or acks[0][0] <= now):
                _, ident, seq = acks.pop(0)
            while nacks:
                run.step(Nack(orig_msg_type="broadcast", log_msg="busy", id=nacks.pop(0)))
            run.step(BroadcastAck(id=ident, seq=seq))

    for seq, kind in enumerate(kinds, start=1):
        if refused[seq % 60]:
            nacks.append(run.send())  # refused: it never gets a seq
        if kind == OWN:
            ident = run.send()
            due = max([delivered_at + delays[seq % 60], *(a[0] for a in acks)])
            acks.append((due, ident, seq))
        elif kind == DELIVERED:
            delivered_at += 1
            run.step(Broadcast(text="y", source_instance="instance-0000000b", seq=seq))
        flush_acks(delivered_at)
    flush_acks(delivered_at, everything=True)
    while nacks:
        run.step(Nack(orig_msg_type="broadcast", log_msg="busy", id=nacks.pop(0)))

    lost = sum(1 for k in kinds if k == LOST)
    stats = run.core.stats
    assert stats.pending == 0
    assert stats.missed == lost
