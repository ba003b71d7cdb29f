"""Every lifecycle operation, as a user runs it, and the notification it gives the others."""

from __future__ import annotations

import pytest

from tests.fixtures.setup import SetupFactory
from tests.integration.daemons.test_restarts import (
    guest_pid,
    notification,
    send_until_received,
    status_of,
)

pytestmark = pytest.mark.timeout(180)


def test_each_operation_notifies_the_other_members(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(2)
    setup.run("group", "create", "g", "--policy", "soft-affinity")
    setup.run("server", "create", "a", "--group", "g", "--host", "h1")
    setup.run("server", "create", "b", "--group", "g", "--host", "h1")
    watcher = setup.app("a")
    watcher.wait_for(status_of({"a", "b"}))
    for command, event in [
        (["pause", "b"], "pause.end"),
        (["unpause", "b"], "unpause.end"),
        (["stop", "b"], "power_off.end"),
        (["start", "b"], "power_on.end"),
        (["reboot", "b"], "reboot.end"),
    ]:
        setup.run("server", *command)
        watcher.wait_for(notification("b", f"compute.instance.{event}"))

    # Live migration: the guest keeps running (same agent) and is reached on h2.
    pid = guest_pid(setup, "b")
    listener = setup.app("b")
    listener.wait_for(status_of({"a", "b"}))
    setup.run("server", "migrate", "b", "--to", "h2", "--live")
    watcher.wait_for(notification("b", "compute.instance.live_migration.end"))
    assert guest_pid(setup, "b") == pid
    shown = setup.json("server", "show", "b")
    assert (shown["host"], shown["vm_state"]) == ("h2", "active")
    send_until_received(setup, "a", listener, "after live migration")

    # Cold migration back: the server is stopped and started on h1.
    setup.run("server", "migrate", "b", "--to", "h1", "--cold")
    watcher.wait_for(notification("b", "compute.instance.migrate.end"))
    assert guest_pid(setup, "b") != pid
    setup.run("server", "delete", "b")
    watcher.wait_for(notification("b", "compute.instance.delete.end"))
    assert [s["name"] for s in setup.json("server", "list")] == ["a"]
