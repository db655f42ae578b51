"""Cost Explorer data to figures and words: periods, totals, changes, movers, run rate."""

from __future__ import annotations

import calendar
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from bot.errors import UserError

# What people type → Cost Explorer's SERVICE dimension values.
SERVICE_ALIASES = {
    "s3": "Amazon Simple Storage Service",
    "ec2": "Amazon Elastic Compute Cloud - Compute",
    "ec2-other": "EC2 - Other",
    "ebs": "EC2 - Other",
    "rds": "Amazon Relational Database Service",
    "cloudfront": "Amazon CloudFront",
    "lambda": "AWS Lambda",
    "dynamodb": "Amazon DynamoDB",
    "route53": "Amazon Route 53",
    "cloudwatch": "AmazonCloudWatch",
    "vpc": "Amazon Virtual Private Cloud",
}
_RANGE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})$")

Daily = dict[date, dict[str, float]]


@dataclass(frozen=True)
class Period:
    """[start, end) in days, and the same-length period just before it."""

    label: str
    start: date
    end: date

    @property
    def days(self) -> int:
        """Length in days."""
        return (self.end - self.start).days

    @property
    def previous(self) -> Period:
        """The period of the same length right before."""
        return Period("previous", self.start - timedelta(days=self.days), self.start)


def parse_period(text: str | None, today: date) -> Period:
    """`week` (last 7 days), `month` (last 30 days) or `YYYY-MM-DD..YYYY-MM-DD` (end exclusive)."""
    word = (text or "week").lower()
    if word == "week":
        return Period("last 7 days", today - timedelta(days=7), today)
    if word == "month":
        return Period("last 30 days", today - timedelta(days=30), today)
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
        raise UserError("the period's end must come after its start")
    if (end - start).days > 366:
        raise UserError("a period may be at most a year long")
    if end > today + timedelta(days=1):
        raise UserError("Cost Explorer has no figures for the future")
    return Period(f"{start}..{end}", start, end)


def service_name(text: str) -> str:
    """An alias (S3, EC2…) or a full Cost Explorer service name."""
    return SERVICE_ALIASES.get(text.lower(), text)


def parse_daily(results: list[dict[str, Any]]) -> Daily:
    """ResultsByTime (DAILY, grouped by one dimension) → {day: {key: amount}}."""
    out: Daily = defaultdict(dict)
    for entry in results:
        day = date.fromisoformat(entry["TimePeriod"]["Start"])
        groups = entry.get("Groups") or []
        if not groups:
            amount = float(entry.get("Total", {}).get("UnblendedCost", {}).get("Amount", 0) or 0)
            out[day]["Total"] = out[day].get("Total", 0.0) + amount
        for group in groups:
            key = group["Keys"][0]
            amount = float(group["Metrics"]["UnblendedCost"]["Amount"])
            out[day][key] = out[day].get(key, 0.0) + amount
    return dict(out)


def totals(daily: Daily, start: date, end: date) -> dict[str, float]:
    """Sum per key over [start, end)."""
    out: dict[str, float] = defaultdict(float)
    for day, values in daily.items():
        if start <= day < end:
            for key, amount in values.items():
                out[key] += amount
    return dict(out)


def money(amount: float) -> str:
    """$1,234.56"""
    sign = "-" if amount < 0 else ""
    return f"{sign}${abs(amount):,.2f}"


def change(now: float, before: float) -> str:
    """'▲ $12.00 (+5.0 %)' / '▼ …' / '±0'."""
    delta = now - before
    if abs(delta) < 0.005:
        return "±$0.00"
    arrow = "▲" if delta > 0 else "▼"
    pct = f" ({delta / before * 100:+.1f} %)" if before > 0.005 else " (new)"
    return f"{arrow} {money(abs(delta))}{pct}"


@dataclass(frozen=True)
class Comparison:
    """A period's spend by key against the previous period."""

    period: Period
    current: dict[str, float]
    previous: dict[str, float]

    @property
    def total(self) -> float:
        """Spend in the period."""
        return sum(self.current.values())

    @property
    def previous_total(self) -> float:
        """Spend in the previous period."""
        return sum(self.previous.values())

    def top(self, n: int) -> list[tuple[str, float, float]]:
        """The n biggest keys now: (key, now, before)."""
        keys = sorted(self.current, key=lambda k: -self.current[k])[:n]
        return [(k, self.current[k], self.previous.get(k, 0.0)) for k in keys]

    def movers(self, n: int) -> list[tuple[str, float, float]]:
        """The n keys whose spend changed most in dollars."""
        keys = set(self.current) | set(self.previous)
        ranked = sorted(
            keys, key=lambda k: -abs(self.current.get(k, 0.0) - self.previous.get(k, 0.0))
        )
        return [
            (k, self.current.get(k, 0.0), self.previous.get(k, 0.0))
            for k in ranked[:n]
            if abs(self.current.get(k, 0.0) - self.previous.get(k, 0.0)) >= 0.01
        ]


def compare(daily: Daily, period: Period) -> Comparison:
    """Split a daily series that covers both periods."""
    prev = period.previous
    return Comparison(
        period, totals(daily, period.start, period.end), totals(daily, prev.start, prev.end)
    )


def run_rate(month_to_date: float, today: date) -> tuple[float, int, int]:
    """(projected month total, days elapsed, days in month) from spend so far."""
    days_in_month = calendar.monthrange(today.year, today.month)[1]
    elapsed = max(1, today.day - 1)  # Cost Explorer's figures stop at yesterday
    return month_to_date / elapsed * days_in_month, elapsed, days_in_month
