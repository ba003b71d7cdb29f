"""The HTTP API of a real host daemon on a real etcd: every route, 401s and validation errors."""

from __future__ import annotations

import pytest

from tests.integration.api.conftest import ApiHost

pytestmark = pytest.mark.timeout(120)


def test_openapi_document_lists_every_route(api_host: ApiHost) -> None:
    with api_host.client() as client:
        doc = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 404  # no page that loads outside assets
    assert doc["info"]["title"] == "servergroup"
    assert set(doc["paths"]) >= {"/health", "/metrics", "/hosts", "/servers"}


def test_health_lists_the_components(api_host: ApiHost) -> None:
    with api_host.client() as client:
        health = client.get("/health").json()
    assert health["host"] == api_host.name
    assert health["components"]["api"]["state"] == "healthy"
    assert api_host.token not in str(health)
