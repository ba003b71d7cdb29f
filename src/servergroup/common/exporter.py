"""Metrics of the stand-alone processes: `--metrics ADDR` and `--metrics-file PATH`.

Theory of operation. The host daemon serves `/metrics` through its HTTP API;
`servergroup image send` and `servergroup protect` run outside it and count
into the same objects (`common.metrics`) in their own process. Two ways out,
because the two kinds of process differ:

- `--metrics HOST:PORT` starts prometheus-client's own exporter (a daemon
  thread serving this process's registry at `http://HOST:PORT/metrics`, the
  same text the host daemon serves), the way every exporter Prometheus
  scrapes works; right for `protect`, which runs for days, and for watching
  a long transfer live. `:PORT` listens on every address. It has no token:
  it serves counters only, no secret and no action; bind it to loopback or
  a management network.
- `--metrics-file PATH` (`image send`) writes the registry once the transfer
  ends, atomically (a temporary file renamed over PATH), in the format of
  node_exporter's textfile collector. A transfer is a batch job: a scrape
  every 15-60 s can miss a short one entirely and never sees its end, while
  a file in the collector's directory keeps the final numbers until the next
  transfer replaces them.
"""

from __future__ import annotations

import errno

from prometheus_client import REGISTRY, start_http_server, write_to_textfile

from servergroup.common.errors import UsageError


def parse_listen(text: str, what: str = "--metrics") -> tuple[str, int]:
    """`(host, port)` from `HOST:PORT`, `[V6]:PORT` or `:PORT` (every IPv4 address)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UsageError(f"{what} {text!r} is not HOST:PORT (a port from 1 to 65535).")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


def serve_metrics(text: str) -> str:
    """Serve this process's metrics at `text` (HOST:PORT) from now on; the URL."""
    host, port = parse_listen(text)
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"--metrics {text}: port {port} is in use; choose another.") from None
        raise UsageError(f"--metrics {text}: cannot listen there: {exc.strerror or exc}.") from None
    bound = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{bound}/metrics"


def write_metrics_file(path: str) -> None:
    """Write this process's metrics to `path` atomically (node_exporter's textfile format)."""
    try:
        write_to_textfile(path, REGISTRY)
    except OSError as exc:
        raise UsageError(f"cannot write the metrics file {path}: {exc.strerror or exc}.") from None


__all__ = ["parse_listen", "serve_metrics", "write_metrics_file"]
