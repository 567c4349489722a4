"""Sizes as the command line and the logs print them: decimal SI units (1 kB = 1000 bytes, 1 GB = 10^9 bytes),
the units disk makers, download pages and the README use."""

from __future__ import annotations

_UNITS = ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "kB"))


def format_bytes(size: int) -> str:
    """``size`` bytes, e.g. ``2683273819`` -> ``"2.68 GB"``, ``1536`` -> ``"1.54 kB"``, ``12`` -> ``"12 bytes"``:
    three significant figures (more for sizes of 1000 TB or more)."""
    for scale, unit in _UNITS:
        if abs(size) >= scale:
            value = size / scale
            digits = len(str(int(abs(value))))  # before the point: 1 to 3 (more in TB)
            return f"{value:.{max(0, 3 - digits)}f} {unit}"
    return f"{size} byte" + ("" if size == 1 else "s")
