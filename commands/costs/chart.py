"""The weekly chart: daily spend of the top services, as a PNG (matplotlib, no display)."""

from __future__ import annotations

import io
from datetime import date

from commands.costs.report import Daily


def daily_spend_png(daily: Daily, services: list[str], title: str) -> bytes:
    """Stacked daily bars of `services` (the rest as 'other')."""
    import matplotlib

    matplotlib.use("Agg")  # no display; also keeps import cost off bot start-up
    import matplotlib.pyplot as plt

    days: list[date] = sorted(daily)
    x = [d.isoformat() for d in days]
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    bottom = [0.0] * len(days)
    series = [*services, "other"]
    for name in series:
        if name == "other":
            values = [sum(v for k, v in daily[d].items() if k not in services) for d in days]
        else:
            values = [daily[d].get(name, 0.0) for d in days]
        if not any(values):
            continue
        ax.bar(x, values, bottom=bottom, label=name[:40], width=0.8)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title(title)
    ax.set_ylabel("USD per day")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    ax.set_xticks(x[:: max(1, len(x) // 10)])
    fig.autofmt_xdate()
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()
