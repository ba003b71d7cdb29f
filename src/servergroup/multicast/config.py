"""Settings of one transfer, checked once at the edge.

Theory of operation
-------------------
`send_config` and `receive_config` turn what an operator typed (strings and
numbers) into frozen settings, or raise `UsageError` with one sentence that
names the bad value. Everything after them may assume: addresses are IPv4,
the group is multicast, the MTU leaves room for a payload, rates and
timeouts are positive, a key is not empty. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import AddressValueError, IPv4Address

from servergroup.common import units
from servergroup.common.errors import UsageError
from servergroup.multicast.protocol import payload_size_for

#: An organisation-local group (RFC 2365), so it stays inside the site by default.
DEFAULT_GROUP = IPv4Address("239.192.83.71")
DEFAULT_PORT = 18383
DEFAULT_MTU = 1500
MIN_MTU = 576
MAX_MTU = 9000
DEFAULT_TIMEOUT = 10.0
DEFAULT_JOIN_TIMEOUT = 60.0
#: Default buffer: about this many bytes of image per round.
DEFAULT_BUFFER_BYTES = 32 * 1024 * 1024
MAX_BUFFER_BYTES = 1024 * 1024 * 1024
MAX_CLIENTS = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class SendConfig:
    local_ip: IPv4Address
    clients: int
    port: int
    group: IPv4Address
    mtu: int
    payload_size: int
    buffer_packets: int
    rate: float | None
    timeout: float
    join_timeout: float
    key: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiveConfig:
    local_ip: IPv4Address
    server_ip: IPv4Address
    port: int
    timeout: float
    key: bytes | None
    name: str


def parse_ip(value: str, what: str) -> IPv4Address:
    try:
        return IPv4Address(value.strip())
    except (AddressValueError, ValueError):
        raise UsageError(f"{what} {value!r} is not an IPv4 address.") from None


def parse_rate(value: str | float | None) -> float | None:
    """Bits per second from `800m`, `1gbit`, `1.5G`, `250000000` (None or 0: no cap)."""
    if value is None:
        return None
    number = float(value) if isinstance(value, int | float) else float(units.parse_rate(value))
    if number < 0:
        raise UsageError(f"rate {value!r} is negative.")
    if 0 < number < 1e6:
        raise UsageError(f"rate {value!r} is below 1 Mbit/s; multicast is not worth it there.")
    return number or None


def _port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise UsageError(f"port {port} is out of range; give 1 to 65535.")
    return port


def _timeout(timeout: float, what: str) -> float:
    if not timeout > 0:
        raise UsageError(f"{what} {timeout:g} s must be positive.")
    return float(timeout)


def _key(key: bytes | None) -> bytes | None:
    if key is not None and not key:
        raise UsageError("the key file is empty; put a shared secret in it.")
    return key


def send_config(
    *,
    local_ip: str,
    clients: int,
    port: int = DEFAULT_PORT,
    group: str | None = None,
    mtu: int = DEFAULT_MTU,
    rate: str | float | None = None,
    buffer_packets: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    join_timeout: float = DEFAULT_JOIN_TIMEOUT,
    key: bytes | None = None,
) -> SendConfig:
    """Check the sender's settings; UsageError names the first bad one."""
    address = parse_ip(local_ip, "LOCAL_IP")
    if not 1 <= clients <= MAX_CLIENTS:
        raise UsageError(f"CLIENTS {clients} is out of range; give 1 to {MAX_CLIENTS}.")
    group_address = DEFAULT_GROUP if group is None else parse_ip(group, "group")
    if not group_address.is_multicast:
        raise UsageError(f"group {group_address} is not a multicast address (224.0.0.0/4).")
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise UsageError(f"MTU {mtu} is out of range; give {MIN_MTU} to {MAX_MTU}.")
    key = _key(key)
    payload = payload_size_for(mtu, key is not None)
    if buffer_packets is None:
        buffer_packets = max(64, DEFAULT_BUFFER_BYTES // payload)
    if not buffer_packets >= 1 or buffer_packets * payload > MAX_BUFFER_BYTES:
        most = MAX_BUFFER_BYTES // payload
        raise UsageError(
            f"buffer of {buffer_packets} packets is out of range; give 1 to {most} at MTU {mtu}."
        )
    return SendConfig(
        local_ip=address,
        clients=clients,
        port=_port(port),
        group=group_address,
        mtu=mtu,
        payload_size=payload,
        buffer_packets=buffer_packets,
        rate=parse_rate(rate),
        timeout=_timeout(timeout, "timeout"),
        join_timeout=_timeout(join_timeout, "wait"),
        key=key,
    )


def receive_config(
    *,
    local_ip: str,
    server_ip: str,
    port: int = DEFAULT_PORT,
    timeout: float = DEFAULT_TIMEOUT,
    key: bytes | None = None,
    name: str = "",
) -> ReceiveConfig:
    """Check a receiver's settings; UsageError names the first bad one."""
    address = parse_ip(local_ip, "LOCAL_IP")
    return ReceiveConfig(
        local_ip=address,
        server_ip=parse_ip(server_ip, "SERVER_IP"),
        port=_port(port),
        timeout=_timeout(timeout, "timeout"),
        key=_key(key),
        name=name or str(address),
    )
