"""AWS spend in the room: `costs`, `aws idle`, and a weekly summary with a chart.

Every date comes from the runtime's clock (`rt.clock`, which tests set) and every Cost
Explorer window from `commands.costs.dates`. The boto3 clients live in the feature's state
(`AWS`), made on first use and closed when the bot stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, timedelta
from typing import Annotated

from pydantic import AfterValidator, Field, SecretStr, field_validator

from bot.args import arg, args, flag
from bot.config import Config, ScheduleConfig, Section
from bot.context import Context, JobContext, Runtime
from bot.durations import Duration
from bot.errors import RemoteError, UserError
from bot.registry import ANYONE, Router, StateKey
from commands.costs import checks, db
from commands.costs.anomalies import AnomalyConfig
from commands.costs.aws import AwsClients
from commands.costs.chart import MonthPoint, daily_spend_png, savings_png
from commands.costs.dates import month_windows, trailing, utc_day
from commands.costs.explorer import daily_costs, month_figures
from commands.costs.grouping import BY_USAGE_TYPE, GROUPING_LABEL, grouping, parse_grouping
from commands.costs.idle import Prices, find_idle
from commands.costs.machines import MACHINES, Machines, OnDemandList, extension, machine
from commands.costs.machines_db import MIGRATIONS as MACHINE_MIGRATIONS
from commands.costs.period import PERIOD_LABEL, aws_region, aws_service, period, today
from commands.costs.render import (
    BASIS_LINE,
    lines_html,
    month_lines,
    render_comparison,
    render_idle,
)
from commands.costs.report import compare, money
from commands.costs.watch import check_anomalies, savings_since, top_by_tag

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


# A price in USD: a negative one (a typo) would turn costs into savings.
Price = Annotated[float, Field(ge=0)]
Region = Annotated[str, AfterValidator(checks.region)]
Cron = Annotated[str, AfterValidator(checks.cron)]


class PriceTable(Section):
    ebs_gb_month: dict[str, Price] = Field(default_factory=lambda: dict(DEFAULT_EBS))
    snapshot_gb_month: Price = 0.05
    instance_hour: dict[str, Price] = Field(default_factory=lambda: dict(DEFAULT_INSTANCE_HOUR))
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

    @field_validator("ebs_gb_month")
    @classmethod
    def _add_to_built_in_ebs(cls, given: dict[str, float]) -> dict[str, float]:
        # A table in the config adds to (and overrides entries of) the built-in one: a
        # partial table copied from the example must not drop the prices it does not list.
        return {**DEFAULT_EBS, **given}

    @field_validator("instance_hour")
    @classmethod
    def _add_to_built_in_instances(cls, given: dict[str, float]) -> dict[str, float]:
        return {**DEFAULT_INSTANCE_HOUR, **given}


class AwsConfig(Section):
    # Region names are checked at load: a typo would otherwise surface only as a failing
    # call (or, behind endpoint_url, not at all).
    region: Region = "us-east-1"
    regions: list[Region] = Field(default_factory=lambda: ["us-east-1"])
    endpoint_url: str | None = None
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    timeout_s: float = Field(default=20, gt=0)
    snapshot_max_age: Duration = timedelta(days=90)
    prices: PriceTable = PriceTable()
    baseline_monthly: float | None = Field(default=None, ge=0)
    # The day baseline_monthly was set: the weekly summary charts every month since.
    baseline_since: date | None = None
    # A cost allocation tag (e.g. Name) the weekly summary names the top costs by.
    cost_tag: str | None = None
    anomalies: AnomalyConfig | None = None
    weekly_cron: Cron = "0 9 * * 1"
    room: str | None = None
    top: int = Field(default=5, ge=1, le=20)
    on_demand: OnDemandList = Field(default_factory=list)

    @field_validator("cost_tag")
    @classmethod
    def _tag_key(cls, tag: str | None) -> str | None:
        if tag is not None:
            parse_grouping(f"tag:{tag}")
        return tag


router.section("aws", AwsConfig)
for _version, _sql in db.MIGRATIONS:
    router.migration(_version, _sql)


@router.schedules
def _weekly(config: Config) -> list[ScheduleConfig]:
    cfg = config.section("aws", AwsConfig)
    if cfg is None:
        return []
    out = [ScheduleConfig(name="aws-weekly", cron=cfg.weekly_cron, job="aws.weekly", room=cfg.room)]
    if cfg.anomalies is not None:
        room = cfg.anomalies.room or cfg.room
        out.append(
            ScheduleConfig(
                name="aws-anomalies", cron=cfg.anomalies.cron, job="aws.anomalies", room=room
            )
        )
    return out


def _config(rt: Runtime) -> AwsConfig:
    cfg = rt.config.section("aws", AwsConfig)
    if cfg is None:
        raise UserError("AWS is not configured (`aws:` in the config).")
    return cfg


AWS = StateKey("aws", AwsClients)


@router.lifespan(AWS)
@asynccontextmanager
async def aws_clients(rt: Runtime) -> AsyncIterator[AwsClients]:
    """The feature's boto3 clients: none is made before it is needed; all closed at shutdown.

    Without an `aws:` section every command answers that AWS is not configured before it
    asks for a client (`_aws`), so the defaults here are never used to reach AWS.
    """
    cfg = rt.config.section("aws", AwsConfig) or AwsConfig()
    secret = cfg.secret_access_key
    clients = AwsClients(
        region=cfg.region,
        endpoint_url=cfg.endpoint_url,
        profile=cfg.profile,
        access_key_id=cfg.access_key_id,
        secret_access_key=secret.get_secret_value() if secret else None,
        timeout_s=cfg.timeout_s,
    )
    try:
        yield clients
    finally:
        clients.close()


def _aws(rt: Runtime) -> tuple[AwsConfig, AwsClients]:
    """The feature's config and clients; UserError when AWS is not configured."""
    return _config(rt), rt[AWS]


def _prices(cfg: AwsConfig) -> Prices:
    p = cfg.prices
    return Prices(
        p.ebs_gb_month,
        p.snapshot_gb_month,
        p.instance_hour,
        tuple(p.previous_generation),
        p.previous_generation_saving,
    )


PERIOD = arg("period", period, required=False, label=PERIOD_LABEL)
SERVICE = flag("--service", aws_service, metavar="SERVICE")
REGIONS = args("regions", aws_region, required=False, label="region")
BY = flag("--by", grouping, metavar=GROUPING_LABEL)


@router.command("costs", params=[PERIOD, SERVICE, BY])
async def costs_cmd(ctx: Context) -> None:
    """AWS spend over a period (the last 7 days by default), by service, usage type or tag."""
    cfg, aws = _aws(ctx.rt)
    day = today(ctx.rt)
    window = ctx[PERIOD] if ctx.given(PERIOD) else trailing(day, 7, "last 7 days")
    service = ctx[SERVICE]
    by = ctx[BY]
    await ctx.react("👀")
    both = window.with_previous
    if service or by:
        group = by or BY_USAGE_TYPE
        what = f"{service} by {group.label}" if service else f"AWS costs by {group.label}"
        daily = await daily_costs(aws, both, group, service)
        lines, html = render_comparison(compare(daily, window), cfg.top, what)
        await ctx.reply("\n".join([*lines, BASIS_LINE]), html + lines_html([BASIS_LINE]))
        return
    # One after the other: Cost Explorer is billed per request and rate-limited.
    daily = await daily_costs(aws, both)
    month = await month_figures(aws, month_windows(day))
    lines, html = render_comparison(compare(daily, window), cfg.top, "AWS costs")
    mlines = [*month_lines(month, cfg.baseline_monthly), BASIS_LINE]
    await ctx.reply("\n".join(lines + mlines), html + lines_html(mlines))


@router.command("aws idle", params=[REGIONS])
async def idle_cmd(ctx: Context) -> None:
    """Unattached volumes, old snapshots, stopped and previous-generation instances, with $."""
    cfg, aws = _aws(ctx.rt)
    regions = ctx[REGIONS] or cfg.regions
    await ctx.react("👀")
    report = await find_idle(aws, regions, _prices(cfg), cfg.snapshot_max_age, ctx.rt.clock.now())
    text, html, _ = render_idle(report, regions)
    await ctx.reply(text, html)


@router.job("aws.weekly")
async def weekly_job(ctx: JobContext) -> str:
    """The weekly AWS summary: costs, top costs by `cost_tag`, idle resources, the savings
    tracker (with a chart of the months since `baseline_since`) and a chart of daily spend."""
    cfg, aws = _aws(ctx.rt)
    now = ctx.rt.clock.now()
    day = utc_day(now)
    week = trailing(day, 7, "last 7 days")
    daily = await daily_costs(aws, trailing(day, 28, "last 4 weeks"))
    month = await month_figures(aws, month_windows(day))
    comparison = compare(daily, week)
    lines, html = render_comparison(comparison, cfg.top, "📊 Weekly AWS costs")
    if cfg.cost_tag:
        tag_line = await top_by_tag(aws, cfg.cost_tag, week, cfg.top)
        lines.append(tag_line)
        html += lines_html([tag_line])
    try:
        report = await find_idle(aws, cfg.regions, _prices(cfg), cfg.snapshot_max_age, now)
        saving = money(sum(i.saving for i in report.items))
        idle_line = (
            f"idle resources: {len(report.items)}, could save about {saving}/month "
            f"(`{ctx.rt.prefix}aws idle` lists them)"
        ) + "".join(f"; could not check {r}: {why}" for r, why in report.failed.items())
    except RemoteError as exc:
        idle_line = f"idle resources: could not check ({exc})"
    mlines = [*month_lines(month, cfg.baseline_monthly), idle_line]
    savings: list[MonthPoint] = []
    if cfg.baseline_since and cfg.baseline_monthly:
        line, savings = await savings_since(
            aws, cfg.baseline_monthly, cfg.baseline_since, month.windows
        )
        mlines.append(line)
    mlines.append(BASIS_LINE)
    await ctx.post("\n".join([*lines, *mlines]), html + lines_html(mlines))
    top = [k for k, _, _ in comparison.top(cfg.top)]
    png = await asyncio.to_thread(daily_spend_png, daily, top, "Daily AWS spend, last 4 weeks")
    await ctx.upload(png, f"aws-spend-{day}.png", "image/png")
    if savings and cfg.baseline_monthly:
        title = f"Monthly AWS spend since {cfg.baseline_since:%B %Y} vs baseline"
        chart = await asyncio.to_thread(savings_png, savings, cfg.baseline_monthly, title)
        await ctx.upload(chart, f"aws-savings-{day}.png", "image/png")
    return f"posted: {money(comparison.total)} this week"


@router.job("aws.anomalies")
async def anomalies_job(ctx: JobContext) -> str:
    """Posts each key whose spend on the last complete UTC day jumped against its median."""
    cfg, aws = _aws(ctx.rt)
    if cfg.anomalies is None:
        raise UserError("`aws.anomalies` is not configured")
    return await check_anomalies(ctx.rt, aws, cfg.anomalies, ctx.room_id)


# --- on-demand machines (commands.costs.machines) ---------------------------------------

router.migrations.extend(MACHINE_MIGRATIONS)


@router.lifespan(MACHINES)
@asynccontextmanager
async def machines_state(rt: Runtime) -> AsyncIterator[Machines]:
    """The on-demand machines from `aws.on_demand`, on the feature's clients (`AWS`)."""
    cfg = rt.config.section("aws", AwsConfig) or AwsConfig()
    yield Machines(rt, rt[AWS], list(cfg.on_demand), cfg.region, _prices(cfg).instance_hour)


@router.service
async def machines_auto_stop(rt: Runtime) -> None:
    """Warn before and stop at each machine's auto-stop, also those due while the bot was down."""
    await rt[MACHINES].run()


MACHINE = arg("machine", machine)
EXTEND_BY = arg("duration", extension)


def _who_machines(rt: Runtime) -> str:
    return rt[MACHINES].who()


# The guard lets everyone through: each machine names its own role (checked by the handler;
# a refusal is audited as 'denied' all the same).
@router.command("aws start", params=[MACHINE], role=ANYONE, who=_who_machines)
async def start_cmd(ctx: Context) -> None:
    """Start an on-demand machine; it stops by itself after its `auto_stop_after`."""
    _config(ctx.rt)
    await ctx.rt[MACHINES].start(ctx, ctx[MACHINE])


@router.command("aws stop", params=[MACHINE], role=ANYONE, who=_who_machines)
async def stop_cmd(ctx: Context) -> None:
    """Stop an on-demand machine now."""
    _config(ctx.rt)
    await ctx.rt[MACHINES].stop(ctx, ctx[MACHINE])


@router.command("aws extend", params=[MACHINE, EXTEND_BY], role=ANYONE, who=_who_machines)
async def extend_cmd(ctx: Context) -> None:
    """Move a running machine's auto-stop later by a duration, e.g. 2h."""
    _config(ctx.rt)
    await ctx.rt[MACHINES].extend(ctx, ctx[MACHINE], ctx[EXTEND_BY])


@router.command("aws machines")
async def machines_cmd(ctx: Context) -> None:
    """On-demand machines: state, address, uptime, auto-stop and cost so far this month."""
    _config(ctx.rt)
    await ctx.rt[MACHINES].listing(ctx)
