"""Where a transfer is recorded: the configured etcd, else a local etcd running here, else none.

Apart from the recorder so that a command with nothing to record in (no etcd
configured, none running) decides so without loading the records, the
recorder and the etcd side of `servergroup.coordination`.
"""

from __future__ import annotations

import contextlib
import os

from servergroup.common.errors import ConfigError
from servergroup.common.process import command_line
from servergroup.config import Config, Endpoint


def recording_endpoints(config: Config) -> tuple[Endpoint, ...]:
    """The etcd to record transfers in: configured, else a running local etcd, else none.

    The managed local etcd listens on loopback, and with `servergroup up` also
    on the lab bridge's root address: from a lab host (another network
    namespace than the etcd's), that address is the one that reaches it.
    """
    if config.coordination.endpoints:
        return config.coordination.endpoints
    # Here, not at the top: the managed etcd's code loads only when it is looked for.
    from servergroup.coordination import LocalEtcd

    try:
        found = LocalEtcd(config).running()  # no health check: it may hang
    except Exception:  # an unreadable state directory: nothing to record in
        return ()
    if found is None:
        return ()
    pid, endpoint = found
    if _same_netns(pid):
        return (endpoint,)
    others = [e for e in _client_endpoints(pid) if not e.loopback]
    return tuple(others[:1])


def _same_netns(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return True


def _client_endpoints(pid: int) -> list[Endpoint]:
    argv = command_line(pid) or []
    urls = next((a.split("=", 1)[1] for a in argv if a.startswith("--listen-client-urls=")), "")
    if not urls and "--listen-client-urls" in argv[:-1]:
        urls = argv[argv.index("--listen-client-urls") + 1]
    found = []
    for url in urls.split(","):
        with contextlib.suppress(ConfigError):
            found.append(Endpoint.parse(url))
    return found
