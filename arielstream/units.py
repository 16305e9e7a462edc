"""Byte sizes as users write them (``2GB``, ``512MiB``) and as the logs print them."""

from __future__ import annotations

import re

from .errors import ConfigError

# Not astropy.units (u.Quantity("2 GB").to_value(u.byte)): it reads "2K" as kelvin and "2G" as gauss, "2Gb"
# as gigabits, and refuses "300M", "2gb" and a plain "4096"; its errors name no memory size; and importing it
# adds ~0.3 s to every run's start.
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str | int) -> int:
    """``"2GB"`` → 2_000_000_000; ``"512MiB"``, ``"300M"`` and plain integers too."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        if not m or m.group(2).upper() not in _UNITS:
            raise ConfigError(f"not a memory size: {text!r} (use e.g. 2GB, 512MB, 1.5GiB)")
        value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise ConfigError(f"memory size must be positive: {text!r}")
    return value


def format_bytes(n: float) -> str:
    """``1_234_567`` → ``"1.23 MB"`` (decimal units, as :func:`parse_bytes` reads ``MB``)."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"
