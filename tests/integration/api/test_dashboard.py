"""The dashboard in a real Chromium (Debian's, driven by Playwright), on a real host daemon.

The page follows `/events` (one etcd watch in the daemon); the test creates a
lab server through the API and sees its row appear without reloading, pauses
it from the page (the confirmation dialog asks for the token) and sees its
state turn to paused, and checks that the page fetched nothing from outside
the daemon and shows the token nowhere. Screenshots of each step go to the
test's tmp dir; a failure names that directory.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.integration.api.conftest import ApiHost

#: How long the page may take to show a change (a lifecycle operation on a loaded machine).
SHOW_TIMEOUT_MS = 30_000


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("no chromium on PATH: `make test` installs it (scripts/install-system-deps)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            args=[
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-sync",
                "--no-first-run",
                "--metrics-recording-only",
            ],
        )
        try:
            yield b
        finally:
            b.close()


class Shots:
    """Numbered screenshots of one page under the test's tmp dir."""

    def __init__(self, page: Page, where: Path) -> None:
        self.page, self.where, self.n = page, where, 0

    def __call__(self, what: str) -> None:
        self.n += 1
        self.page.screenshot(path=str(self.where / f"{self.n:02d}-{what}.png"), full_page=True)


@pytest.mark.timeout(120)
def test_dashboard_shows_a_new_server_and_pauses_it(
    api_host: ApiHost, browser: Browser, tmp_path: Path
) -> None:
    shots_dir = tmp_path / "screenshots"
    shots_dir.mkdir()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    shots = Shots(page, shots_dir)
    group, server = f"g{api_host.server_name()}", api_host.server_name()
    try:
        page.goto(f"{api_host.url}/")
        expect(page.locator("#connection")).to_contain_text("live", timeout=SHOW_TIMEOUT_MS)
        expect(page.locator("#hosts tbody")).to_contain_text(api_host.name)
        shots("connected")

        with api_host.client(token=True) as client:
            answer = client.post("/groups", json={"name": group, "policy": "anti-affinity"})
            assert answer.status_code == 201, answer.text
            answer = client.post(
                "/servers", json={"name": server, "group": group, "vcpus": 2, "min_vcpus": 1}
            )
            assert answer.status_code == 201, answer.text
        row = page.locator(f'#servers tr[data-server="{server}"]')
        expect(row.locator(".state")).to_have_text("active", timeout=SHOW_TIMEOUT_MS)
        expect(row.get_by_role("img")).to_have_attribute(
            "aria-label", "2 of 2 vCPUs online (min 1, max 2)"
        )
        expect(page.locator("#groups")).to_contain_text(server)
        shots("server-appeared")

        # Pause from the page: the dialog asks to confirm, and for the token (none yet).
        row.get_by_role("button", name=f"Pause server {server}").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text(f"Pause server {server}?")
        dialog.get_by_label("API bearer token").fill(api_host.token)
        shots("confirm")
        dialog.get_by_role("button", name="Confirm").click()
        expect(row.locator(".state")).to_have_text("paused", timeout=SHOW_TIMEOUT_MS)
        expect(page.locator("#message")).to_contain_text(f"Pause server {server}: now paused")
        shots("paused")
        with api_host.client() as client:
            assert client.get(f"/servers/{server}").json()["vm_state"] == "paused"

        # A second action does not ask for the token again (sessionStorage); Cancel does nothing.
        row.get_by_role("button", name=f"Unpause server {server}").click()
        expect(dialog.get_by_label("API bearer token")).to_be_hidden()
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()
        with api_host.client() as client:
            assert client.get(f"/servers/{server}").json()["vm_state"] == "paused"

        # The token is in no page the server sent, and nothing came from outside the daemon.
        assert api_host.token not in page.content()
        outside = [u for u in requested if not u.startswith(api_host.url)]
        assert not outside, f"the page fetched from outside the daemon: {outside}"
    except Exception as exc:
        try:
            shots("failure")
        finally:
            exc.add_note(f"screenshots of the dashboard: {shots_dir}")
        raise
    finally:
        page.close()
        with api_host.client(token=True) as client:
            client.delete(f"/servers/{server}")
            client.delete(f"/groups/{group}")
