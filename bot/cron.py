"""Cron expressions in UTC, through croniter (5 fields, or 6 with seconds first)."""

from __future__ import annotations

from datetime import UTC, datetime

from croniter import croniter


class CronError(ValueError):
    """A cron expression that croniter does not accept."""


class CronSchedule:
    """A parsed cron expression; all times are timezone-aware UTC."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        fields = expr.split()
        if len(fields) not in (5, 6):
            raise CronError(f"{expr!r}: expected 5 fields (or 6 with seconds first)")
        self._seconds_first = len(fields) == 6
        if not croniter.is_valid(expr, second_at_beginning=self._seconds_first):
            raise CronError(f"{expr!r} is not a valid cron expression")

    def next_after(self, moment: datetime) -> datetime:
        """The first scheduled time strictly after `moment`."""
        it = croniter(self.expr, moment.astimezone(UTC), second_at_beginning=self._seconds_first)
        result: datetime = it.get_next(datetime)
        return result.astimezone(UTC)

    def prev_before(self, moment: datetime) -> datetime:
        """The last scheduled time strictly before `moment`."""
        it = croniter(self.expr, moment.astimezone(UTC), second_at_beginning=self._seconds_first)
        result: datetime = it.get_prev(datetime)
        return result.astimezone(UTC)
