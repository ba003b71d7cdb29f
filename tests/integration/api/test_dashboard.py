"""The dashboard in a real Chromium (Debian's, driven by Playwright) on a lab cluster.

The cluster is the services' fault lab (tests/fixtures/services.py): three
lab hosts, each running `servergroup host --supervised` with the node role,
on one etcd. Their APIs listen on each lab host's own loopback, so the page
is served by one more host daemon in the root namespace, on the same etcd
and prefix, with its API on a free loopback port and a token file (as
tests/integration/api/conftest.py runs one), and the service node role off
(the service runs only in the lab hosts).

The test opens the page and, without ever reloading it: sees a lab server
appear when it is created through the API, pauses it from the page (the
confirmation dialog asks for the token) and sees it paused; defines a
service, sees its owner, crashes that owner's lab host (`lab crash`) and
sees the service on another host, with the move in its failover timeline,
and the new owner's daemon's failover-duration histogram counting it.
It also checks that the page fetched nothing from outside the daemon and
shows the token nowhere. Screenshots of each step go to the test's tmp dir;
a failure names that directory.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from playwright.async_api import Page, async_playwright, expect
from prometheus_client.parser import text_string_to_metric_families

from servergroup.api.standalone import Dashboard
from servergroup.config import ApiConfig, Config, CoordinationConfig
from servergroup.coordination.etcd_process import EtcdCluster, free_ports
from tests.fixtures.services import ServiceLab, ServiceLabFactory
from tests.integration.api.conftest import ApiHost, root_host_daemon

#: How long the page may take to show a change (a host's lease expiring, a failover).
SHOW_TIMEOUT_MS = 45_000
#: Debian's Chromium without what reaches out on its own.
CHROMIUM_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--metrics-recording-only",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("no chromium on PATH: `make test` installs it (scripts/install-system-deps)")
    return path


def failover_durations(lab: ServiceLab, node: str) -> tuple[float, float] | None:
    """(count, sum) of the failover-duration histogram of `node`'s host daemon."""
    fetch = (
        "import urllib.request; "
        "print(urllib.request.urlopen('http://127.0.0.1:8470/metrics', timeout=10).read().decode())"
    )
    proc = lab.lab.popen(node, [sys.executable, "-c", fetch], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(out.decode())
        for sample in family.samples
    }
    count = samples.get("servergroup_service_failover_duration_seconds_count")
    total = samples.get("servergroup_service_failover_duration_seconds_sum")
    return None if count is None or total is None else (count, total)


@contextlib.contextmanager
def root_daemon(lab: ServiceLab, request: pytest.FixtureRequest) -> Iterator[ApiHost]:
    """A host daemon in the root namespace on the lab's etcd and prefix; its API for the page."""
    endpoints = ",".join(str(e) for e in lab.etcd.endpoints)
    env = {"SERVERGROUP_SERVICES": "0"}  # the service runs in the lab hosts only
    with root_host_daemon(
        request, endpoints=endpoints, prefix=lab.prefix, name_prefix="d", env=env
    ) as host:
        yield host


class Shots:
    """Numbered screenshots of one page under the test's tmp dir."""

    def __init__(self, page: Page, where: Path) -> None:
        self.page, self.where, self.n = page, where, 0

    async def __call__(self, what: str) -> None:
        self.n += 1
        path = self.where / f"{self.n:02d}-{what}.png"
        await self.page.screenshot(path=str(path), full_page=True)

    async def failed(self, exc: BaseException) -> None:
        """A last screenshot of the page as the test failed; `exc` says where they are."""
        try:
            await self("failure")
        finally:
            exc.add_note(f"screenshots of the dashboard: {self.where}")


@pytest.mark.timeout(240)
async def test_dashboard_follows_a_lab_cluster(
    service_lab: ServiceLabFactory, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    lab = await service_lab()
    shots_dir = tmp_path / "screenshots"
    shots_dir.mkdir()
    with root_daemon(lab, request) as api:
        group, server = f"g{api.server_name()}", api.server_name()
        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
            )
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            requested: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            shots = Shots(page, shots_dir)
            try:
                await page.goto(f"{api.url}/")
                await expect(page.locator("#connection")).to_contain_text("live")
                for host in ("h1", "h2", "h3", api.name):
                    await expect(page.locator(f'#hosts tr[data-host="{host}"]')).to_contain_text(
                        "alive", timeout=SHOW_TIMEOUT_MS
                    )
                await shots("connected")

                # A server created through the API appears on the open page.
                with api.client(token=True) as client:
                    answer = client.post("/groups", json={"name": group})
                    assert answer.status_code == 201, answer.text
                    answer = client.post(
                        "/servers",
                        json={"name": server, "group": group, "vcpus": 2, "host": api.name},
                    )
                    assert answer.status_code == 201, answer.text
                row = page.locator(f'#servers tr[data-server="{server}"]')
                await expect(row.locator(".state")).to_have_text("active", timeout=SHOW_TIMEOUT_MS)
                await expect(row.get_by_role("img")).to_have_attribute(
                    "aria-label", "2 of 2 vCPUs online (min 1, max 2)"
                )
                await expect(page.locator("#groups")).to_contain_text(server)
                await shots("server-appeared")

                # A wrong token: the API refuses, the page says so and forgets it.
                dialog = page.get_by_role("dialog")
                await page.get_by_role("button", name="Set token").click()
                await dialog.get_by_label("API bearer token").fill("not-the-token")
                await dialog.get_by_role("button", name="Confirm").click()
                await row.get_by_role("button", name=f"Pause server {server}").click()
                await expect(dialog.get_by_label("API bearer token")).to_be_hidden()
                await dialog.get_by_role("button", name="Confirm").click()
                await expect(page.locator("#message")).to_contain_text(
                    "the bearer token is not this API's"
                )
                with api.client() as client:
                    assert client.get(f"/servers/{server}").json()["vm_state"] == "active"

                # Paused from the page: the dialog asks to confirm, and for the token.
                await row.get_by_role("button", name=f"Pause server {server}").click()
                await expect(dialog).to_contain_text(f"Pause server {server}?")
                await dialog.get_by_label("API bearer token").fill(api.token)
                await shots("confirm")
                await dialog.get_by_role("button", name="Confirm").click()
                await expect(row.locator(".state")).to_have_text("paused", timeout=SHOW_TIMEOUT_MS)
                await expect(page.locator("#message")).to_contain_text(
                    f"Pause server {server}: now paused"
                )
                await shots("paused")
                with api.client() as client:
                    assert client.get(f"/servers/{server}").json()["vm_state"] == "paused"

                # The token is kept for the tab; Cancel changes nothing.
                await row.get_by_role("button", name=f"Unpause server {server}").click()
                await expect(dialog.get_by_label("API bearer token")).to_be_hidden()
                await dialog.get_by_role("button", name="Cancel").click()
                await expect(dialog).to_be_hidden()
                with api.client() as client:
                    assert client.get(f"/servers/{server}").json()["vm_state"] == "paused"

                # A service moves when its owner's lab host crashes.
                service = f"svc{secrets.token_hex(3)}"
                await lab.define(lab.journal_service(service))
                owners = page.locator(f'#services tr[data-service="{service}"] .owner')
                await expect(owners).to_have_count(1, timeout=SHOW_TIMEOUT_MS)
                first = (await owners.inner_text()).strip()
                assert first in lab.nodes, first
                await shots("service-running")
                lab.crash(first)
                await expect(page.locator(f'#hosts tr[data-host="{first}"]')).to_have_count(
                    0, timeout=SHOW_TIMEOUT_MS
                )
                await expect(owners).not_to_have_text(first, timeout=SHOW_TIMEOUT_MS)
                await expect(owners).to_have_count(1)
                second = (await owners.inner_text()).strip()
                assert second in lab.nodes, second
                assert second != first
                timeline = page.locator(f'#services tr[data-service="{service}"] .timeline')
                await expect(timeline.locator("li.moved")).to_contain_text(
                    f"{first} → {second}", timeout=SHOW_TIMEOUT_MS
                )
                await shots("service-moved")

                # The new owner's daemon timed the failover (its /metrics, in its lab host).
                duration = failover_durations(lab, second)
                assert duration is not None, "no servergroup_service_failover_duration_seconds"
                count, total = duration
                assert count >= 1
                assert total > 0

                assert api.token not in await page.content()
                outside = [u for u in requested if not u.startswith(api.url)]
                assert not outside, f"the page fetched from outside the daemon: {outside}"
            except BaseException as exc:
                await shots.failed(exc)
                raise
            finally:
                await browser.close()


@pytest.mark.timeout(60)
def test_the_standalone_dashboard_serves_the_page_and_its_events_beside_a_taken_port(
    etcd_server: EtcdCluster,
) -> None:
    """`servergroup demo`'s dashboard process: on its port when free, else another; then gone."""
    prefix = f"/sgtest/dash-{secrets.token_hex(4)}/"
    (port,) = free_ports(1)
    config = Config(
        coordination=CoordinationConfig(prefix=prefix, endpoints=etcd_server.endpoints),
        api=ApiConfig(port=port),
    )
    with socket.create_server(("127.0.0.1", port)):  # another process's API holds the port
        dashboard = Dashboard(config, etcd_server.endpoints)
        url = dashboard.start()
        pid = dashboard.pid
        assert pid is not None
        try:
            assert url.startswith("http://127.0.0.1:")
            assert not url.startswith(f"http://127.0.0.1:{port}/")
            page = httpx.get(url, timeout=10.0)
            assert page.status_code == 200
            assert "<title>servergroup</title>" in page.text
            assert "default-src 'self'" in page.headers["content-security-policy"]
            with httpx.stream("GET", url + "events", timeout=10.0) as events:
                assert events.headers["content-type"].startswith("text/event-stream")
                lines = events.iter_lines()
                data = next(line for line in lines if line.startswith("data:"))
            snapshot = json.loads(data.removeprefix("data:"))
            assert snapshot["host"] == "demo"
            assert snapshot["servers"] == []
            assert snapshot["error"] is None
        finally:
            dashboard.stop()
    assert not psutil.pid_exists(pid)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=5.0)
