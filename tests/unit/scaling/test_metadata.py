"""The original's metadata form of the boot sync: `offline_cpuset`, read over HTTP."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from servergroup.scaling.agent import MetadataError, fetch_offline_cpuset, offline_cpuset_of


@pytest.mark.parametrize(
    ("body", "cpus"),
    [
        ("set([1, 2])", (1, 2)),
        ("set([])", ()),
        ("1-2", (1, 2)),
        ("[1, 3]", (1, 3)),
        ('{"offline_cpuset": "set([3])"}', (3,)),
        ('{"meta": {"offline_cpuset": "set([1, 2])"}, "uuid": "x"}', (1, 2)),
        ('{"meta": {}, "uuid": "x"}', ()),
        ("{}", ()),
    ],
)
def test_bodies(body: str, cpus: tuple[int, ...]) -> None:
    assert offline_cpuset_of(body) == cpus


@pytest.mark.parametrize(
    "body", ['{"offline_cpuset": 3}', "set([x])", '{"meta": {"offline_cpuset": [1]}}', "what"]
)
def test_bad_bodies_are_one_sentence(body: str) -> None:
    with pytest.raises(MetadataError) as caught:
        offline_cpuset_of(body)
    assert "\n" not in str(caught.value)


class _Metadata(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        if self.path != "/meta_data.json":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Metadata)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_fetch(server: http.server.HTTPServer) -> None:
    _Metadata.body = b'{"meta": {"offline_cpuset": "set([2, 3])"}}'
    port = server.server_address[1]
    assert fetch_offline_cpuset(f"http://127.0.0.1:{port}/meta_data.json", 2.0) == (2, 3)
    with pytest.raises(MetadataError, match="cannot read the metadata"):
        fetch_offline_cpuset(f"http://127.0.0.1:{port}/missing", 2.0)
