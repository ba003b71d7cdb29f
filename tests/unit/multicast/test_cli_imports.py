"""`servergroup image` loads each side's modules only for that side.

Every import is paid at each start of `image send` and `image receive`,
and the sender's start is on the clock of every transfer (issue 16's N = 1
row): the sender does without the receiver's state machine and the
receiver without the sender's, and neither loads prometheus_client unless
metrics are asked for.
"""

from __future__ import annotations

from tests.fixtures.imports import loaded_after as modules_loaded_after

SIDES = (
    "servergroup.multicast.receiving",
    "servergroup.multicast.receiver",
    "servergroup.multicast.sending",
    "servergroup.multicast.sender",
    "prometheus_client",
)


def loaded_after(statement: str) -> list[str]:
    return modules_loaded_after(statement, SIDES)


def test_the_image_command_module_loads_neither_side() -> None:
    assert loaded_after("import servergroup.cli.main, servergroup.cli.image") == []


def test_each_side_loads_its_own_modules_only() -> None:
    sender = loaded_after("from servergroup.multicast import run_sender")
    assert "servergroup.multicast.sender" in sender
    assert "servergroup.multicast.receiving" not in sender
    assert "servergroup.multicast.receiver" not in sender
    assert "prometheus_client" not in sender  # loaded only when metrics are asked for
    receiver = loaded_after("from servergroup.multicast import run_receiver")
    assert "servergroup.multicast.receiver" in receiver
    assert "servergroup.multicast.sending" not in receiver
    assert "prometheus_client" not in receiver
