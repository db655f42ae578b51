"""Claim a key atomically or learn who holds it: check-then-act without a gap between them.

asyncio runs one task step at a time, so a check and a claim with no `await` between them
cannot interleave with another task's: of two requests from one sync batch (or one event-loop
turn) exactly one wins, and the other is told who holds the key since when. Features use it
for anything guarded by a check: a job run by hand, a host's deploy, a confirmation, a
silence created from a reaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bot.errors import UserError
from bot.messages import human_duration


@dataclass(frozen=True)
class Claim:
    """Who holds a key: `holder` (e.g. a Matrix user id) since `since` (unix seconds)."""

    key: str
    holder: str
    since: float
    what: str  # what the key guards, for the loser's answer, e.g. "job backups"


class Busy(UserError):
    """The key is held by someone else; `claim` says by whom. The message is fit for the room."""

    def __init__(self, claim: Claim, now: float | None = None) -> None:
        ago = human_duration(max(0.0, (now or time.time()) - claim.since))
        super().__init__(
            f"{claim.what[:1].upper()}{claim.what[1:]} is already running: "
            f"started by {claim.holder} {ago} ago."
        )
        self.claim = claim


class Claims:
    """The bot's held keys, in memory (a restart ends every holder's work with it).

    `clock` gives unix seconds (tests may pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._held: dict[str, Claim] = {}

    def holder(self, key: str) -> Claim | None:
        """The current claim on `key`, or None."""
        return self._held.get(key)

    def try_claim(self, key: str, holder: str, what: str) -> Claim | None:
        """Claim `key` for `holder`: None when it was free (now claimed), else the claim
        that holds it. Never awaits, so it is atomic within the event loop."""
        held = self._held.get(key)
        if held is not None:
            return held
        self._held[key] = Claim(key, holder, self.clock(), what)
        return None

    def release(self, key: str) -> None:
        """Free `key` (nothing happens if it is free)."""
        self._held.pop(key, None)

    @contextmanager
    def hold(self, key: str, holder: str, what: str) -> Iterator[Claim]:
        """Hold `key` for the `with` block; raises Busy (a UserError) if someone holds it."""
        held = self.try_claim(key, holder, what)
        if held is not None:
            raise Busy(held, self.clock())
        try:
            yield self._held[key]
        finally:
            self.release(key)
