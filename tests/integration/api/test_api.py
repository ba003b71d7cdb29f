"""The HTTP API of a real host daemon on a real etcd: every route, 401s and validation errors.

One `servergroup host` (lab driver, service node role, API with a token
file) serves the whole module (`conftest.api_host`); each test uses names of
its own. Reads go through the API and are checked against what the action
did; the service and replication records are written with the same library
calls the CLI makes (`service add`, a pair's key and a node's status).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from servergroup.api.guard import MAX_BODY
from servergroup.replication.authority import STATUS_PREFIX
from servergroup.replication.pair import PairKey
from servergroup.servers.model import Evacuate, ServerSpec
from servergroup.servers.operations import Operations
from servergroup.servers.registry import Registry
from servergroup.services.client import add_definitions
from tests.integration.api.conftest import ApiHost

pytestmark = pytest.mark.timeout(180)

WAIT = 30.0


def wait_for(read: Callable[[], Any], holds: Callable[[Any], bool], timeout: float = WAIT) -> Any:
    """Read again until `holds(value)`: the daemon is another process, its API the only view."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if holds(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout:g} s")
        time.sleep(0.1)


def actions(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (method, path) of the OpenAPI document that changes something."""
    return [
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("post", "put", "patch", "delete")
    ]


def test_openapi_document_lists_every_route(api_host: ApiHost) -> None:
    with api_host.client() as client:
        doc = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 404  # no page that loads outside assets
    assert doc["info"]["title"] == "servergroup"
    assert set(doc["paths"]) == {
        "/health",
        "/metrics",
        "/hosts",
        "/hosts/{name}",
        "/groups",
        "/groups/{name}",
        "/servers",
        "/servers/{name}",
        "/servers/{name}/migrate",
        "/servers/{name}/resize",
        "/servers/{name}/scale/{direction}",
        "/servers/{name}/{action}",
        "/services",
        "/services/{name}",
        "/services/{name}/enable",
        "/services/{name}/disable",
        "/services/{name}/relocate",
        "/services/{name}/clear",
        "/replication",
        "/replication/{name}",
        "/transfers",
        "/transfers/{endpoint}",
    }
    assert "ServerView" in doc["components"]["schemas"]
    assert "TransferView" in doc["components"]["schemas"]


def test_transfers_read_what_is_recorded(api_host: ApiHost) -> None:
    # Recorded transfers: tests/integration/api/test_transfers.py runs real ones.
    with api_host.client() as client:
        assert client.get("/transfers").json() == []  # the module's prefix has none
        missing = client.get("/transfers/198.18.0.9:18383")
        assert missing.status_code == 404
        assert missing.json()["detail"] == "no transfer recorded from 198.18.0.9:18383."
        assert client.get("/transfers/not-an-endpoint").status_code == 422


def test_health_lists_the_components(api_host: ApiHost) -> None:
    with api_host.client() as client:
        health = client.get("/health").json()
    assert health["host"] == api_host.name
    assert health["components"]["api"]["state"] == "healthy"
    assert health["components"]["servers"]["state"] == "healthy"
    assert api_host.token not in json.dumps(health)


def test_every_action_without_the_token_gets_401_and_changes_nothing(api_host: ApiHost) -> None:
    group = f"g{secrets.token_hex(3)}"
    with api_host.client() as client:
        doc = client.get("/openapi.json").json()
        found = actions(doc)
        assert len(found) == 12
        for method, path in found:
            url = path.format(name=group, action="pause", direction="down")
            body = {"name": group, "group": group, "to": "nowhere"}
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Basic {api_host.token}"},
                {"Authorization": "Bearer"},
            ):
                answer = client.request(method, url, json=body, headers=headers)
                assert answer.status_code == 401, (method, url, headers, answer.text)
                assert answer.headers["www-authenticate"] == "Bearer"
                assert api_host.token not in answer.text
        # Nothing was made: the group does not exist.
        assert client.get(f"/groups/{group}").status_code == 404
    assert api_host.token not in api_host.log_text()


def test_an_action_is_refused_before_its_body_is_read(api_host: ApiHost) -> None:
    """No token: 401 whatever the body (malformed, huge); with it, a body is bounded."""
    group = f"g{secrets.token_hex(3)}"
    huge = b"{" + b" " * (MAX_BODY + 1) + b"}"
    with api_host.client() as client:
        for body in (b"{not json", huge):
            answer = client.post(
                "/groups", content=body, headers={"Content-Type": "application/json"}
            )
            assert answer.status_code == 401, answer.text
            assert answer.headers["www-authenticate"] == "Bearer"
    with api_host.client(token=True) as client:
        answer = client.post("/groups", content=huge, headers={"Content-Type": "application/json"})
        assert answer.status_code == 413, answer.text
        assert answer.json()["detail"] == f"a request body is at most {MAX_BODY} bytes."

        def chunks() -> Iterator[bytes]:
            yield b'{"name": '
            yield f'"{group}"}}'.encode()

        answer = client.post(
            "/groups", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 411, answer.text
        assert client.post("/groups", content=b"{not json").status_code == 422
        assert client.get(f"/groups/{group}").status_code == 404  # it was not made


def test_validation_errors_and_unknown_names(api_host: ApiHost) -> None:
    with api_host.client(token=True) as client:
        for method, url, body in [
            ("POST", "/groups", {"name": "no spaces"}),
            ("POST", "/groups", {"name": "g", "policy": "scattered"}),
            ("POST", "/groups", {"name": "g", "unknown": 1}),
            ("POST", "/servers", {"name": "s", "group": "g", "vcpus": 0}),
            ("POST", "/servers", {"name": "s"}),
            ("POST", "/servers/s/explode", None),
            ("POST", "/servers/s/scale/sideways", None),
            ("POST", "/servers/s/resize", None),  # vcpus is required
            ("POST", "/servers/s/pause?timeout=-1", None),
            ("POST", "/services/x/relocate", {"instance": -1}),
            ("GET", "/servers/bad!name", None),
        ]:
            answer = client.request(method, url, json=body)
            assert answer.status_code == 422, (method, url, answer.text)
        for url in [
            "/servers/nosuch",
            "/groups/nosuch",
            "/hosts/nosuch",
            "/services/nosuch",
            "/replication/nosuch",
        ]:
            answer = client.get(url)
            assert answer.status_code == 404, (url, answer.text)
            assert answer.json()["detail"].endswith(".")
        for method, url, body in [
            ("POST", "/servers/nosuch/migrate", {"to": "h2"}),
            ("POST", "/servers/nosuch/resize?vcpus=2", None),
            ("POST", "/servers/nosuch/reboot", None),
            ("DELETE", "/servers/nosuch", None),
            ("DELETE", "/groups/nosuch", None),
            ("POST", "/services/nosuch/enable", None),
        ]:
            answer = client.request(method, url, json=body)
            assert answer.status_code == 404, (method, url, answer.text)


def test_group_and_server_lifecycle(api_host: ApiHost) -> None:
    group = f"g{secrets.token_hex(3)}"
    name = api_host.server_name()
    with api_host.client(token=True) as client:
        made = client.post("/groups", json={"name": group, "policy": "anti-affinity"})
        assert made.status_code == 201, made.text
        assert made.json()["policy"] == "anti-affinity"
        again = client.post("/groups", json={"name": group})
        assert again.status_code == 409, again.text
        assert group in [g["name"] for g in client.get("/groups").json()]

        created = client.post(
            "/servers", json={"name": name, "group": group, "vcpus": 2, "min_vcpus": 1}
        )
        assert created.status_code == 201, created.text
        server = created.json()
        assert (server["vm_state"], server["host"], server["host_alive"]) == (
            "active",
            api_host.name,
            True,
        )
        assert (server["vcpus"], server["min_vcpus"], server["online_cpus"]) == (2, 1, [0, 1])
        assert client.get(f"/groups/{group}").json()["members"] == [name]
        assert [s["name"] for s in client.get("/servers", params={"group": group}).json()] == [name]
        (host,) = [h for h in client.get("/hosts").json() if h["name"] == api_host.name]
        assert host["alive"]
        assert host["drivers"] == ["lab"]
        assert name in host["servers"]
        assert host["cpus"] == [0, 1]
        assert client.get(f"/hosts/{api_host.name}").json() == host

        for action, state in [
            ("pause", "paused"),
            ("unpause", "active"),
            ("stop", "stopped"),
            ("start", "active"),
            ("reboot", "active"),
        ]:
            answer = client.post(f"/servers/{name}/{action}")
            assert answer.status_code == 200, (action, answer.text)
            assert answer.json()["vm_state"] == state
            assert client.get(f"/servers/{name}").json()["vm_state"] == state

        # The guest agent reconnects after the reboot: until then the host answers 502.
        scaled = wait_for(
            lambda: client.post(f"/servers/{name}/scale/down"),
            lambda answer: "is not connected" not in answer.text,
        )
        assert scaled.status_code == 200, scaled.text
        assert scaled.json()["online_cpus"] == [0]
        assert client.get(f"/servers/{name}").json()["online_cpus"] == [0]
        refused = client.post(f"/servers/{name}/scale/down")  # min_vcpus is 1
        assert refused.status_code == 409, refused.text
        assert client.post(f"/servers/{name}/scale/up").json()["online_cpus"] == [0, 1]

        # Two operators at once: each request lands or is refused (409), never a 5xx,
        # and the server ends in the state of one that landed.
        def race(action: str) -> httpx.Response:
            with api_host.client(token=True) as other:
                return other.post(f"/servers/{name}/{action}")

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(race, ["pause", "stop"]))
        assert {a.status_code for a in answers} <= {200, 409}, [a.text for a in answers]
        landed = {a.json()["vm_state"] for a in answers if a.status_code == 200}
        assert landed
        assert client.get(f"/servers/{name}").json()["vm_state"] in landed
        for action in ("unpause", "start"):  # back to active, whichever landed last
            client.post(f"/servers/{name}/{action}")
        assert client.get(f"/servers/{name}").json()["vm_state"] == "active"

        # Refused by the cluster's state: one sentence, 409.
        busy = client.delete(f"/groups/{group}")
        assert busy.status_code == 409, busy.text
        moved = client.post(f"/servers/{name}/migrate", json={"to": "nowhere"})
        assert moved.status_code == 409, moved.text
        same = client.post(f"/servers/{name}/resize", params={"vcpus": 2, "min_vcpus": 1})
        assert same.status_code == 409, same.text

        metrics = client.get("/metrics").text
        assert 'servergroup_lifecycle_operations_total{operation="pause",result="ok"}' in metrics
        assert 'servergroup_scale_operations_total{direction="down",result="ok"} 1.0' in metrics

        deleted = client.delete(f"/servers/{name}")
        assert deleted.status_code == 200, deleted.text
        assert client.get(f"/servers/{name}").status_code == 404
        assert client.delete(f"/groups/{group}").status_code == 200
    assert api_host.token not in api_host.log_text()


def test_concurrent_creates_of_one_group_make_it_once(api_host: ApiHost) -> None:
    group = f"g{secrets.token_hex(3)}"

    def create(_: int) -> int:
        with api_host.client(token=True) as client:
            return client.post("/groups", json={"name": group}).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(create, range(8)))
    assert codes == [201] + [409] * 7
    with api_host.client(token=True) as client:
        assert client.delete(f"/groups/{group}").status_code == 200


SERVICE = """
[[domain]]
name = "{domain}"
restricted = true
nodes = ["{node}"]

[[service]]
name = "{name}"
agent = "ocf:heartbeat:Dummy"
domain = "{domain}"
stop_timeout = 0.4
address = "{{node_ip}}:7000"

[service.parameters]
state = "{state}"
"""


async def test_services(api_host: ApiHost) -> None:
    name = f"s{secrets.token_hex(3)}"
    text = SERVICE.format(
        domain=f"d{name}", node=api_host.name, name=name, state=api_host.state_dir / f"{name}.st"
    )
    async with api_host.coordinator() as c:
        await add_definitions(c, text)  # what `servergroup service add` does
    async with httpx.AsyncClient(base_url=api_host.url, headers=api_host.auth) as client:

        async def show() -> dict[str, Any]:
            answer = await client.get(f"/services/{name}")
            assert answer.status_code == 200, answer.text
            found: dict[str, Any] = answer.json()
            return found

        async def until(holds: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
            deadline = time.monotonic() + WAIT
            while True:
                value = await show()
                if holds(value):
                    return value
                assert time.monotonic() < deadline, value
                await asyncio.sleep(0.1)

        status = await until(lambda s: s["state"] == "running" and s["instances"][0]["monitors"])
        (instance,) = status["instances"]
        assert instance["node"] == api_host.name
        assert instance["token"] > 0
        assert instance["address"] == "127.0.0.1:7000"
        assert instance["monitors"][0]["ok"]
        assert [e["action"] for e in status["history"]][:1] == ["start"]
        listed = (await client.get("/services")).json()
        (summary,) = [s for s in listed["services"] if s["name"] == name]
        assert summary["master"]["node"] == api_host.name

        answer = await client.post(f"/services/{name}/relocate", json={"to": "nowhere"})
        assert answer.status_code == 409, answer.text  # not a live node
        # One node only: the relocation is asked and waits for another node.
        answer = await client.post(f"/services/{name}/relocate", json={})
        assert answer.status_code == 200, answer.text
        pending = await until(lambda s: s["instances"][0]["relocation"] is not None)
        assert pending["instances"][0]["relocation"]["from"] == api_host.name
        answer = await client.post(f"/services/{name}/disable")
        assert answer.json() == {"done": f"service {name} disabled", "changed": True}
        await until(lambda s: s["state"] == "disabled" and s["instances"][0]["node"] is None)
        answer = await client.post(f"/services/{name}/disable")
        assert answer.json()["changed"] is False
        answer = await client.post(f"/services/{name}/clear")
        assert answer.status_code == 200, answer.text
        assert answer.json()["done"].startswith(f"service {name}: cleared ")
        assert (await client.post(f"/services/{name}/enable")).json()["changed"] is True
        await until(lambda s: s["state"] == "running")
        assert (await client.post(f"/services/{name}/disable")).status_code == 200


async def test_replication_pairs(api_host: ApiHost) -> None:
    name = f"p{secrets.token_hex(3)}"
    async with api_host.coordinator() as c:
        # What a primary writes when it starts, then its status each second.
        await PairKey(c, name).establish("hA/127.0.0.1:7001")
        status = {
            "role": "primary",
            "node": "hA/127.0.0.1:7001",
            "mode": "protected",
            "generation": 1,
            "epoch": 12,
            "committed": 11,
            "lag": 1,
            "last_checkpoint_bytes": 8192,
            "last_pause_ms": 1.25,
            "held_output_bytes": 0,
            "clients": 2,
        }
        await c.put(f"{STATUS_PREFIX}{name}/hA", json.dumps(status).encode())
        await c.put(f"{STATUS_PREFIX}{name}/junk", b"not json")  # left out, not a 500
        async with httpx.AsyncClient(base_url=api_host.url) as client:
            listed = (await client.get("/replication")).json()
            (pair,) = [p for p in listed if p["name"] == name]
            assert (await client.get(f"/replication/{name}")).json() == pair
        await PairKey(c, name).remove()
        await c.delete_prefix(f"{STATUS_PREFIX}{name}/")
    assert (pair["generation"], pair["active"], pair["backup"]) == (1, "hA/127.0.0.1:7001", None)
    (node,) = pair["nodes"]
    assert node["state"] == "protected"
    assert (node["epoch"], node["committed"], node["lag"], node["last_pause_ms"]) == (
        12,
        11,
        1,
        1.25,
    )


def run_schemathesis(api_host: ApiHost, tmp_path: Path, *, phases: str, examples: int) -> str:
    """`st run` against the daemon's OpenAPI document, with the token; its output."""
    argv = [
        str(Path(sys.executable).parent / "st"),
        "run",
        f"{api_host.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--header",
        f"Authorization: Bearer {api_host.token}",
        # A generated group and server would start real lab servers.
        "--exclude-operation-id",
        "create_server_servers_post",
        "--max-examples",
        str(examples),
        "--workers",
        "1",
        "--phases",
        phases,
        "--request-timeout",
        "30",
        "--report-dir",
        str(tmp_path),
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
    assert "failed" not in done.stdout
    return done.stdout


def test_schemathesis_finds_no_server_error(api_host: ApiHost, tmp_path: Path) -> None:
    """Requests generated from the OpenAPI document, every operation but server creation:
    none gets a 500 (the 502-504 that say etcd or a host failed would be real answers, but
    none comes here). A short run; the test below runs every phase, marked slow."""
    out = run_schemathesis(api_host, tmp_path, phases="fuzzing", examples=5)
    assert "Tested: 25" in out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_schemathesis_every_phase(api_host: ApiHost, tmp_path: Path) -> None:
    """The same with schemathesis's coverage phase (boundary values of every parameter)."""
    run_schemathesis(api_host, tmp_path, phases="examples,coverage,fuzzing", examples=30)


async def test_a_dead_host_that_servers_are_still_on(api_host: ApiHost) -> None:
    """A host no daemon serves any more, named by a server's records: listed, alive false."""
    group, dead = f"g{secrets.token_hex(3)}", f"gone{secrets.token_hex(3)}"
    async with api_host.coordinator() as c:
        registry = Registry(c)
        # Manual evacuation: this module's host must not rebuild the server.
        await Operations(registry).create_group(group, evacuate=Evacuate.MANUAL)
        spec = ServerSpec(
            name=f"t{secrets.token_hex(4)}",
            instance=f"instance-{secrets.token_hex(4)}",
            uuid=str(uuid.uuid4()),
            group=group,
            host=dead,
        )
        await registry.create_server(spec)
        try:
            async with httpx.AsyncClient(base_url=api_host.url) as client:
                (host,) = [h for h in (await client.get("/hosts")).json() if h["name"] == dead]
                assert host == {
                    "name": dead,
                    "alive": False,
                    "pid": None,
                    "started_at": None,
                    "drivers": [],
                    "cpus": None,
                    "free_cpus": None,
                    "servers": [spec.name],
                }
                server = (await client.get(f"/servers/{spec.name}")).json()
                assert (server["host"], server["host_alive"]) == (dead, False)
                assert (server["vm_state"], server["task_state"]) == ("error", "lost")
        finally:
            await registry.remove_server(spec.name)
            await registry.delete_group(group)
