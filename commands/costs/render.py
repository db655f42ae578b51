"""Cost figures as room text and HTML: period comparisons, the month, idle resources."""

from __future__ import annotations

from bot.messages import escape, table
from commands.costs.dates import run_rate
from commands.costs.explorer import MonthFigures
from commands.costs.grouping import UNTAGGED
from commands.costs.idle import IdleReport
from commands.costs.report import BASIS, Comparison, Sum, change, money

BASIS_LINE = f"cost basis: {BASIS} cost (Cost Explorer UnblendedCost), USD, by UTC day"


def render_comparison(c: Comparison, top: int, what: str) -> tuple[list[str], str]:
    """Text lines and HTML for a period comparison; spend without the tag (`UNTAGGED`) is
    always its own last row, never hidden among or pushed out by the top keys."""
    head = (
        f"{what}, {c.period.label} ({c.period.start} – {c.period.last_day}): "
        f"{money(c.total)}, {change(c.total, c.previous_total)} "
        f"vs the previous {c.period.days} days"
    )
    rows = [
        [k[:45], money(now), money(before), change(now, before)]
        for k, now, before in c.top(top, apart=UNTAGGED)
    ]
    untagged = c.of(UNTAGGED)
    if untagged is not None:
        rows.append([UNTAGGED, money(untagged[0]), money(untagged[1]), change(*untagged)])
    text_table, html_table = table(["", "this period", "previous", "change"], rows)
    movers = c.movers(3)
    mover_text = (
        "biggest movers: "
        + "; ".join(f"{k[:40]} {change(now, before)}" for k, now, before in movers)
        if movers
        else "no notable movers"
    )
    lines = [head, text_table, mover_text]
    html = f"<p><b>{escape(head)}</b></p>{html_table}<p>{escape(mover_text)}</p>"
    return lines, html


def top_line(c: Comparison, top: int, label: str) -> str:
    """One line naming the biggest keys of a comparison with their change, and the spend
    without the tag last: "top by tag Name: limesurvey $35.00 (▲ …); …; (untagged) $4.00 (…)"."""
    parts = [
        f"{k[:40]} {money(now)} ({change(now, before)})" for k, now, before in c.top(top, UNTAGGED)
    ]
    untagged = c.of(UNTAGGED)
    if untagged is not None:
        parts.append(f"{UNTAGGED} {money(untagged[0])} ({change(*untagged)})")
    return f"top by {label}, {c.period.label}: " + ("; ".join(parts) or "no spend")


def _sum(s: Sum) -> str:
    # Only said of a finished month: a month in progress is provisional anyway.
    return money(s.amount) + (" (estimated; AWS may still revise it)" if s.estimated else "")


def month_lines(m: MonthFigures, baseline: float | None) -> list[str]:
    """Month to date with its run rate (or, while the month has no figures, the month just
    ended), the forecast (or why there is none) and the savings tracker against `baseline`
    (USD/month; no tracker when None)."""
    w = m.windows
    name = f"{w.month.start:%B}"
    lines: list[str] = []
    mtd = m.to_date.value
    tracked: tuple[str, float] | None = None  # (what, USD/month) set against the baseline
    tracker_gap = ""
    if mtd is not None and w.to_date is not None:
        rate = run_rate(mtd.amount, w) or 0.0
        lines.append(
            f"month to date ({name} {w.to_date.start.day}–{w.to_date.last_day.day}, "
            f"{w.elapsed} day(s)): {money(mtd.amount)}; run rate {money(rate)}/month"
        )
        tracked = (f"run rate {money(rate)}/month", rate)
    elif m.to_date.why_not:
        lines.append(f"month to date: unavailable — {m.to_date.why_not}")
        tracker_gap = "no run rate without the month to date"
    else:
        why = (
            "Cost Explorer has a day's costs only after the day ends"
            if w.to_date is None
            else "Cost Explorer has none for it yet"
        )
        lines.append(f"month to date ({name}): no figures yet — {why}")
        prev, label = m.previous_month, w.previous_month.label
        if prev is not None and prev.value is not None:
            lines.append(f"{label}, the month just ended: {_sum(prev.value)}")
            tracked = (f"{label} came to {money(prev.value.amount)}", prev.value.amount)
        else:
            reason = prev.why_not if prev is not None and prev.why_not else "no figures"
            lines.append(f"{label}, the month just ended: unavailable — {reason}")
            tracker_gap = f"no figures for {name} yet, nor for {label}"
    lines.append(_forecast_line(m, name))
    if baseline:
        if tracked is not None:
            what, amount = tracked
            saved = baseline - amount
            word = "below" if saved >= 0 else "above"
            lines.append(
                f"savings tracker: {what} vs baseline {money(baseline)}/month"
                f" — {money(abs(saved))}/month {word} it"
            )
        else:
            lines.append(f"savings tracker: {tracker_gap}")
    return lines


def _forecast_line(m: MonthFigures, name: str) -> str:
    rest = m.forecast_rest.value
    if rest is None:
        return f"forecast for {name}: unavailable — {m.forecast_rest.why_not}"
    mtd = m.to_date.value
    if m.windows.to_date is None:
        return f"forecast for {name}: {money(rest)}"
    if mtd is None:
        # Without the figures so far only the rest of the month can be told.
        return f"forecast for the rest of {name} (from {m.windows.today}): {money(rest)}"
    return f"forecast for {name}: {money(mtd.amount + rest)}"


def lines_html(lines: list[str]) -> str:
    """Lines as one HTML paragraph."""
    return "<p>" + "<br>".join(escape(x) for x in lines) + "</p>"


def render_idle(report: IdleReport, regions: list[str]) -> tuple[str, str, float]:
    """The idle report as text, HTML and the total that could be saved per month; regions
    that could not be checked are named with the reason."""
    items = report.items
    failed = [f"could not check {r}: {why}" for r, why in report.failed.items()]
    checked = [r for r in regions if r not in report.failed]
    if not items:
        msg = f"Nothing idle found in {', '.join(checked)}." if checked else "Nothing was checked."
        return "\n".join([msg, *failed]), lines_html([msg, *failed]), 0.0
    rows = [
        [i.kind, i.region, i.resource, i.detail, money(i.monthly) if i.monthly is not None else "?"]
        for i in sorted(items, key=lambda i: -(i.monthly or 0))
    ]
    saving = sum(i.saving for i in items)
    unknown = sum(1 for i in items if i.monthly is None)
    tail = f"could save about {money(saving)}/month" + (
        f" ({unknown} item(s) without a price in the table)" if unknown else ""
    )
    keys = sorted({i.missing_price for i in items if i.missing_price})
    hints = [f'to price the "?" items, add to the config: {"; ".join(keys)}'] if keys else []
    text_table, html_table = table(["kind", "region", "resource", "detail", "est. $/month"], rows)
    html = f"{html_table}<p><b>{escape(tail)}</b></p>" + lines_html([*hints, *failed]) * bool(
        hints or failed
    )
    return "\n".join([text_table, tail, *hints, *failed]), html, saving
