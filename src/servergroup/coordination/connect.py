"""`connect(config)`: the one place an `EtcdCoordinator` is built from the configuration.

Theory of operation
-------------------
Every command, daemon, demo step and benchmark that talks to the store gets
its coordinator here, so they all resolve endpoints, the key prefix and the
timings the same way:

- endpoints: the ones passed in (a caller that already knows where etcd
  runs, such as `servergroup up` with its managed etcd), else the
  configured ones, else, given a whole `Config`, the managed local etcd's
  (started on demand, see `local_etcd.resolve_endpoints`; a command that
  only reads passes `start_local=False` and is told when it is not
  running, so that looking leaves no daemon behind). A bare
  `CoordinationConfig` with no endpoint anywhere is a usage error: without
  a state directory there is no local etcd to fall back on.
- prefix: the configured one, unless the caller names another (tests and
  benchmarks use a unique prefix each).
- timings: the `CoordinationConfig`'s (request and operation timeouts).
- clock: injected; the system clock by default.

Nothing connects here yet: the client dials on first use, and the returned
coordinator is an async context manager that closes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from servergroup.common.clock import Clock
from servergroup.common.errors import UsageError
from servergroup.config import Config, CoordinationConfig, Endpoint

if TYPE_CHECKING:
    from servergroup.coordination.etcd import EtcdCoordinator


def connect(
    config: Config | CoordinationConfig,
    *,
    endpoints: Sequence[Endpoint] | None = None,
    prefix: str | None = None,
    clock: Clock | None = None,
    start_local: bool = True,
) -> EtcdCoordinator:
    """The etcd coordinator `config` describes; `endpoints` and `prefix` override it.

    With `start_local` false, a managed local etcd that is not running is
    not started: `LocalEtcdNotRunning` is raised instead.
    """
    if isinstance(config, Config):
        # Here, not at the top: the managed etcd's code (and urllib) loads only when used.
        from servergroup.coordination.local_etcd import resolve_endpoints

        coordination = config.coordination
        found = tuple(endpoints) if endpoints else resolve_endpoints(config, start=start_local)
    else:
        coordination = config
        found = tuple(endpoints) if endpoints else coordination.endpoints
        if not found:
            raise UsageError(
                "no etcd endpoint to connect to: configure one, or pass the whole "
                "configuration so the managed local etcd can be used."
            )
    # Here, not at the top: the etcd client (aetcd, gRPC) loads only when one is made.
    from servergroup.coordination.etcd import EtcdCoordinator

    return EtcdCoordinator(
        found,
        prefix=coordination.prefix if prefix is None else prefix,
        config=coordination,
        clock=clock,
    )


__all__ = ["connect"]
