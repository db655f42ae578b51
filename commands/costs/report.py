"""Cost Explorer data to figures and words: totals, changes, movers.

The answers parsed here are GetCostAndUsage's `ResultsByTime` (AWS Cost Explorer API
reference, `ResultByTime`: `TimePeriod`, `Total`, `Groups[].Keys/Metrics`, `Estimated`), with
the one metric the feature asks for, `UnblendedCost`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from typing import Any

from bot.errors import RemoteError
from commands.costs.dates import Window

# The cost basis every figure uses, as GetCostAndUsage names it and as replies name it.
METRIC = "UnblendedCost"
BASIS = "unblended"

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

Daily = dict[date, dict[str, float]]


def service_name(text: str) -> str:
    """An alias (S3, EC2…) or a full Cost Explorer service name."""
    return SERVICE_ALIASES.get(text.lower(), text)


def parse_daily(results: list[dict[str, Any]]) -> Daily:
    """ResultsByTime (DAILY, grouped by one dimension or not) → {day: {key: amount}}.

    Raises RemoteError when an entry lacks the fields the API reference promises.
    """
    out: Daily = defaultdict(dict)
    try:
        for entry in results:
            day = date.fromisoformat(entry["TimePeriod"]["Start"])
            groups = entry.get("Groups") or []
            if not groups:
                out[day]["Total"] = out[day].get("Total", 0.0) + _total(entry)
            for group in groups:
                key = str(group["Keys"][0])
                amount = float(group["Metrics"][METRIC]["Amount"])
                out[day][key] = out[day].get(key, 0.0) + amount
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise RemoteError(f"Cost Explorer answered in an unexpected shape ({exc!r})") from None
    return dict(out)


@dataclass(frozen=True)
class Sum:
    """One total over whole ResultsByTime entries; `estimated` when AWS may still revise it."""

    amount: float
    estimated: bool


def parse_total(results: list[dict[str, Any]]) -> Sum:
    """The ungrouped `Total` of every entry added up (MONTHLY or DAILY).

    Raises RemoteError when an entry's amount is not a number.
    """
    try:
        amount = sum(_total(entry) for entry in results)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RemoteError(f"Cost Explorer answered in an unexpected shape ({exc!r})") from None
    return Sum(amount, any(bool(entry.get("Estimated")) for entry in results))


def parse_monthly(results: list[dict[str, Any]]) -> list[tuple[date, Sum]]:
    """MONTHLY ResultsByTime → [(TimePeriod.Start, that entry's total)], oldest first.

    Raises RemoteError when an entry lacks its start or its amount is not a number.
    """
    out: list[tuple[date, Sum]] = []
    try:
        for entry in results:
            start = date.fromisoformat(entry["TimePeriod"]["Start"])
            out.append((start, Sum(_total(entry), bool(entry.get("Estimated")))))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RemoteError(f"Cost Explorer answered in an unexpected shape ({exc!r})") from None
    return sorted(out, key=lambda pair: pair[0])


def _total(entry: dict[str, Any]) -> float:
    # An entry with no cost at all has an empty Total (or none).
    return float((entry.get("Total") or {}).get(METRIC, {}).get("Amount", 0) or 0)


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

    period: Window
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

    def top(self, n: int, apart: str | None = None) -> list[tuple[str, float, float]]:
        """The n biggest keys now, leaving out `apart` (shown on its own line): (key, now,
        before)."""
        keys = sorted((k for k in self.current if k != apart), key=lambda k: -self.current[k])
        return [(k, self.current[k], self.previous.get(k, 0.0)) for k in keys[:n]]

    def of(self, key: str) -> tuple[float, float] | None:
        """(now, before) of one key, or None when it had no spend in either period."""
        if key not in self.current and key not in self.previous:
            return None
        return self.current.get(key, 0.0), self.previous.get(key, 0.0)

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


def compare(daily: Daily, period: Window) -> Comparison:
    """Split a daily series that covers both periods."""
    prev = period.previous
    return Comparison(
        period, totals(daily, period.start, period.end), totals(daily, prev.start, prev.end)
    )
