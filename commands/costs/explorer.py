"""The Cost Explorer requests the feature makes, each over a `Window` (so never empty).

Request and answer shapes: AWS Cost Explorer API reference, GetCostAndUsage (`TimePeriod`,
`Granularity`, `Metrics`, `GroupBy`, `Filter`, `NextPageToken` → `ResultsByTime`) and
GetCostForecast (`TimePeriod`, `Metric`, `Granularity` → `Total.Amount`).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import date
from typing import Any, Generic, TypeVar

from bot.errors import RemoteError
from commands.costs.aws import AwsClients
from commands.costs.dates import MonthWindows, Window
from commands.costs.grouping import BY_SERVICE, Grouping
from commands.costs.report import METRIC, Daily, Sum, parse_daily, parse_monthly, parse_total

# A page token that never ends would otherwise loop (and bill) forever.
MAX_PAGES = 50

T = TypeVar("T")


@dataclass(frozen=True)
class Got(Generic[T]):
    """A figure, or why there is none (`why_not`, fit for the room)."""

    value: T | None
    why_not: str = ""


async def attempt(work: Awaitable[T]) -> Got[T]:
    """The value, or the RemoteError's message: one figure failing leaves the others."""
    try:
        return Got(await work)
    except RemoteError as exc:
        return Got(None, str(exc))


async def _results(aws: AwsClients, **kwargs: Any) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        resp = await aws.call("ce", "get_cost_and_usage", **kwargs)
        results.extend(resp.get("ResultsByTime") or [])
        token = resp.get("NextPageToken")
        if not token:
            return results
        kwargs["NextPageToken"] = token
    raise RemoteError(
        f"Cost Explorer kept paging after {MAX_PAGES} pages; ask for a shorter period"
    )


async def daily_costs(
    aws: AwsClients, window: Window, group: Grouping = BY_SERVICE, service: str | None = None
) -> Daily:
    """Daily unblended cost in USD over the window, grouped by a dimension or a tag (keys as
    `Grouping.name_of` shows them), optionally of one service. Raises RemoteError."""
    kwargs: dict[str, Any] = {
        "TimePeriod": window.time_period(),
        "Granularity": "DAILY",
        "Metrics": [METRIC],
        "GroupBy": [group.group_by()],
    }
    if service:
        kwargs["Filter"] = {"Dimensions": {"Key": "SERVICE", "Values": [service]}}
    daily = parse_daily(await _results(aws, **kwargs))
    out: Daily = {}
    for day, values in daily.items():
        named: dict[str, float] = {}
        for key, amount in values.items():
            name = group.name_of(key)
            named[name] = named.get(name, 0.0) + amount
        out[day] = named
    return out


async def monthly_costs(aws: AwsClients, window: Window) -> list[tuple[date, Sum]]:
    """Unblended cost in USD of each calendar month the window touches, as (first day of the
    month or of the window, total), oldest first. Raises RemoteError."""
    results = await _results(
        aws, TimePeriod=window.time_period(), Granularity="MONTHLY", Metrics=[METRIC]
    )
    return parse_monthly(results)


async def total_cost(aws: AwsClients, window: Window) -> Sum | None:
    """Unblended cost in USD over the window; None when Cost Explorer has no figures for it
    yet (no entry carries an amount). Raises RemoteError."""
    results = await _results(
        aws, TimePeriod=window.time_period(), Granularity="MONTHLY", Metrics=[METRIC]
    )
    if not any((entry.get("Total") or {}).get(METRIC) for entry in results):
        return None
    return parse_total(results)


async def forecast_cost(aws: AwsClients, window: Window) -> float:
    """Cost Explorer's mean unblended forecast in USD for the window (which must start today
    or later). Raises RemoteError, also for an answer without a number."""
    resp = await aws.call(
        "ce",
        "get_cost_forecast",
        TimePeriod=window.time_period(),
        Metric="UNBLENDED_COST",
        Granularity="MONTHLY",
    )
    try:
        return float(resp["Total"]["Amount"])
    except (KeyError, TypeError, ValueError):
        raise RemoteError("Cost Explorer's forecast came without an amount") from None


@dataclass(frozen=True)
class MonthFigures:
    """What is known about this month, each figure with its reason when missing.

    `to_date` is None on the 1st (nothing asked) and when Cost Explorer has no figures yet;
    `previous_month` is asked only then, to have a finished month to report instead.
    """

    windows: MonthWindows
    to_date: Got[Sum | None]
    previous_month: Got[Sum | None] | None
    forecast_rest: Got[float]

    @property
    def month_to_date(self) -> Sum | None:
        """This month's spend so far, when Cost Explorer has any."""
        return self.to_date.value


async def month_figures(aws: AwsClients, windows: MonthWindows) -> MonthFigures:
    """Month to date, the month just ended when this one has no figures yet, and the forecast
    for the rest of the month; none of them failing stops the others."""
    if windows.to_date is None:
        to_date: Got[Sum | None] = Got(None)
    else:
        to_date = await attempt(total_cost(aws, windows.to_date))
    previous = None
    if to_date.value is None and not to_date.why_not:
        previous = await attempt(total_cost(aws, windows.previous_month))
    forecast = await attempt(forecast_cost(aws, windows.forecast))
    return MonthFigures(windows, to_date, previous, forecast)
