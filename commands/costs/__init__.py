"""AWS spend in the room: `!costs`, `!aws idle`, and a weekly summary with a chart.

Every date comes from one clock (`set_clock` lets tests and the demo choose the moment) and
every Cost Explorer window from `commands.costs.dates`.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from pydantic import Field, SecretStr

from bot.args import arg, text
from bot.args import args as words  # commands.costs.args (a submodule) takes the name `args`
from bot.config import Config, ScheduleConfig, Section
from bot.context import Context, JobContext, Runtime
from bot.durations import Duration
from bot.errors import RemoteError, UserError
from bot.registry import Router
from commands.costs.args import parse_costs_args
from commands.costs.aws import AwsClients
from commands.costs.chart import daily_spend_png
from commands.costs.dates import Clock, month_windows, system_clock, trailing, utc_day
from commands.costs.explorer import daily_costs, month_figures
from commands.costs.idle import Prices, find_idle
from commands.costs.render import (
    BASIS_LINE,
    lines_html,
    month_lines,
    render_comparison,
    render_idle,
)
from commands.costs.report import compare, money

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
    snapshot_max_age: Duration = timedelta(days=90)
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


_CLOCK = "costs.clock"


def set_clock(rt: Runtime, clock: Clock) -> None:
    """Make the feature read the time from `clock` (aware datetimes) instead of the system."""
    rt.extras[_CLOCK] = clock


def _now(rt: Runtime) -> datetime:
    clock = rt.extras.get(_CLOCK, system_clock)
    now: datetime = clock()
    utc_day(now)  # refuses a naive clock here, before any figure depends on it
    return now


@router.command(
    "costs", params=[arg("period", text, required=False), words("options", text, required=False)]
)
async def costs_cmd(ctx: Context) -> None:
    """AWS spend: `!costs [week|month|YYYY-MM-DD..YYYY-MM-DD] [--service S3]`."""
    cfg = _config(ctx.rt)
    today = utc_day(_now(ctx.rt))
    request = parse_costs_args(list(ctx.args), today, ctx.rt.prefix)
    window = request.window
    aws = _clients(ctx.rt)
    await ctx.react("👀")
    both = window.with_previous
    if request.service:
        daily = await daily_costs(aws, both, "USAGE_TYPE", request.service)
        lines, html = render_comparison(
            compare(daily, window), cfg.top, f"{request.service} by usage type"
        )
        await ctx.reply("\n".join([*lines, BASIS_LINE]), html + lines_html([BASIS_LINE]))
        return
    # One after the other: Cost Explorer is billed per request and rate-limited.
    daily = await daily_costs(aws, both)
    month = await month_figures(aws, month_windows(today))
    lines, html = render_comparison(compare(daily, window), cfg.top, "AWS costs")
    mlines = [*month_lines(month, cfg.baseline_monthly), BASIS_LINE]
    await ctx.reply("\n".join(lines + mlines), html + lines_html(mlines))


@router.command("aws idle", params=[words("regions", text, required=False)])
async def idle_cmd(ctx: Context) -> None:
    """Unattached volumes, old snapshots, stopped and previous-generation instances, with $."""
    cfg = _config(ctx.rt)
    regions = list(ctx.args) or cfg.regions
    for region in regions:
        if not region.replace("-", "").isalnum():
            raise UserError(
                f"`{region}` is not an AWS region name (e.g. eu-west-1); "
                f"usage: `{ctx.rt.prefix}aws idle [region…]`"
            )
    await ctx.react("👀")
    report = await find_idle(
        _clients(ctx.rt),
        regions,
        _prices(cfg),
        cfg.snapshot_max_age,
        _now(ctx.rt),
    )
    text, html, _ = render_idle(report, regions)
    await ctx.reply(text, html)


@router.job("aws.weekly")
async def weekly_job(ctx: JobContext) -> str:
    """The weekly AWS summary: costs, idle resources, savings tracker and a chart."""
    cfg = _config(ctx.rt)
    aws = _clients(ctx.rt)
    now = _now(ctx.rt)
    today = utc_day(now)
    week = trailing(today, 7, "last 7 days")
    daily = await daily_costs(aws, trailing(today, 28, "last 4 weeks"))
    month = await month_figures(aws, month_windows(today))
    comparison = compare(daily, week)
    lines, html = render_comparison(comparison, cfg.top, "📊 Weekly AWS costs")
    try:
        report = await find_idle(
            aws, cfg.regions, _prices(cfg), cfg.snapshot_max_age, now
        )
        idle_line = (
            f"idle resources: {len(report.items)}, could save about "
            f"{money(sum(i.saving for i in report.items))}/month (`!aws idle` lists them)"
        ) + "".join(f"; could not check {r}: {why}" for r, why in report.failed.items())
    except RemoteError as exc:
        idle_line = f"idle resources: could not check ({exc})"
    mlines = [*month_lines(month, cfg.baseline_monthly), idle_line, BASIS_LINE]
    await ctx.post("\n".join([*lines, *mlines]), html + lines_html(mlines))
    top = [k for k, _, _ in comparison.top(cfg.top)]
    png = await asyncio.to_thread(daily_spend_png, daily, top, "Daily AWS spend, last 4 weeks")
    await ctx.upload(png, f"aws-spend-{today}.png", "image/png")
    return f"posted: {money(comparison.total)} this week"
