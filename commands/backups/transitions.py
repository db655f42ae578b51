"""When the room hears about a backup result: on a change, and as a reminder while it stays bad.

A pure function of the stored state, the new state, the time and `remind_every`; the caller
stores what it returns and posts the announcement.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from commands.backups.db import StateRow
from commands.backups.result import State

Announce = Literal["now", "recovered", "still"]


@dataclass(frozen=True)
class Step:
    """What to say (None: nothing), the state to store (None: leave it) and since when."""

    announce: Announce | None
    save: StateRow | None
    since: datetime


def transition(
    prev: StateRow | None, key: str, state: State, now: datetime, remind_every: timedelta
) -> Step:
    """The step for a result key's new `state` at `now`.

    First sight: announced unless OK. A change: announced ("recovered" when back to OK).
    Unchanged and bad: "still", once `remind_every` has passed since it was last said.
    """
    if prev is None:
        said = now if state != "OK" else None
        return Step("now" if said else None, StateRow(key, state, now, said), now)
    if prev.state != state:
        how: Announce = "recovered" if state == "OK" else "now"
        return Step(how, StateRow(key, state, now, now), now)
    last_said = prev.announced_at or prev.since
    if state != "OK" and now - last_said >= remind_every:
        return Step("still", StateRow(key, state, prev.since, now), prev.since)
    return Step(None, None, prev.since)
