"""Shared helpers with no knowledge of any capability: one way to do each common thing.

- `errors`: the exception tree; `clock`: injected time; `logsetup`: logging, once.
- `units`: rates and sizes as people write them (`1gbit`, `64MiB`); pure.
- `backoff`: the one retry policy (initial, factor, cap, jitter, deadline on a clock).
- `process`: which process is which (PID + start time), stopping one or a set safely.
- `runner`: running a program with a timeout in its own process group.

Import from the modules (`servergroup.common.errors`, `.clock`, ...): this
package re-exports nothing, so a guest agent that needs only the errors does
not load the clock's asyncio, nor psutil, at start.
"""
