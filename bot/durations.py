"""Human durations as people type them in config and chat: 30m, 2h, 1h30m, 3d, 1w.

Parsed once, when the config is loaded or a command's arguments are bound: code works with
`timedelta` and writes it back for people with `format_duration`.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_UNITS = (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def parse_duration(text: str) -> timedelta:
    """`2h`, `1h30m`, `3d`, `1w`, `45s` → timedelta; ValueError for anything else."""
    m = _DURATION.match(str(text).strip().lower())
    if not str(text).strip() or m is None or not any(m.groups()):
        raise ValueError(f"{text!r} is not a duration; write e.g. 30m, 2h, 1h30m, 3d or 1w")
    w, d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    return timedelta(weeks=w, days=d, hours=h, minutes=mi, seconds=s)


def format_duration(delta: timedelta) -> str:
    """timedelta → the way it is written in config: 1h30m, 3d, 2w (whole seconds)."""
    left = int(delta.total_seconds())
    if left <= 0:
        return "0s"
    parts = []
    for unit, size in _UNITS:
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _coerce(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError(f"{value!r} is not a duration; write e.g. 30m, 2h, 1h30m, 3d or 1w")


# A config field holding a duration, written "30m" in YAML and a timedelta once loaded.
Duration = Annotated[
    timedelta, BeforeValidator(_coerce), PlainSerializer(format_duration, return_type=str)
]
