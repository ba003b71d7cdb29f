"""The exec port codec, byte for byte: frames, payloads, the decoder's resynchronisation."""

from __future__ import annotations

import binascii

import pytest

from servergroup.common.errors import UsageError
from servergroup.servers.drivers.qemu.execproto import (
    HEADER_SIZE,
    MAGIC,
    MAX_ERROR,
    MAX_FRAME,
    MAX_PAYLOAD,
    SYNC_PADDING,
    ExecDecoder,
    ExecProtocolError,
    ExitKind,
    ExitStatus,
    Frame,
    FrameType,
    OpenRequest,
    data_frames,
    decode_error,
    decode_exit,
    decode_frame,
    decode_open,
    decode_signal,
    encode_error,
    encode_exit,
    encode_frame,
    encode_open,
    encode_signal,
    encode_sync,
)

# STDOUT, session 7, payload b"hi": magic, version 1, type 5, session 7, length 2,
# CRC-32 of the payload, CRC-32 of the 18 header bytes before it, payload.
STDOUT_HI = bytes.fromhex("5347455801 05 00000007 00000002 d8932aac 436ffc49 6869".replace(" ", ""))
RESET_0 = bytes.fromhex("534745580109000000000000000000000000 6bcacf2f".replace(" ", ""))


def test_frame_layout_is_byte_exact() -> None:
    assert encode_frame(Frame(type=FrameType.STDOUT, session=7, payload=b"hi")) == STDOUT_HI
    assert encode_frame(Frame(type=FrameType.RESET, session=0)) == RESET_0
    assert HEADER_SIZE == 22


def test_crcs_cover_payload_and_header() -> None:
    assert STDOUT_HI[14:18] == binascii.crc32(b"hi").to_bytes(4, "big")
    assert STDOUT_HI[18:22] == binascii.crc32(STDOUT_HI[:18]).to_bytes(4, "big")


def _with_head_crc(head: bytes) -> bytes:
    return head[:18] + binascii.crc32(head[:18]).to_bytes(4, "big") + head[22:]


def test_decode_frame_round_trip_and_errors() -> None:
    assert decode_frame(STDOUT_HI) == Frame(type=FrameType.STDOUT, session=7, payload=b"hi")
    with pytest.raises(ExecProtocolError, match="too short"):
        decode_frame(STDOUT_HI[:10])
    with pytest.raises(ExecProtocolError, match="declares 2 payload bytes but 1"):
        decode_frame(STDOUT_HI[:-1])
    with pytest.raises(ExecProtocolError, match="payload does not match its CRC"):
        decode_frame(STDOUT_HI[:-1] + b"j")
    with pytest.raises(ExecProtocolError, match="header's CRC"):
        decode_frame(STDOUT_HI[:9] + b"\x08" + STDOUT_HI[10:])
    with pytest.raises(ExecProtocolError, match="version 2"):
        decode_frame(_with_head_crc(STDOUT_HI[:4] + b"\x02" + STDOUT_HI[5:]))
    with pytest.raises(ExecProtocolError, match="type 99 is unknown"):
        decode_frame(_with_head_crc(STDOUT_HI[:5] + b"\x63" + STDOUT_HI[6:]))
    with pytest.raises(ExecProtocolError, match="magic"):
        decode_frame(b"X" + STDOUT_HI[1:])
    too_long = _with_head_crc(
        STDOUT_HI[:10] + (MAX_PAYLOAD + 1).to_bytes(4, "big") + STDOUT_HI[14:]
    )
    with pytest.raises(ExecProtocolError, match="over the 65536 allowed"):
        decode_frame(too_long)


def test_encode_refuses_what_the_wire_cannot_carry() -> None:
    with pytest.raises(UsageError):
        encode_frame(Frame(type=FrameType.STDIN, session=1, payload=bytes(MAX_PAYLOAD + 1)))
    with pytest.raises(UsageError):
        encode_frame(Frame(type=FrameType.STDIN, session=2**32, payload=b""))
    with pytest.raises(UsageError):
        encode_open(OpenRequest(argv=()))
    with pytest.raises(UsageError):
        encode_signal(0)


def test_decoder_skips_garbage_and_counts_it() -> None:
    decoder = ExecDecoder()
    assert decoder.feed(b"junk" + STDOUT_HI[:7]) == []
    assert decoder.skipped == 4
    assert decoder.feed(STDOUT_HI[7:] + b"SGE") == [decode_frame(STDOUT_HI)]
    assert decoder.buffered == 3  # may be the start of a magic
    assert decoder.feed(b"!" + RESET_0) == [Frame(type=FrameType.RESET, session=0)]
    assert decoder.skipped == 8
    assert decoder.garbage == 8
    assert decoder.buffered == 0


def test_a_fake_header_does_not_make_the_decoder_wait() -> None:
    # Magic and a plausible header claiming 60000 bytes, but no valid head CRC.
    fake = MAGIC + bytes([1, 5]) + bytes(4) + (60000).to_bytes(4, "big") + bytes(8)
    decoder = ExecDecoder()
    assert decoder.feed(fake + STDOUT_HI) == [decode_frame(STDOUT_HI)]
    assert decoder.skipped == len(fake)


def test_decoder_skips_a_frame_with_a_bad_crc_and_finds_the_next() -> None:
    bad = STDOUT_HI[:-1] + b"X"
    decoder = ExecDecoder()
    assert decoder.feed(bad + RESET_0) == [Frame(type=FrameType.RESET, session=0)]
    assert decoder.skipped == len(bad)


def test_sync_completes_a_half_frame_left_by_an_earlier_connection() -> None:
    big = encode_frame(Frame(type=FrameType.STDIN, session=3, payload=b"x" * MAX_PAYLOAD))
    decoder = ExecDecoder()
    assert decoder.feed(big[:1000]) == []
    after = encode_frame(Frame(type=FrameType.SIGNAL, session=9, payload=encode_signal(1)))
    frames = decoder.feed(encode_sync(5) + after)
    assert frames == [
        Frame(type=FrameType.RESET, session=5),
        Frame(type=FrameType.SIGNAL, session=9, payload=b"\0\0\0\1"),
    ]
    assert decoder.buffered == 0
    assert decoder.garbage < 1000  # the padding's zeros are not garbage
    assert len(encode_sync(5)) == SYNC_PADDING + HEADER_SIZE == MAX_FRAME + HEADER_SIZE


def test_data_frames_split_at_the_payload_limit() -> None:
    data = bytes(range(256)) * 1024 + b"tail"  # 256 KiB + 4
    frames = [decode_frame(f) for f in data_frames(FrameType.STDOUT, 4, data)]
    assert [len(f.payload) for f in frames] == [MAX_PAYLOAD] * 4 + [4]
    assert b"".join(f.payload for f in frames) == data
    assert list(data_frames(FrameType.STDOUT, 4, b"")) == []


def test_open_payload() -> None:
    raw = encode_open(OpenRequest(argv=("ls", "-l"), env={"A": "b"}, cwd="/tmp"))
    assert raw == b'{"argv":["ls","-l"],"env":{"A":"b"},"cwd":"/tmp"}'
    assert decode_open(b'{"argv":["true"]}') == OpenRequest(argv=("true",))
    odd = OpenRequest(argv=("printf", "\udcff\u00e9"))  # an undecodable byte, then é
    assert decode_open(encode_open(odd)) == odd
    for bad, why in [
        (b"{", "not JSON"),
        (b"\xff", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"argv":[]}', "argv"),
        (b'{"argv":"ls"}', "argv"),
        (b'{"argv":[""]}', "empty command"),
        (b'{"argv":["a\\u0000"]}', "NUL"),
        (b'{"argv":["ls"],"env":{"A=B":"c"}}', "env"),
        (b'{"argv":["ls"],"env":{"A":1}}', "env"),
        (b'{"argv":["ls"],"cwd":""}', "cwd"),
    ]:
        with pytest.raises(ExecProtocolError, match=why):
            decode_open(bad)


def test_signal_exit_and_error_payloads() -> None:
    assert encode_signal(15) == b"\0\0\0\x0f"
    assert decode_signal(b"\0\0\0\x0f") == 15
    with pytest.raises(ExecProtocolError):
        decode_signal(b"\0\0\0\0")
    with pytest.raises(ExecProtocolError):
        decode_signal(b"\0")
    killed = ExitStatus(kind=ExitKind.SIGNALLED, value=15)
    assert encode_exit(killed) == b"\x01\0\0\0\x0f"
    assert decode_exit(b"\x01\0\0\0\x0f") == killed
    assert killed.shell_status == 143
    assert ExitStatus.from_returncode(-9).shell_status == 137
    assert ExitStatus.from_returncode(3) == ExitStatus(kind=ExitKind.EXITED, value=3)
    with pytest.raises(ExecProtocolError, match="unknown kind"):
        decode_exit(b"\x02\0\0\0\0")
    with pytest.raises(ExecProtocolError):
        decode_exit(b"")
    assert decode_error(encode_error("no such command: foo.")) == "no such command: foo."
    long = encode_error("é" * MAX_ERROR)
    assert len(long) <= MAX_ERROR
    assert long.endswith(b"...")
    assert decode_error(long).startswith("é")
    with pytest.raises(ExecProtocolError):
        decode_error(b"\xff")
    with pytest.raises(ExecProtocolError):
        decode_error(bytes(MAX_ERROR + 1))
