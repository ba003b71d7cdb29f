"""Rates and sizes as people write them (`1gbit`, `100mbit`, `64MiB`, `9000`): one parser each.

Theory of operation
-------------------
Every option or setting that takes a link rate or an amount of memory goes
through `parse_rate` or `parse_size`, so `servergroup lab up --rate`,
`servergroup image send --rate` and `servergroup server create --memory`
accept the same spellings and refuse the same mistakes with the same kind of
sentence (a `UsageError` naming the option's `what`).

- A **rate** is bits per second. Units are decimal (`k`, `m`, `g`, `t`,
  optionally followed by `bit`), or binary (`kibit` ... `tibit`); a bare
  number is bits per second; `/s` may follow. `bps` is refused with a hint:
  tc reads it as *bytes* per second, and guessing either way would be wrong
  for someone.
- A **size** is bytes. `k`, `m`, `g`, `t` (alone, or with `iB`) are binary,
  as QEMU, dd and the kernel read them; `kB`, `MB`, `GB`, `TB` are decimal;
  `b` is bytes. A bare number is in the caller's `default_unit` (bytes
  unless said otherwise: `--memory 256` means MiB).

Arithmetic is exact (`Decimal`), rounded down to a whole bit or byte, so
`1.5mbit` is exactly 1 500 000 and `format_rate` output parses back to the
same number. Range checks that depend on the use (a multicast rate below
1 Mbit/s, a lab link above 10 Tbit/s) belong to the caller; this module
only refuses what is not a rate or size at all, and negative amounts. The
module is pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from servergroup.common.errors import UsageError

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40

_RATE_TEXT = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)(?:/s)?")
_SIZE_TEXT = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")

_RATE_UNITS = {
    "": 1,
    "bit": 1,
    "k": 10**3,
    "kbit": 10**3,
    "m": 10**6,
    "mbit": 10**6,
    "g": 10**9,
    "gbit": 10**9,
    "t": 10**12,
    "tbit": 10**12,
    "kibit": KIB,
    "mibit": MIB,
    "gibit": GIB,
    "tibit": TIB,
}

_SIZE_UNITS = {
    "b": 1,
    "k": KIB,
    "kib": KIB,
    "kb": 10**3,
    "m": MIB,
    "mib": MIB,
    "mb": 10**6,
    "g": GIB,
    "gib": GIB,
    "gb": 10**9,
    "t": TIB,
    "tib": TIB,
    "tb": 10**12,
}


def _amount(
    value: object, what: str, pattern: re.Pattern[str], units: dict[str, int], hint: str
) -> tuple[Decimal, int]:
    """The number and the unit's scale of `value`, or a UsageError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UsageError(f"{what} {value!r} is not a {hint}.")
    if isinstance(value, int):
        if value < 0:
            raise UsageError(f"{what} {value!r} is negative.")
        return Decimal(value), 1
    text = value.strip().lower()
    if text.startswith("-"):
        raise UsageError(f"{what} {value!r} is negative.")
    match = pattern.fullmatch(text)
    if match is None or match[2] not in units:
        raise UsageError(f"{what} {value!r} is not a {hint}.")
    try:
        number = Decimal(match[1])
    except InvalidOperation:
        raise UsageError(f"{what} {value!r} is not a {hint}.") from None
    return number, units[match[2]]


def parse_rate(value: str | int, *, what: str = "rate") -> int:
    """Bits per second from `1gbit`, `100mbit`, `800m`, `1.5g`, `64kibit`, `1000000` or an int.

    Raises `UsageError` (one sentence naming `what`) for anything else,
    negative rates included.
    """
    text = value.strip().lower() if isinstance(value, str) else ""
    if "bps" in text or "byte" in text or text.endswith("b/s"):
        raise UsageError(
            f"{what} {value!r} is not a rate (tc's 'bps' means bytes; use bit units): "
            "give bits per second such as 1gbit, 100mbit, 512kbit or 1000000."
        )
    hint = "rate: give bits per second such as 1gbit, 100mbit, 512kbit or 1000000"
    number, scale = _amount(value, what, _RATE_TEXT, _RATE_UNITS, hint)
    return int(number * scale)


def format_rate(bits: int) -> str:
    """`1gbit`, `100mbit`, `1500kbit` or `12344bit`: the largest unit that is exact."""
    for unit, scale in (("tbit", 10**12), ("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits >= scale and bits % scale == 0:
            return f"{bits // scale}{unit}"
    return f"{bits}bit"


def parse_size(value: str | int, *, what: str = "size", default_unit: int = 1) -> int:
    """Bytes from `64MiB`, `1g`, `512k`, `1.5GB`, `9000` or an int.

    A number without a unit (an int, or text such as `256`) counts in
    `default_unit` bytes. Raises `UsageError` (one sentence naming `what`)
    for anything else, negative sizes included.
    """
    units = {**_SIZE_UNITS, "": default_unit}
    hint = "size: give bytes such as 64MiB, 1GiB or 9000"
    number, scale = _amount(value, what, _SIZE_TEXT, units, hint)
    if isinstance(value, int):
        scale = default_unit
    return int(number * scale)


def format_size(size: int) -> str:
    """`64MiB`, `1GiB`, `1500B`: the largest binary unit that is exact."""
    for unit, scale in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


__all__ = [
    "GIB",
    "KIB",
    "MIB",
    "TIB",
    "format_rate",
    "format_size",
    "parse_rate",
    "parse_size",
]
