"""Human durations as people type them in config and chat: 30m, 2h, 1h30m, 3d, 1w."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import AfterValidator

_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> timedelta:
    """`2h`, `1h30m`, `3d`, `1w`, `45s` → timedelta; ValueError for anything else."""
    m = _DURATION.match(str(text).strip().lower())
    if not str(text).strip() or m is None or not any(m.groups()):
        raise ValueError(f"{text!r} is not a duration; write e.g. 30m, 2h, 1h30m, 3d or 1w")
    w, d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    return timedelta(weeks=w, days=d, hours=h, minutes=mi, seconds=s)


def _valid(text: str) -> str:
    parse_duration(text)
    return text


# A config field holding a duration as written ("30m"), checked when the config is loaded.
Duration = Annotated[str, AfterValidator(_valid)]
