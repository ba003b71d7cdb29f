"""The guest agent's flow-control settings, its no-host nack, and the qemu guest's /init."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from servergroup.common.errors import ConfigError
from servergroup.guestcomm.drops import Counters, DropLog
from servergroup.guestcomm.guest import (
    DEFAULT_APP_QUEUE_BYTES,
    DEFAULT_APP_QUEUE_LIMIT,
    DEFAULT_CHANNEL_HIGH_WATER,
    DEFAULT_CHANNEL_LOW_WATER,
    DEFAULT_QUEUE_LIMIT,
    MAX_APP_QUEUE_BYTES,
    MAX_APP_QUEUE_LIMIT,
    GuestConfig,
    no_host_nack,
)
from servergroup.guestcomm.protocol import MAX_DATAGRAM, MAX_LINE, JsonObject
from servergroup.guestcomm.sockets import DGRAM_QLEN_PATH, GUEST_DGRAM_QLEN, NO_HOST_LOG_MSG
from servergroup.servers.drivers.qemu.image import (
    DISK_MODULE_ROOTS,
    MODULE_ROOTS,
    SHARE_MODULE_ROOTS,
    init_script,
)

SOCK = Path("/tmp/channel.sock")


def test_the_defaults_hold_together() -> None:
    config = GuestConfig(channel_listen=SOCK)
    assert config.channel_high_water == DEFAULT_CHANNEL_HIGH_WATER == 256 * 1024
    assert config.channel_low_water == DEFAULT_CHANNEL_LOW_WATER == 64 * 1024
    assert config.queue_limit == DEFAULT_QUEUE_LIMIT >= DEFAULT_CHANNEL_HIGH_WATER + MAX_LINE
    assert config.app_queue_limit == DEFAULT_APP_QUEUE_LIMIT == 16384
    assert config.app_queue_bytes == DEFAULT_APP_QUEUE_BYTES == 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"channel_low_water": 10, "channel_high_water": 10}, "low-water mark"),
        ({"channel_low_water": -1}, "low-water mark"),
        ({"channel_high_water": 1 << 20, "queue_limit": 1 << 20}, "high-water mark plus"),
        ({"app_queue_limit": 0}, "at least 1 datagram"),
        ({"app_queue_limit": MAX_APP_QUEUE_LIMIT + 1}, "--app-queue-limit"),
        ({"app_queue_bytes": MAX_DATAGRAM - 1}, "largest datagram"),
        ({"app_queue_bytes": MAX_APP_QUEUE_BYTES + 1}, "--app-queue-bytes"),
        ({"app_retry_interval": 0.0}, "retry interval"),
        ({"app_retry_interval": 2.0}, "retry interval"),
    ],
)
def test_unsafe_settings_are_refused_in_one_sentence(
    settings: dict[str, float], words: str
) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        GuestConfig(channel_listen=SOCK, **settings)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.endswith(".")
    assert "\n" not in message


def test_the_smallest_safe_marks_are_accepted() -> None:
    config = GuestConfig(
        channel_listen=SOCK,
        channel_low_water=0,
        channel_high_water=1,
        queue_limit=1 + MAX_LINE,
        app_queue_limit=1,
        app_queue_bytes=MAX_DATAGRAM,
    )
    assert config.queue_limit == 1 + MAX_LINE


@pytest.mark.parametrize(
    ("request_data", "orig", "ident"),
    [
        ({"version": 2, "msg_type": "broadcast", "data": "x", "id": 7}, "broadcast", 7),
        ({"version": 2, "msg_type": "broadcast", "data": "x", "id": 0}, "broadcast", 0),
        ({"version": 2, "msg_type": "status_query", "seq": 1}, "status_query", None),
        ({"msg_type": 3, "id": 5}, "unknown", 5),
        ({}, "unknown", None),
        ({"msg_type": "broadcast", "id": -1}, "broadcast", None),
        ({"msg_type": "broadcast", "id": True}, "broadcast", None),
        ({"msg_type": "broadcast", "id": "7"}, "broadcast", None),
        ({"msg_type": "broadcast", "id": 7.0}, "broadcast", None),
        ({"msg_type": None}, "unknown", None),
    ],
)
def test_the_no_host_nack_has_the_originals_format(
    request_data: JsonObject, orig: str, ident: int | None
) -> None:
    expected: JsonObject = {
        "version": 2,
        "msg_type": "nack",
        "orig_msg_type": orig,
        "log_msg": NO_HOST_LOG_MSG,
    }
    if ident is not None:
        expected["id"] = ident
    nack = no_host_nack(request_data)
    assert nack == expected
    assert nack is not None
    assert list(nack) == list(expected)  # the keys in the original's order


def test_a_nack_is_never_answered_with_a_nack() -> None:
    assert no_host_nack({"version": 2, "msg_type": "nack", "orig_msg_type": "x"}) is None


def test_a_drop_may_count_several_messages_at_once() -> None:
    counters = Counters()
    drops = DropLog(logging.getLogger("test"), counters)
    drops.drop("app not bound", "three at once", count=3)
    drops.drop("app not bound", "one more")
    assert counters.dropped == {"app not bound": 4}
    assert counters.dropped_total == 4
    drops.close()


def test_the_qemu_guests_init_raises_the_queue_length_before_the_agent_starts() -> None:
    script = init_script(MODULE_ROOTS, SHARE_MODULE_ROOTS, DISK_MODULE_ROOTS)
    raise_at = script.index(f"echo {GUEST_DGRAM_QLEN} >{DGRAM_QLEN_PATH}")
    assert raise_at < script.index("-m servergroup.guestcomm")
