"""The savings tracker over time: each month since the baseline was set, against it.

The months come from one MONTHLY GetCostAndUsage over [1st of the baseline's month, today)
(`savings_window`); the month in progress, when it has whole days, is shown by its run rate.
"""

from __future__ import annotations

from datetime import date

from commands.costs.chart import MonthPoint
from commands.costs.dates import MonthWindows, Window, month_start, run_rate
from commands.costs.report import Sum, money


def savings_window(since: date, today: date) -> Window | None:
    """[1st of since's month, today); None when that holds no whole day yet."""
    first = month_start(since)
    if first >= today:
        return None
    return Window(f"since {first:%B %Y}", first, today)


def month_points(months: list[tuple[date, Sum]], windows: MonthWindows) -> list[MonthPoint]:
    """Whole months as they are; this month (its entry starts on its 1st) by its run rate."""
    points: list[MonthPoint] = []
    for start, total in months:
        if month_start(start) == windows.month.start:
            rate = run_rate(total.amount, windows)
            if rate is not None and total.amount > 0:
                points.append(MonthPoint(month_start(start), rate, partial=True))
        else:
            points.append(MonthPoint(month_start(start), total.amount))
    return points


def savings_line(points: list[MonthPoint], baseline: float, since: date) -> str:
    """'savings since June 2025: $1,234.00 below baseline $2,500.00/month over 5 whole
    month(s) (chart below)', or why there is nothing to tell yet."""
    whole = [p for p in points if not p.partial]
    if not whole:
        return (
            f"savings since {since:%B %Y}: no whole month yet against baseline "
            f"{money(baseline)}/month"
        )
    saved = sum(baseline - p.amount for p in whole)
    word = "below" if saved >= 0 else "above"
    return (
        f"savings since {since:%B %Y}: {money(abs(saved))} {word} baseline "
        f"{money(baseline)}/month over {len(whole)} whole month(s) (chart below)"
    )
