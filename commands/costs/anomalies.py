"""Unusual spend: a key's cost on the last complete day against its trailing median.

`find_anomalies` is the rule (pure, tested on a table of cases); `anomaly_message` the words.
A day's spend is anomalous when it exceeds the median of the `days` days before it by more
than `min_share` of that median AND by at least `min_amount` USD: the share alone would flag
$0.10 → $0.40, the amount alone a key that is large anyway. Days without an entry count as $0
(Cost Explorer leaves out a group with no cost that day).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator

from bot.config import Section
from bot.mentions import Mentions
from bot.messages import escape
from commands.costs import checks
from commands.costs.grouping import Grouping, parse_grouping
from commands.costs.report import Daily, money


class AnomalyConfig(Section):
    """The daily check for unusual spend (see `commands.costs.anomalies`)."""

    cron: Annotated[str, AfterValidator(checks.cron)] = "0 10 * * *"
    # What is compared: service, usage-type or tag:KEY.
    by: str = "service"
    days: int = Field(default=14, ge=3, le=60)
    # A day is unusual when it exceeds the median by more than this share of it AND by at
    # least min_amount USD.
    min_share: float = Field(default=0.5, gt=0)
    min_amount: float = Field(default=20, ge=0)
    mentions: list[Annotated[str, AfterValidator(checks.user_id)]] = Field(default_factory=list)
    room: str | None = None

    @field_validator("by")
    @classmethod
    def _known_grouping(cls, by: str) -> str:
        parse_grouping(by)
        return by

    @property
    def grouping(self) -> Grouping:
        """`by` parsed."""
        return parse_grouping(self.by)


@dataclass(frozen=True)
class Anomaly:
    """`key` cost `amount` USD on `day`, against a median of `usual` USD/day before it."""

    key: str
    day: date
    amount: float
    usual: float

    @property
    def ratio(self) -> float | None:
        """amount / usual; None when the usual spend is $0 (the key is new)."""
        return self.amount / self.usual if self.usual > 0.005 else None


def find_anomalies(
    daily: Daily, day: date, days: int, min_share: float, min_amount: float
) -> list[Anomaly]:
    """The keys whose spend on `day` jumped (see the module docstring), biggest jump first.

    `daily` must cover `day` and the `days` days before it.
    """
    history = [day - timedelta(days=i) for i in range(days, 0, -1)]
    found: list[Anomaly] = []
    for key, amount in daily.get(day, {}).items():
        usual = statistics.median(daily.get(d, {}).get(key, 0.0) for d in history)
        if amount - usual >= min_amount and amount > usual * (1 + min_share):
            found.append(Anomaly(key, day, amount, usual))
    return sorted(found, key=lambda a: -(a.amount - a.usual))


def _one_decimal(x: float) -> str:
    # Half up, as people round: $61 against $20 is 3.1x (a float 3.05 would print 3.0).
    return str(Decimal(repr(x)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def describe(a: Anomaly, today: date, days: int) -> str:
    """'Amazon S3 $61.00 yesterday (2025-11-24), 3.1x its usual $20.00 (median of the 14
    days before)' (with a multiplication sign)."""
    when = "yesterday" if a.day == today - timedelta(days=1) else "on"
    ratio = f"{_one_decimal(a.ratio)}× its usual" if a.ratio is not None else "new: its usual is"
    return (
        f"{a.key} {money(a.amount)} {when} ({a.day}), {ratio} {money(a.usual)} "
        f"(median of the {days} days before)"
    )


def anomaly_message(
    found: list[Anomaly], label: str, today: date, days: int, pings: Mentions
) -> tuple[str, str]:
    """Text and HTML of one post naming every new anomaly, the mentions first."""
    head = f"⚠️ AWS spend anomaly by {label}"
    lines = [describe(a, today, days) for a in found]
    text = f"{pings.text()} {head}: " + "; ".join(lines)
    html = f"{pings.html()} <b>{escape(head)}</b><br>" + "<br>".join(escape(x) for x in lines)
    return text.lstrip(), html.lstrip()
