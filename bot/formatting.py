"""Text for people: sizes, shares, durations, ages, values with units, and fixed-width tables.

One home for how the bot writes numbers, so a chat message, a step summary and the digest say
``1.5 GiB`` and ``4m05s`` the same way. Everything here is pure and returns a string.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any


def human_bytes(n: float | None) -> str:
    """Bytes in binary units with one decimal (``512 B``, ``1.5 KiB``, ``2.0 GiB``); ``?`` for unknown."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def pct(ratio: float | None) -> str:
    """A ratio as a percentage with one decimal; ``n/a`` when there is none."""
    return "n/a" if ratio is None else f"{ratio * 100:.1f}%"


def format_duration(seconds: float) -> str:
    """Short display form: ``850ms``, ``12s``, ``4m05s``, ``2h10m``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def human_duration(seconds: float) -> str:
    """A rough age (``45 s``, ``12 min``, ``3 h``, ``4 d``): precise enough for a 3 a.m. reader."""
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} d"


def ago(timestamp: float) -> str:
    """How long ago a Unix timestamp was, roughly (``12 min ago``)."""
    return f"{human_duration(time.time() - timestamp)} ago"


def format_value(value: float | None, unit: str = "") -> str:
    """A measured value for a phone screen in its unit (``bytes``, ``ratio``, ``percent``, ``seconds``,
    ``per_second``, or none); ``no data`` for a missing or NaN value."""
    if value is None or math.isnan(value):
        return "no data"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if unit == "bytes":
        return human_bytes(value)
    if unit == "ratio":
        return f"{value:.1%}"
    if unit == "percent":
        return f"{value:.1f}%"
    if unit == "seconds":
        return f"{value * 1000:.2f} ms" if abs(value) < 1 else format_duration(value)
    if unit == "per_second":
        return f"{value:,.1f}/s"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width table: the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def join_blocks(*blocks: str) -> str:
    """Text blocks separated by a blank line; empty blocks are left out."""
    return "\n\n".join(b for b in blocks if b)


def unavailable_note(unavailable: Mapping[str, str]) -> str:
    """A summary's tail naming the commands the server refused (empty when none were)."""
    return f" ({', '.join(unavailable)} not allowed)" if unavailable else ""


def unavailable_details(unavailable: Mapping[str, str]) -> str:
    """One ``unavailable: reason`` line per refused command, for a step's details."""
    return "\n".join(f"unavailable: {reason}" for reason in unavailable.values())
