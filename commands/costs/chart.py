"""The weekly charts as PNGs (matplotlib, no display): daily spend of the top keys, and the
savings tracker (monthly spend against the baseline).

Legends sit outside the axes (right of the plot), so no legend covers a bar or a point; the
`*_figure` functions return the figure for tests to check that.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from commands.costs.report import Daily, money

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _agg() -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display; imported here to keep its cost off bot start-up


def _png(fig: Figure) -> bytes:
    import matplotlib.pyplot as plt

    out = io.BytesIO()
    fig.savefig(out, format="png", bbox_inches="tight")
    plt.close(fig)
    return out.getvalue()


def daily_spend_figure(daily: Daily, keys: list[str], title: str) -> Figure:
    """Stacked daily bars of `keys` (the rest as 'other'), USD per UTC day."""
    _agg()
    import matplotlib.pyplot as plt

    days: list[date] = sorted(daily)
    x = [d.isoformat() for d in days]
    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=100)
    bottom = [0.0] * len(days)
    drawn = False
    for name in [*keys, "other"]:
        if name == "other":
            values = [sum(v for k, v in daily[d].items() if k not in keys) for d in days]
        else:
            values = [daily[d].get(name, 0.0) for d in days]
        if not any(values):
            continue
        ax.bar(x, values, bottom=bottom, label=name[:40], width=0.8)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        drawn = True
    ax.set_title(title)
    ax.set_ylabel("USD per day")
    ax.grid(axis="y", alpha=0.3)
    if not drawn:
        # No spend at all (a new account, or credits only): the day names would be ticks
        # on an axis that has no days, which matplotlib refuses. Say so on the chart.
        ax.text(0.5, 0.5, "no spend on these days", transform=ax.transAxes, ha="center")
        ax.set_xticks([])
        fig.tight_layout()
        return fig
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_xticks(x[:: max(1, len(x) // 10)])
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def daily_spend_png(daily: Daily, keys: list[str], title: str) -> bytes:
    """`daily_spend_figure` as PNG bytes."""
    return _png(daily_spend_figure(daily, keys, title))


@dataclass(frozen=True)
class MonthPoint:
    """One month's spend in USD; `partial` for the month in progress (its run rate)."""

    month: date
    amount: float
    partial: bool = False


def savings_figure(points: list[MonthPoint], baseline: float, title: str) -> Figure:
    """Monthly spend as a line against the baseline (dashed), the gap below it shaded as
    savings; the month in progress as an open marker on a dotted segment."""
    _agg()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=100)
    whole = [p for p in points if not p.partial]
    xs = [p.month.strftime("%b %Y") for p in points]
    ax.axhline(baseline, color="tab:red", linestyle="--", label=f"baseline {money(baseline)}/month")
    if whole:
        wx = [p.month.strftime("%b %Y") for p in whole]
        wy = [p.amount for p in whole]
        ax.plot(wx, wy, marker="o", color="tab:blue", label="monthly spend")
        ax.fill_between(
            wx,
            wy,
            [baseline] * len(wy),
            where=[y < baseline for y in wy],
            interpolate=True,
            color="tab:green",
            alpha=0.15,
            label="saved vs baseline",
        )
    for p in points:
        if p.partial:
            x = p.month.strftime("%b %Y")
            if whole:
                ax.plot(
                    [whole[-1].month.strftime("%b %Y"), x],
                    [whole[-1].amount, p.amount],
                    linestyle=":",
                    color="tab:blue",
                )
            ax.plot(
                [x],
                [p.amount],
                marker="o",
                markerfacecolor="white",
                color="tab:blue",
                linestyle="none",
                label="this month (run rate)",
            )
    top = max([baseline, *(p.amount for p in points)])
    ax.set_ylim(0, top * 1.15)
    ax.set_xticks(xs)
    ax.set_title(title)
    ax.set_ylabel("USD per month")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def savings_png(points: list[MonthPoint], baseline: float, title: str) -> bytes:
    """`savings_figure` as PNG bytes."""
    return _png(savings_figure(points, baseline, title))
