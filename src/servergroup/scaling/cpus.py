"""CPU lists as Linux and the original write them, pure.

Theory of operation: Linux reports a set of CPUs as a *CPU list*
(`/sys/devices/system/cpu/online`: "0-2,5"; an empty file means none), and
the original's metadata wrote a set of CPUs as a Python 2 repr
(`offline_cpuset`: "set([1, 2])", or "set([])"). `parse_cpu_list` and
`parse_cpuset_repr` turn text into a sorted tuple of distinct CPU numbers
or raise `CpuListError` with one sentence; `format_cpu_list` is the inverse
of the first (`parse_cpu_list(format_cpu_list(c)) == tuple(sorted(set(c)))`).

Departure from the original: its parser reused an array it never zeroed
(spec section 6), so a shorter list after a longer one kept stale CPUs.
Here every call starts from nothing, and anything that is not a CPU list
(a stray character, a range that goes down, a number past `MAX_CPU`) is an
error, never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from servergroup.common.errors import RemoteError

#: The highest CPU number accepted (Linux's NR_CPUS is at most 8192).
MAX_CPU: Final = 8191

_NUMBER = re.compile(r"(0|[1-9][0-9]*)")
_CPUSET_REPR = re.compile(r"set\(\[(?P<items>[^\]]*)\]\)")


class CpuListError(RemoteError):
    """Text that is not a CPU list (one sentence saying what is wrong)."""


def _cpu(text: str, whole: str) -> int:
    if _NUMBER.fullmatch(text) is None:
        raise CpuListError(f"{whole!r} is not a CPU list: {text!r} is not a CPU number.")
    cpu = int(text)
    if cpu > MAX_CPU:
        raise CpuListError(f"{whole!r} is not a CPU list: CPU {cpu} is over {MAX_CPU}.")
    return cpu


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """The CPUs of a Linux CPU list ("0-2,5"; "" or a lone newline: none), ascending."""
    whole = text
    text = text.strip()
    if not text:
        return ()
    cpus: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.partition("-")
        first = _cpu(low, whole)
        last = _cpu(high, whole) if dash else first
        if last < first:
            raise CpuListError(f"{whole!r} is not a CPU list: the range {part!r} goes down.")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def format_cpu_list(cpus: Iterable[int]) -> str:
    """The Linux CPU list of `cpus` ("0-2,5"; "" for none): runs of 2 or more as ranges."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def parse_cpuset_repr(text: str) -> tuple[int, ...]:
    """The CPUs of the original metadata's `offline_cpuset` ("set([1, 2])"), ascending.

    Also takes a CPU list or a JSON-style list ("[1, 2]"), which later
    deployments wrote.
    """
    whole = text
    text = text.strip()
    match = _CPUSET_REPR.fullmatch(text)
    if match is not None:
        items = match["items"]
    elif text.startswith("[") and text.endswith("]"):
        items = text[1:-1]
    else:
        return parse_cpu_list(text)
    if not items.strip():
        return ()
    cpus: set[int] = set()
    for item in items.split(","):
        if not item.strip():
            raise CpuListError(f"{whole!r} is not a set of CPUs: an item is empty.")
        cpus.add(_cpu(item.strip(), whole))
    return tuple(sorted(cpus))


__all__ = ["MAX_CPU", "CpuListError", "format_cpu_list", "parse_cpu_list", "parse_cpuset_repr"]
