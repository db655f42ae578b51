"""The costs feature's scheduled work beyond the week's table: the daily anomaly check, the
weekly line of top costs by tag, and the savings tracker over the months since the baseline.

Each asks Cost Explorer over a `Window` (never empty, End exclusive) derived from the
runtime's clock by the caller, and none of the weekly parts failing stops the summary: they
return a line that says why instead.
"""

from __future__ import annotations

from datetime import date, timedelta

from bot import messages
from bot.context import Runtime
from bot.mentions import Mentions
from commands.costs import db
from commands.costs.anomalies import AnomalyConfig, anomaly_message, find_anomalies
from commands.costs.aws import AwsClients
from commands.costs.chart import MonthPoint
from commands.costs.dates import MonthWindows, Window, trailing, utc_day
from commands.costs.explorer import attempt, daily_costs, monthly_costs
from commands.costs.grouping import parse_grouping
from commands.costs.render import top_line
from commands.costs.report import compare
from commands.costs.savings import month_points, savings_line, savings_window


async def check_anomalies(rt: Runtime, aws: AwsClients, check: AnomalyConfig, room: str) -> str:
    """Compare the last complete UTC day with the `check.days` before it and post the new
    anomalies in one message to `room`, mentioning `check.mentions`. The rows and the post
    are committed together, so a crash or a second run never posts one twice nor drops it.
    Returns what the job did, for `!jobs`. Raises RemoteError when Cost Explorer fails."""
    group = check.grouping
    now = rt.clock.now()
    day = utc_day(now)
    yesterday = day - timedelta(days=1)
    daily = await daily_costs(aws, trailing(day, check.days + 1, "anomaly check"), group)
    found = find_anomalies(daily, yesterday, check.days, check.min_share, check.min_amount)
    async with rt.store.transaction():
        new = [
            a
            for a in found
            if await db.record(
                rt.store, db.AnomalyRow(group.label, a.key, a.day, a.amount, a.usual), now
            )
        ]
        if new:
            pings = Mentions(list(check.mentions))
            text, html = anomaly_message(new, group.label, day, check.days, pings)
            content = messages.notice(text, html)
            content["m.mentions"] = pings.content()
            await rt.outbox.post(room, content)
    known = len(found) - len(new)
    return f"{len(new)} new anomal{'y' if len(new) == 1 else 'ies'} on {yesterday}" + (
        f", {known} already told" if known else ""
    )


async def top_by_tag(aws: AwsClients, tag: str, week: Window, top: int) -> str:
    """'top by tag Name, last 7 days: …' with each value's change against the week before
    and the untagged spend last; or why it is unavailable."""
    by_tag = parse_grouping(f"tag:{tag}")
    tagged = await attempt(daily_costs(aws, week.with_previous, by_tag))
    if tagged.value is None:
        return f"top by {by_tag.label}: unavailable — {tagged.why_not}"
    return top_line(compare(tagged.value, week), top, by_tag.label)


async def savings_since(
    aws: AwsClients, baseline: float, since: date, windows: MonthWindows
) -> tuple[str, list[MonthPoint]]:
    """The savings line and the months to chart (none when there is nothing to chart)."""
    window = savings_window(since, windows.today)
    if window is None:
        return f"savings since {since:%B %Y}: no whole day yet", []
    months = await attempt(monthly_costs(aws, window))
    if months.value is None:
        return f"savings chart: unavailable — {months.why_not}", []
    points = month_points(months.value, windows)
    return savings_line(points, baseline, since), points
