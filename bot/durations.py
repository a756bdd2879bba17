"""Human durations in config and playbooks: ``30s``, ``5m``, ``1h30m``, ``250ms`` or plain seconds."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

from bot.formatting import format_duration

__all__ = ["Duration", "format_duration", "parse_duration"]
# format_duration lives in bot.formatting; it is re-exported here for importers not yet moved there.

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from a number or a duration string; raises ValueError with the accepted forms."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m or 1h, not a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos, seconds = 0, 0.0
        for m in _PART.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            try:
                seconds = float(text)
            except ValueError:
                raise ValueError(f"invalid duration {value!r}: use e.g. 500ms, 30s, 5m, 1h30m") from None
    else:
        raise ValueError(f"expected a duration like 30s, 5m or 1h, got {type(value).__name__}")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A positive number of seconds, written as a number or a string such as ``5m``."""
