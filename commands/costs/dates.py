"""The date windows the costs feature asks Cost Explorer about, all from one `today`.

Cost Explorer counts in UTC days, and every `TimePeriod` it takes is [Start, End) with End
exclusive and Start < End (GetCostAndUsage and GetCostForecast API reference, `DateInterval`).
A `Window` cannot be built empty or backwards, so no request can carry such a period; the
month's windows are derived here once, so the 1st of a month, its last day and a year's end
need no special case anywhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from bot.errors import UserError

_RANGE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})$")
MAX_PERIOD_DAYS = 366


def utc_day(moment: datetime) -> date:
    """The UTC calendar day of an aware datetime (Cost Explorer's days are UTC days).

    Raises ValueError for a naive datetime: its day would depend on the host's time zone.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a naive datetime has no UTC day; give the clock a time zone")
    return moment.astimezone(UTC).date()


@dataclass(frozen=True)
class Window:
    """[start, end) in days, never empty; `label` says what it is in a reply."""

    label: str
    start: date
    end: date

    def __post_init__(self) -> None:
        if self.start >= self.end:
            raise ValueError(f"empty window {self.label!r}: {self.start} .. {self.end}")

    @property
    def days(self) -> int:
        """Length in days."""
        return (self.end - self.start).days

    @property
    def last_day(self) -> date:
        """The last day inside the window."""
        return self.end - timedelta(days=1)

    @property
    def previous(self) -> Window:
        """The window of the same length right before."""
        return Window("previous", self.start - timedelta(days=self.days), self.start)

    @property
    def with_previous(self) -> Window:
        """This window and the previous one together (one request covers both)."""
        return Window(f"{self.label} and the previous", self.previous.start, self.end)

    def time_period(self) -> dict[str, str]:
        """Cost Explorer's `TimePeriod` ({"Start": "YYYY-MM-DD", "End": …}, End exclusive)."""
        return {"Start": self.start.isoformat(), "End": self.end.isoformat()}


def month_start(day: date) -> date:
    """The 1st of day's month."""
    return day.replace(day=1)


def next_month_start(day: date) -> date:
    """The 1st of the month after day's (January after December)."""
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def trailing(today: date, days: int, label: str) -> Window:
    """The `days` whole days before today: [today - days, today)."""
    return Window(label, today - timedelta(days=days), today)


@dataclass(frozen=True)
class MonthWindows:
    """Everything about today's month that Cost Explorer is asked.

    `to_date` is [1st, today): Cost Explorer's figures for a day are complete only after it
    ends, so on the 1st there is no such window (None) and `previous_month` is what can be
    reported instead. `forecast` is [today, next 1st), which GetCostForecast requires to start
    no earlier than the current day.
    """

    today: date
    month: Window
    to_date: Window | None
    forecast: Window
    previous_month: Window

    @property
    def elapsed(self) -> int:
        """Whole days of the month with figures (0 on the 1st)."""
        return self.to_date.days if self.to_date else 0

    @property
    def days_in_month(self) -> int:
        """28 to 31."""
        return self.month.days


def month_windows(today: date) -> MonthWindows:
    """The windows of today's month; right on the 1st, the last day and across a year's end."""
    first = month_start(today)
    after = next_month_start(today)
    before = month_start(first - timedelta(days=1))
    return MonthWindows(
        today=today,
        month=Window(f"{first:%B %Y}", first, after),
        to_date=Window(f"{first:%B} to date", first, today) if today > first else None,
        forecast=Window(f"rest of {first:%B}", today, after),
        previous_month=Window(f"{before:%B %Y}", before, first),
    )


def run_rate(month_to_date: float, windows: MonthWindows) -> float | None:
    """Projected month total in USD from the whole days so far; None when there are none."""
    if windows.elapsed == 0:
        return None
    return month_to_date / windows.elapsed * windows.days_in_month


def parse_period(text: str | None, today: date) -> Window:
    """`week` (last 7 days), `month` (last 30 days) or `YYYY-MM-DD..YYYY-MM-DD` (end exclusive).

    Raises UserError for anything else, an empty or backwards range, one longer than
    MAX_PERIOD_DAYS, one that ends after today (Cost Explorer has nothing later), or one
    whose previous period (every answer compares with it) is not a date.
    """
    word = (text or "week").lower()
    if word == "week":
        return trailing(today, 7, "last 7 days")
    if word == "month":
        return trailing(today, 30, "last 30 days")
    m = _RANGE.match(word)
    if m is None:
        raise UserError(
            f"`{text}` is not a period; use week, month or YYYY-MM-DD..YYYY-MM-DD (end exclusive)"
        )
    try:
        start, end = date.fromisoformat(m[1]), date.fromisoformat(m[2])
    except ValueError as exc:
        raise UserError(f"`{text}`: {exc}") from None
    if end <= start:
        raise UserError(f"`{text}`: the end must come after the start (the end is exclusive)")
    if (end - start).days > MAX_PERIOD_DAYS:
        raise UserError(f"`{text}`: a period may be at most {MAX_PERIOD_DAYS} days long")
    if end > today + timedelta(days=1):
        raise UserError(
            f"`{text}`: Cost Explorer has no figures after today ({today}); "
            f"the latest end is {today + timedelta(days=1)}"
        )
    if start.toordinal() - (end - start).days < 1:
        # Every answer compares with the period before: it must be a date too.
        raise UserError(f"`{text}`: the period before it would start before year 1")
    return Window(f"{start}..{end}", start, end)
