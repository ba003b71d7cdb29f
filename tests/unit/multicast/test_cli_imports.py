"""`servergroup image` loads each side's modules only for that side.

Every import is paid at each start of `image send` and `image receive`,
and the sender's start is on the clock of every transfer (issue 16's N = 1
row): the sender does without the receiver's state machine and the
receiver without the sender's (and prometheus_client's).
"""

from __future__ import annotations

import json
import subprocess
import sys

SIDES = (
    "servergroup.multicast.receiving",
    "servergroup.multicast.receiver",
    "servergroup.multicast.sending",
    "servergroup.multicast.sender",
    "prometheus_client",
)


def loaded_after(statement: str) -> list[str]:
    probe = (
        f"import json, sys; {statement}; "
        f"print(json.dumps([m for m in {list(SIDES)!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def test_the_image_command_module_loads_neither_side() -> None:
    assert loaded_after("import servergroup.cli.main, servergroup.cli.image") == []


def test_each_side_loads_its_own_modules_only() -> None:
    sender = loaded_after("from servergroup.multicast import run_sender")
    assert "servergroup.multicast.sender" in sender
    assert "servergroup.multicast.receiving" not in sender
    assert "servergroup.multicast.receiver" not in sender
    receiver = loaded_after("from servergroup.multicast import run_receiver")
    assert "servergroup.multicast.receiver" in receiver
    assert "servergroup.multicast.sending" not in receiver
    assert "prometheus_client" not in receiver
