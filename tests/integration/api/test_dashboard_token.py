"""The dashboard where reads need the token: a host daemon's API bound off loopback.

A `servergroup host` in the root namespace binds its API to the lab
bridge's root address (not loopback, so every read needs the bearer token;
the address never leaves this machine), on the session's etcd. A transfer
record is written there with the recorder's own encoder, so the page has a
transfer to show beside the host.

Without the token, `/events` and the routes answer 401, and the page, which
is served to anyone (it holds nothing), says it needs the token and shows
no host, no transfer, nothing of the cluster; a wrong token changes nothing.
With the right one (Set token), the same open page shows the cluster.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Response, async_playwright, expect

from servergroup.config import CoordinationConfig
from servergroup.coordination import EtcdCoordinator
from servergroup.coordination.etcd_process import EtcdCluster
from servergroup.transfers import record as rec
from tests.fixtures.lab import LabFactory
from tests.integration.api.conftest import root_host_daemon
from tests.integration.api.test_dashboard import CHROMIUM_ARGS, Shots, chromium_path

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

SHOW_TIMEOUT_MS = 20_000


def transfer_record(now: float) -> rec.SenderRecord:
    return rec.SenderRecord(
        transfer_id="0123456789abcdef",
        host="imagehost",
        address="198.18.9.9",
        port=18383,
        group="239.192.83.71",
        mtu=1500,
        expected_clients=2,
        state=rec.TransferState.RUNNING,
        started_at=now,
        updated_at=now,
        size=4 << 20,
        done_bytes=2 << 20,
        rate=12.5e6,
        repairs=7,
    )


async def test_the_page_asks_for_the_token_and_then_shows_the_cluster(
    lab: LabFactory,
    etcd_server: EtcdCluster,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """Screenshots of each step go to the test's tmp dir (`screenshots/`)."""
    status = lab(2).status()
    assert status is not None
    bind = str(status.root_address)
    prefix = f"/sgtest/dtok-{secrets.token_hex(4)}/"
    config = CoordinationConfig(prefix=prefix)
    shots_dir = tmp_path / "screenshots"
    shots_dir.mkdir()
    endpoints = ",".join(str(e) for e in etcd_server.endpoints)
    async with EtcdCoordinator(etcd_server.endpoints, prefix=prefix, config=config) as c:
        try:
            record = transfer_record(time.time())
            await c.put(rec.sender_key("198.18.9.9:18383"), rec.encode_sender(record))
            with root_host_daemon(
                request, endpoints=endpoints, prefix=prefix, name_prefix="k", bind=bind
            ) as api:
                assert not api.url.startswith("http://127.")
                # Reads without the token: 401 and nothing of the cluster.
                async with httpx.AsyncClient(base_url=api.url, timeout=10.0) as http:
                    for path in ("/hosts", "/transfers", "/events", "/metrics"):
                        answer = await http.get(path)
                        assert answer.status_code == 401, (path, answer.text)
                        assert api.name not in answer.text
                    wrong = await http.get("/hosts", headers={"Authorization": "Bearer nope"})
                    assert wrong.status_code == 401
                    page_html = (await http.get("/")).text
                    assert api.name not in page_html
                    assert api.token not in page_html

                async with async_playwright() as p:
                    browser = await p.chromium.launch(
                        executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
                    )
                    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                    shots = Shots(page, shots_dir)
                    try:
                        await page.goto(f"{api.url}/")
                        connection = page.locator("#connection")
                        await expect(connection).to_contain_text("needs the token")
                        await expect(page.locator("#hosts tbody tr")).to_have_count(0)
                        await expect(page.locator("#transfers tbody tr")).to_have_count(0)
                        assert api.name not in await page.content()
                        await shots("no-token")

                        # A wrong token: still refused, still nothing shown.
                        dialog = page.get_by_role("dialog")
                        await page.get_by_role("button", name="Set token").click()
                        await dialog.get_by_label("API bearer token").fill("not-the-token")

                        def wrong_token_read(r: Response) -> bool:
                            sent = r.request.headers.get("authorization")
                            return r.url.endswith("/events") and sent == "Bearer not-the-token"

                        async with page.expect_response(wrong_token_read) as refused:
                            await dialog.get_by_role("button", name="Confirm").click()
                        assert (await refused.value).status == 401
                        await expect(connection).to_contain_text("needs the token")
                        await expect(page.locator("#hosts tbody tr")).to_have_count(0)
                        assert api.name not in await page.content()

                        # The token: the same page now shows the cluster.
                        await page.get_by_role("button", name="Set token").click()
                        await dialog.get_by_label("API bearer token").fill(api.token)
                        await dialog.get_by_role("button", name="Confirm").click()
                        host_row = page.locator(f'#hosts tr[data-host="{api.name}"]')
                        await expect(host_row).to_contain_text("alive", timeout=SHOW_TIMEOUT_MS)
                        await expect(connection).to_contain_text("live")
                        row = page.locator('#transfers tr[data-transfer="198.18.9.9:18383"]')
                        await expect(row).to_contain_text("imagehost")
                        await expect(row.locator(".state")).to_have_text("running")
                        await expect(row.locator("progress")).to_have_attribute("value", "50")
                        await expect(row).to_contain_text("100.0 Mbit/s")
                        await shots("with-token")
                        assert api.token not in await page.content()
                    except BaseException as exc:
                        await shots.failed(exc)
                        raise
                    finally:
                        await browser.close()
        finally:
            await c.delete_prefix("")
