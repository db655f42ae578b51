"""AWS spend in the room: `!costs`, `!aws idle`, and a weekly summary with a chart."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import Field, SecretStr

from bot import durations
from bot.args import arg, args, text
from bot.config import Config, ScheduleConfig, Section
from bot.context import Context, JobContext, Runtime
from bot.durations import Duration
from bot.errors import RemoteError, UserError
from bot.messages import escape, table
from bot.registry import Router
from commands.costs.aws import AwsClients
from commands.costs.chart import daily_spend_png
from commands.costs.idle import IdleItem, Prices, find_idle
from commands.costs.report import (
    Comparison,
    Daily,
    Period,
    change,
    compare,
    money,
    parse_daily,
    parse_period,
    run_rate,
    service_name,
)

router = Router("costs")

DEFAULT_EBS = {
    "gp3": 0.08,
    "gp2": 0.10,
    "io1": 0.125,
    "io2": 0.125,
    "st1": 0.045,
    "sc1": 0.015,
    "standard": 0.05,
}
DEFAULT_INSTANCE_HOUR = {
    "t2.micro": 0.0116,
    "t2.small": 0.023,
    "t2.medium": 0.0464,
    "t2.large": 0.0928,
    "t2.xlarge": 0.1856,
    "m4.large": 0.10,
    "m4.xlarge": 0.20,
    "m4.2xlarge": 0.40,
    "m4.4xlarge": 0.80,
    "c4.large": 0.10,
    "c4.xlarge": 0.199,
    "c4.2xlarge": 0.398,
    "r4.large": 0.133,
    "r4.xlarge": 0.266,
    "r4.2xlarge": 0.532,
    "m3.medium": 0.067,
    "m3.large": 0.133,
    "c3.large": 0.105,
    "r3.large": 0.166,
}


class PriceTable(Section):
    ebs_gb_month: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EBS))
    snapshot_gb_month: float = 0.05
    instance_hour: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_INSTANCE_HOUR))
    previous_generation: list[str] = Field(
        default_factory=lambda: [
            "t1",
            "t2",
            "m1",
            "m2",
            "m3",
            "m4",
            "c1",
            "c3",
            "c4",
            "r3",
            "r4",
            "i2",
            "d2",
            "g2",
            "p2",
        ]
    )
    # Share of a previous-generation instance's cost that moving to a current type saves.
    previous_generation_saving: float = Field(default=0.2, ge=0, le=1)


class AwsConfig(Section):
    region: str = "us-east-1"
    regions: list[str] = Field(default_factory=lambda: ["us-east-1"])
    endpoint_url: str | None = None
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    timeout_s: float = Field(default=20, gt=0)
    snapshot_max_age: Duration = "90d"
    prices: PriceTable = PriceTable()
    baseline_monthly: float | None = Field(default=None, ge=0)
    weekly_cron: str = "0 9 * * 1"
    room: str | None = None
    top: int = Field(default=5, ge=1, le=20)


router.section("aws", AwsConfig)


@router.schedules
def _weekly(config: Config) -> list[ScheduleConfig]:
    cfg = config.section("aws", AwsConfig)
    if cfg is None:
        return []
    return [
        ScheduleConfig(name="aws-weekly", cron=cfg.weekly_cron, job="aws.weekly", room=cfg.room)
    ]


def _config(rt: Runtime) -> AwsConfig:
    cfg = rt.config.section("aws", AwsConfig)
    if cfg is None:
        raise UserError("AWS is not configured (`aws:` in the config).")
    return cfg


def _clients(rt: Runtime) -> AwsClients:
    clients = rt.extras.get("aws.clients")
    if not isinstance(clients, AwsClients):
        cfg = _config(rt)
        clients = AwsClients(
            region=cfg.region,
            endpoint_url=cfg.endpoint_url,
            profile=cfg.profile,
            access_key_id=cfg.access_key_id,
            secret_access_key=cfg.secret_access_key.get_secret_value()
            if cfg.secret_access_key
            else None,
            timeout_s=cfg.timeout_s,
        )
        rt.extras["aws.clients"] = clients
    return clients


def _prices(cfg: AwsConfig) -> Prices:
    p = cfg.prices
    return Prices(
        p.ebs_gb_month,
        p.snapshot_gb_month,
        p.instance_hour,
        tuple(p.previous_generation),
        p.previous_generation_saving,
    )


async def daily_costs(
    aws: AwsClients, start: date, end: date, group: str = "SERVICE", service: str | None = None
) -> Daily:
    """Daily unblended cost over [start, end), grouped by a dimension."""
    kwargs: dict[str, Any] = {
        "TimePeriod": {"Start": start.isoformat(), "End": end.isoformat()},
        "Granularity": "DAILY",
        "Metrics": ["UnblendedCost"],
        "GroupBy": [{"Type": "DIMENSION", "Key": group}],
    }
    if service:
        kwargs["Filter"] = {"Dimensions": {"Key": "SERVICE", "Values": [service]}}
    results: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        if token:
            kwargs["NextPageToken"] = token
        resp = await aws.call("ce", "get_cost_and_usage", **kwargs)
        results.extend(resp.get("ResultsByTime", []))
        token = resp.get("NextPageToken")
        if not token:
            return parse_daily(results)


@dataclass(frozen=True)
class MonthFigures:
    """Month to date and the forecast (or why there is none)."""

    to_date: float
    forecast: float | None
    forecast_note: str


async def month_figures(aws: AwsClients, today: date) -> MonthFigures:
    """Spend from the 1st to today, and Cost Explorer's forecast for the whole month."""
    first = today.replace(day=1)
    to_date = 0.0
    if today > first:
        resp = await aws.call(
            "ce",
            "get_cost_and_usage",
            TimePeriod={"Start": first.isoformat(), "End": today.isoformat()},
            Granularity="MONTHLY",
            Metrics=["UnblendedCost"],
        )
        for entry in resp.get("ResultsByTime", []):
            to_date += float(entry.get("Total", {}).get("UnblendedCost", {}).get("Amount", 0) or 0)
    next_month = (first + timedelta(days=32)).replace(day=1)
    try:
        resp = await aws.call(
            "ce",
            "get_cost_forecast",
            TimePeriod={"Start": today.isoformat(), "End": next_month.isoformat()},
            Metric="UNBLENDED_COST",
            Granularity="MONTHLY",
        )
        rest = float(resp["Total"]["Amount"])
        return MonthFigures(to_date, to_date + rest, "")
    except RemoteError as exc:
        return MonthFigures(to_date, None, f"forecast unavailable: {exc}")
    except (KeyError, ValueError, TypeError):
        return MonthFigures(to_date, None, "forecast unavailable: unexpected answer")


def render_comparison(c: Comparison, top: int, what: str) -> tuple[list[str], str]:
    """Text lines and HTML for a period comparison."""
    last_day = c.period.end - timedelta(days=1)
    moved = change(c.total, c.previous_total)
    head = (
        f"{what}, {c.period.label} ({c.period.start} – {last_day}): "
        f"{money(c.total)}, {moved} vs the previous {c.period.days} days"
    )
    rows = [
        [k[:45], money(now), money(before), change(now, before)] for k, now, before in c.top(top)
    ]
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


def render_month(m: MonthFigures, cfg: AwsConfig, today: date) -> tuple[list[str], str]:
    """Month to date, forecast and the savings tracker."""
    projected, elapsed, _ = run_rate(m.to_date, today)
    rate = f"run rate {money(projected)}/month"
    lines = [f"month to date: {money(m.to_date)} over {elapsed} day(s); {rate}"]
    lines.append(
        f"forecast for {today:%B}: {money(m.forecast)}"
        if m.forecast is not None
        else m.forecast_note
    )
    if cfg.baseline_monthly:
        saved = cfg.baseline_monthly - projected
        word = "below" if saved >= 0 else "above"
        lines.append(
            f"savings tracker: {rate} vs baseline {money(cfg.baseline_monthly)}/month"
            f" — {money(abs(saved))}/month {word} it"
        )
    return lines, "<br>".join(escape(x) for x in lines)


@router.command(
    "costs", params=[arg("period", text, required=False), args("options", text, required=False)]
)
async def costs_cmd(ctx: Context) -> None:
    """AWS spend: `!costs [week|month|YYYY-MM-DD..YYYY-MM-DD] [--service S3]`."""
    cfg = _config(ctx.rt)
    args = list(ctx.args)
    service = None
    if "--service" in args:
        i = args.index("--service")
        if i + 1 >= len(args):
            raise UserError("--service needs a name, e.g. `--service S3`")
        service = service_name(args[i + 1])
        del args[i : i + 2]
    if len(args) > 1:
        raise UserError(
            f"unexpected `{args[1]}`; usage: `!costs [week|month|FROM..TO] [--service S]`"
        )
    today = datetime.now(UTC).date()
    period = parse_period(args[0] if args else None, today)
    aws = _clients(ctx.rt)
    await ctx.react("👀")
    if service:
        daily = await daily_costs(aws, period.previous.start, period.end, "USAGE_TYPE", service)
        lines, html = render_comparison(compare(daily, period), cfg.top, f"{service} by usage type")
        await ctx.reply("\n".join(lines), html)
        return
    # One after the other: Cost Explorer is billed per request and rate-limited.
    daily = await daily_costs(aws, period.previous.start, period.end)
    month = await month_figures(aws, today)
    lines, html = render_comparison(compare(daily, period), cfg.top, "AWS costs")
    mlines, mhtml = render_month(month, cfg, today)
    await ctx.reply("\n".join(lines + mlines), html + f"<p>{mhtml}</p>")


def render_idle(items: list[IdleItem], regions: list[str]) -> tuple[str, str, float]:
    """The idle report as text, HTML and the total that could be saved per month."""
    if not items:
        msg = f"Nothing idle found in {', '.join(regions)}."
        return msg, escape(msg), 0.0
    rows = [
        [i.kind, i.region, i.resource, i.detail, money(i.monthly) if i.monthly is not None else "?"]
        for i in sorted(items, key=lambda i: -(i.monthly or 0))
    ]
    saving = sum(i.saving for i in items)
    unknown = sum(1 for i in items if i.monthly is None)
    tail = f"could save about {money(saving)}/month" + (
        f" ({unknown} item(s) without a price in the table)" if unknown else ""
    )
    text_table, html_table = table(["kind", "region", "resource", "detail", "est. $/month"], rows)
    return f"{text_table}\n{tail}", f"{html_table}<p><b>{escape(tail)}</b></p>", saving


@router.command("aws idle", params=[args("regions", text, required=False)])
async def idle_cmd(ctx: Context) -> None:
    """Unattached volumes, old snapshots, stopped and previous-generation instances, with $."""
    cfg = _config(ctx.rt)
    regions = list(ctx.args) or cfg.regions
    for region in regions:
        if not region.replace("-", "").isalnum():
            raise UserError(f"`{region}` is not an AWS region name")
    await ctx.react("👀")
    items = await find_idle(
        _clients(ctx.rt), regions, _prices(cfg), durations.parse_duration(cfg.snapshot_max_age)
    )
    text, html, _ = render_idle(items, regions)
    await ctx.reply(text, html)


@router.job("aws.weekly")
async def weekly_job(ctx: JobContext) -> str:
    """The weekly AWS summary: costs, idle resources, savings tracker and a chart."""
    cfg = _config(ctx.rt)
    aws = _clients(ctx.rt)
    today = datetime.now(UTC).date()
    period = Period("last 7 days", today - timedelta(days=7), today)
    daily = await daily_costs(aws, today - timedelta(days=28), today)
    month = await month_figures(aws, today)
    comparison = compare(daily, period)
    lines, html = render_comparison(comparison, cfg.top, "📊 Weekly AWS costs")
    mlines, mhtml = render_month(month, cfg, today)
    try:
        items = await find_idle(
            aws, cfg.regions, _prices(cfg), durations.parse_duration(cfg.snapshot_max_age)
        )
        idle_line = (
            f"idle resources: {len(items)}, could save about "
            f"{money(sum(i.saving for i in items))}/month (`!aws idle` lists them)"
        )
    except RemoteError as exc:
        idle_line = f"idle resources: could not check ({exc})"
    await ctx.post(
        "\n".join([*lines, *mlines, idle_line]), f"{html}<p>{mhtml}<br>{escape(idle_line)}</p>"
    )
    top = [k for k, _, _ in comparison.top(cfg.top)]
    png = await asyncio.to_thread(daily_spend_png, daily, top, "Daily AWS spend, last 4 weeks")
    await ctx.upload(png, f"aws-spend-{today}.png", "image/png")
    return f"posted: {money(comparison.total)} this week"
