"""What a backup check finds: one result per thing it watches (a dataset, a zrepl job, a file).

A check over several datasets or jobs gives each its own result, so one fault never hides
another: `tank` nine days stale and `tank/media` without snapshots are two results, each with
its own state, its own line in `backups` and its own announcement when it changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from bot.messages import human_duration

State = Literal["OK", "STALE", "ERROR"]
RANK: dict[State, int] = {"OK": 0, "STALE": 1, "ERROR": 2}


@dataclass
class CheckResult:
    """The outcome of one check for one item (or for the whole check, when `item` is None).

    `newest` is the time of the newest backup (UTC) when known; `facts` is JSON-able detail
    stored with the result.
    """

    name: str
    state: State
    detail: str
    newest: datetime | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    item: str | None = None

    @property
    def key(self) -> str:
        """The name its state is stored and announced under: `check` or `check:item`.

        Check names cannot hold ':' (see BackupCheck.name), so the key is unambiguous.
        """
        return self.name if self.item is None else f"{self.name}:{self.item}"

    @property
    def label(self) -> str:
        """How the room sees it named: `check` or `check (item)`."""
        return self.name if self.item is None else f"{self.name} ({self.item})"

    def age(self, now: datetime) -> float | None:
        """Seconds from the newest backup to `now`, if known."""
        if self.newest is None:
            return None
        return max(0.0, (now - self.newest).total_seconds())


@dataclass(frozen=True)
class Verdicts:
    """Turns one check's findings into results, judged against its max age at `now`."""

    check: str
    max_age: timedelta
    max_age_text: str
    now: datetime

    def result(
        self,
        state: State,
        detail: str,
        item: str | None = None,
        newest: datetime | None = None,
        facts: dict[str, Any] | None = None,
    ) -> CheckResult:
        """A result of this check."""
        return CheckResult(self.check, state, detail, newest, facts or {}, item)

    def by_age(
        self,
        newest: datetime | None,
        what: str,
        item: str | None = None,
        facts: dict[str, Any] | None = None,
    ) -> CheckResult:
        """OK while `newest` is within max age, STALE when older or unknown ("no … found")."""
        if newest is None:
            return self.result("STALE", f"no {what} found", item, None, facts)
        age = max(0.0, (self.now - newest).total_seconds())
        if age > self.max_age.total_seconds():
            detail = (
                f"newest {what} is {human_duration(age)} old "
                f"(from {stamp(newest)}; limit {self.max_age_text})"
            )
            return self.result("STALE", detail, item, newest, facts)
        return self.result("OK", f"newest {what} {human_duration(age)} old", item, newest, facts)

    def since(
        self,
        last: datetime | None,
        what: str,
        item: str | None = None,
        facts: dict[str, Any] | None = None,
    ) -> CheckResult:
        """The same verdict told as an event: "no {what} for 26 h (last … UTC; limit 1h)".

        For sources that report when something last happened (a metric, a heartbeat).
        """
        if last is None:
            return self.result("STALE", f"no {what} reported yet", item, None, facts)
        age = max(0.0, (self.now - last).total_seconds())
        if age > self.max_age.total_seconds():
            detail = (
                f"no {what} for {human_duration(age)} "
                f"(last {stamp(last)}; limit {self.max_age_text})"
            )
            return self.result("STALE", detail, item, last, facts)
        detail = f"last {what} {human_duration(age)} ago ({stamp(last)})"
        return self.result("OK", detail, item, last, facts)


def stamp(moment: datetime) -> str:
    """'2026-01-14 03:30 UTC'."""
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
