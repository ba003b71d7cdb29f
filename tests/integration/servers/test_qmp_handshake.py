"""`Monitor` over a QMP socket whose handshake fails once: tried again, not reported.

QEMU's own monitors are exercised by the qemu tests (test_qemu_lifecycle.py
and others); this stands beside them with a socket of the test's own that
plays QEMU's side of the handshake, so the one failure it needs happens every
time: the first connection answers `qmp_capabilities` with an event (as a
monitor may while an incoming migration completes), the next ones properly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from servergroup.servers.drivers.base import DriverError
from servergroup.servers.drivers.qemu import qmp
from servergroup.servers.drivers.qemu.qmp import Monitor

pytestmark = pytest.mark.timeout(30)

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """One JSON object from the client (QMP does not end them with a newline); None at EOF."""
    buffer = b""
    while True:
        try:
            obj, _ = json.JSONDecoder().raw_decode(buffer.decode())
        except ValueError:
            chunk = await reader.read(4096)
            if not chunk:
                return None
            buffer += chunk
            continue
        assert isinstance(obj, dict)
        return obj


async def serve(path: Path, *, bad_handshakes: int) -> tuple[asyncio.Server, list[str]]:
    """A QMP socket at `path`; `seen` lists each connection's outcome."""
    seen: list[str] = []

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(json.dumps(GREETING).encode() + b"\n")
        await writer.drain()
        message = await read_message(reader)
        if message is None or message["execute"] != "qmp_capabilities":
            seen.append("unexpected")
        elif len(seen) < bad_handshakes:
            seen.append("spoiled")
            error = {"error": {"class": "GenericError", "desc": "not now"}}
            writer.write(json.dumps(error).encode() + b"\n")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
                await reader.read()  # QEMU keeps the connection: the client hangs up
        else:
            seen.append("negotiated")
            writer.write(b'{"return": {}}\n')
            await writer.drain()
            while (message := await read_message(reader)) is not None:
                ident = message.get("id")
                writer.write(json.dumps({"return": {"status": "running"}, "id": ident}).encode())
                writer.write(b"\n")
                await writer.drain()
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(client, path=str(path)), seen


async def test_a_spoiled_handshake_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client library may hang after a failed negotiation: each attempt is bounded.
    monkeypatch.setattr(qmp, "ATTEMPT_TIMEOUT", 0.5)
    path = tmp_path / "qmp.sock"
    server, seen = await serve(path, bad_handshakes=2)
    async with server:
        monitor = Monitor(path, label="qemu server t", timeout=5.0)
        assert await monitor.execute("query-status") == {"status": "running"}
    assert seen == ["spoiled", "spoiled", "negotiated"]


async def test_no_socket_is_said_at_once(tmp_path: Path) -> None:
    monitor = Monitor(tmp_path / "none.sock", label="qemu server t", timeout=5.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DriverError, match="cannot talk to the QEMU monitor of qemu server t"):
        await monitor.execute("query-status")
    # Not retried for the whole timeout: there is nothing to talk to.
    assert loop.time() - started < 5.0


async def test_a_handshake_that_keeps_failing_ends_at_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qmp, "ATTEMPT_TIMEOUT", 0.5)
    path = tmp_path / "qmp.sock"
    server, seen = await serve(path, bad_handshakes=1000)
    async with server:
        monitor = Monitor(path, label="qemu server t", timeout=2.0)
        with pytest.raises(DriverError, match="cannot talk to the QEMU monitor"):
            await monitor.execute("query-status")
    assert len(seen) > 1
    assert set(seen) == {"spoiled"}
