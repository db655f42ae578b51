"""AWS costs through moto in server mode and a real Synapse."""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest

from bot.clock import ManualClock
from commands.costs import AWS
from commands.costs.aws import describe_client_error
from commands.costs.dates import parse_period
from commands.costs.report import change, compare, money, parse_daily
from devstack.client import RoomUser
from devstack.moto import LocalMoto, daily_results
from devstack.synapse import free_port
from tests.conftest import BotFactory

S3 = "Amazon Simple Storage Service"
EC2 = "Amazon Elastic Compute Cloud - Compute"
OTHER = "EC2 - Other"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMoto]:
    server = LocalMoto(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


def _aws(url: str, **extra: Any) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        raw["aws"] = {
            "endpoint_url": url,
            "access_key_id": "testing",
            "secret_access_key": "testing",
            "regions": ["us-east-1"],
            "snapshot_max_age": "0s",
            "baseline_monthly": 2500,
            "timeout_s": 5,
            **extra,
        }

    return edit


def _at(*args: int) -> ManualClock:
    """The bot's clock, stopped at a UTC moment (the tests move it forward only)."""
    return ManualClock(datetime(*args, tzinfo=UTC))  # type: ignore[arg-type,misc]


def _two_weeks(today: date) -> list[dict[str, Any]]:
    start = (today - timedelta(days=14)).isoformat()

    def day(i: int) -> dict[str, float]:
        this_week = i >= 7
        return {S3: 30.0 if this_week else 20.0, EC2: 50.0, OTHER: 5.0 if this_week else 10.0}

    return daily_results(start, 14, day)


def _monthly(
    start: date, end: date, amount: float, estimated: bool = False
) -> list[dict[str, Any]]:
    """One MONTHLY ResultByTime without groups (AWS Cost Explorer API reference,
    GetCostAndUsage response: TimePeriod, Total.UnblendedCost.{Amount,Unit}, Groups, Estimated)."""
    return [
        {
            "TimePeriod": {"Start": start.isoformat(), "End": end.isoformat()},
            "Total": {"UnblendedCost": {"Amount": f"{amount}", "Unit": "USD"}},
            "Groups": [],
            "Estimated": estimated,
        }
    ]


def _windows(moto: LocalMoto) -> list[tuple[str, str, str]]:
    """(operation, Start, End) of every Cost Explorer request moto received, each checked
    to be a non-empty [Start, End) of ISO days as the API requires. botocore's retries of a
    failed call (moto answers GetCostForecast with a 500) count once."""
    out: list[tuple[str, str, str]] = []
    for op, body in moto.cost_explorer_requests():
        start, end = body["TimePeriod"]["Start"], body["TimePeriod"]["End"]
        assert date.fromisoformat(start) < date.fromisoformat(end), (op, body)
        if not out or out[-1] != (op, start, end):
            out.append((op, start, end))
    return out


WEEK_HEAD = "$595.00, ▲ $35.00 (+6.2 %) vs the previous 7 days"
BASIS = "cost basis: unblended cost (Cost Explorer UnblendedCost), USD, by UTC day"
USAGE = (
    "usage: `!costs [week|month|YYYY-MM-DD..YYYY-MM-DD] [--service SERVICE] "
    "[--by service|usage-type|tag:KEY]`"
)


async def test_costs_week_service_breakdown_and_errors(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, moto: LocalMoto
) -> None:
    moto.reset()
    today = date(2025, 11, 25)
    moto.queue_cost_results([_two_weeks(today), _monthly(date(2025, 11, 1), today, 1234.56)])
    bot = make_bot(edit=_aws(moto.url), clock=_at(2025, 11, 25, 14, 0))
    await bot.start()
    moto.start_recording()
    alice = people["alice"]

    answer = await alice.ask(room, "!costs", bot.user_id, timeout=30)
    body = answer.body
    assert body.startswith("AWS costs, last 7 days (2025-11-18 – 2025-11-24)")
    assert WEEK_HEAD in body
    assert "Amazon Simple Storage Service" in body and "$210.00" in body and "$140.00" in body
    assert (
        "biggest movers: Amazon Simple Storage Service ▲ $70.00 (+50.0 %); EC2 - Other ▼ $35.00"
        in body
    )
    assert "month to date (November 1–24, 24 day(s)): $1,234.56; run rate $1,543.20/month" in body
    assert "savings tracker: run rate $1,543.20/month vs baseline $2,500.00/month" in body
    assert "forecast for November: unavailable — ce:get_cost_forecast is not available" in body
    assert body.endswith(BASIS)
    assert "<table>" in answer.content["formatted_body"]
    assert _windows(moto) == [
        ("GetCostAndUsage", "2025-11-11", "2025-11-25"),
        ("GetCostAndUsage", "2025-11-01", "2025-11-25"),
        ("GetCostForecast", "2025-11-25", "2025-12-01"),
    ]

    moto.queue_cost_results(
        [
            daily_results(
                "2025-09-26",
                60,
                lambda i: {
                    "USE1-DataTransfer-Out-Bytes": 40.0 if i >= 30 else 25.0,
                    "USE1-TimedStorage-ByteHrs": 3.0,
                },
            ),
        ]
    )
    s3 = await alice.ask(room, "!costs month --service S3", bot.user_id, timeout=30)
    assert s3.body.startswith("Amazon Simple Storage Service by usage type, last 30 days")
    assert "USE1-DataTransfer-Out-Bytes" in s3.body and "$1,200.00" in s3.body
    assert s3.body.endswith(BASIS)

    for text, expected in [
        ("!costs fortnight", "is not a period"),
        ("!costs 2026-02-10..2026-02-01", "end must come after"),
        ("!costs 2025-11-20..2025-12-20", "no figures after today (2025-11-25)"),
        ("!costs week --service", "--service needs a value"),
        ("!costs --service S3 --service EC2", "--service given twice"),
        ("!costs week extra", "unexpected `extra`"),
        ("!costs --since 2025-11-01", "unknown option `--since`"),
    ]:
        reply = await alice.ask(room, text, bot.user_id)
        assert expected in reply.body and USAGE in reply.body, (text, reply.body)
        assert not reply.body.startswith("❌"), "a mistyped argument is not a failure of the bot"
    bad_region = await alice.ask(room, "!aws idle 'us-east-1;'", bot.user_id)
    assert "is not an AWS region name" in bad_region.body
    assert "usage: `!aws idle [region…]`" in bad_region.body

    # The boto3 clients were made once, on first use, and are closed when the bot stops.
    aws = bot.rt[AWS]
    assert (aws.closed, aws.open_clients) == (False, [("ce", "us-east-1")])
    await bot.stop()
    assert (aws.closed, aws.open_clients) == (True, [])


async def test_costs_on_the_first_of_the_month_reports_the_month_just_ended(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, moto: LocalMoto
) -> None:
    moto.reset()
    today = date(2025, 12, 1)
    moto.queue_cost_results(
        [_two_weeks(today), _monthly(date(2025, 11, 1), today, 2345.67, estimated=True)]
    )
    clock = _at(2025, 12, 1, 0, 30)
    # Monday 1 December 09:00 lies ahead: a weekly summary would take the queued answers.
    bot = make_bot(edit=_aws(moto.url, weekly_cron="0 9 1 7 *"), clock=clock)
    await bot.start()
    moto.start_recording()

    body = (await people["alice"].ask(room, "!costs", bot.user_id, timeout=30)).body
    # The week, its services and movers are all there although the month has no figures…
    assert body.startswith("AWS costs, last 7 days (2025-11-24 – 2025-11-30)") and WEEK_HEAD in body
    assert "biggest movers: Amazon Simple Storage Service ▲ $70.00" in body
    # …which is said, with the month just ended in its place, against the baseline.
    assert (
        "month to date (December): no figures yet — "
        "Cost Explorer has a day's costs only after the day ends"
    ) in body
    assert (
        "November 2025, the month just ended: $2,345.67 (estimated; AWS may still revise it)"
        in body
    )
    assert (
        "savings tracker: November 2025 came to $2,345.67 vs baseline $2,500.00/month"
        " — $154.33/month below it"
    ) in body
    # moto has no GetCostForecast: the rest of the answer stands and says why.
    assert "forecast for December: unavailable — ce:get_cost_forecast is not available" in body
    month = body[body.index("month to date") :]
    assert "$0.00" not in month and "run rate" not in month
    assert body.endswith(BASIS)
    assert _windows(moto) == [
        ("GetCostAndUsage", "2025-11-17", "2025-12-01"),
        ("GetCostAndUsage", "2025-11-01", "2025-12-01"),
        ("GetCostForecast", "2025-12-01", "2026-01-01"),
    ]

    # Half an hour into the 2nd, Cost Explorer may still have nothing for the 1st (moto
    # answers with no ResultsByTime): the same "no figures yet", never "$0.00 … below".
    await clock.set(datetime(2025, 12, 2, 0, 30, tzinfo=UTC))
    moto.queue_cost_results([_two_weeks(date(2025, 12, 2))])
    moto.start_recording()
    body = (await people["alice"].ask(room, "!costs", bot.user_id, timeout=30)).body
    assert "month to date (December): no figures yet — Cost Explorer has none for it yet" in body
    assert "November 2025 came to $2,345.67 vs baseline $2,500.00/month" in body
    assert "forecast for December: unavailable" in body
    assert _windows(moto) == [
        ("GetCostAndUsage", "2025-11-18", "2025-12-02"),
        ("GetCostAndUsage", "2025-12-01", "2025-12-02"),
        ("GetCostAndUsage", "2025-11-01", "2025-12-01"),
        ("GetCostForecast", "2025-12-02", "2026-01-01"),
    ]


async def test_costs_on_the_last_day_of_the_month_at_23_59(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, moto: LocalMoto
) -> None:
    moto.reset()
    today = date(2025, 11, 30)
    moto.queue_cost_results([_two_weeks(today), _monthly(date(2025, 11, 1), today, 2900.0)])
    bot = make_bot(edit=_aws(moto.url), clock=_at(2025, 11, 30, 23, 59, 59))
    await bot.start()
    moto.start_recording()

    body = (await people["alice"].ask(room, "!costs", bot.user_id, timeout=30)).body
    assert body.startswith("AWS costs, last 7 days (2025-11-23 – 2025-11-29)") and WEEK_HEAD in body
    assert "month to date (November 1–29, 29 day(s)): $2,900.00; run rate $3,000.00/month" in body
    assert (
        "savings tracker: run rate $3,000.00/month vs baseline $2,500.00/month"
        " — $500.00/month above it"
    ) in body
    assert "forecast for November: unavailable — ce:get_cost_forecast is not available" in body
    assert body.endswith(BASIS)
    assert _windows(moto) == [
        ("GetCostAndUsage", "2025-11-16", "2025-11-30"),
        ("GetCostAndUsage", "2025-11-01", "2025-11-30"),
        ("GetCostForecast", "2025-11-30", "2025-12-01"),
    ]


async def test_weekly_summary_and_a_range_across_the_year_end_on_1_january(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, moto: LocalMoto
) -> None:
    moto.reset()
    new_year = date(2026, 1, 1)
    moto.queue_cost_results(
        [
            daily_results("2025-12-04", 28, {S3: 30.0, EC2: 50.0}),
            _monthly(date(2025, 12, 1), new_year, 2480.0),
            daily_results("2025-10-31", 62, lambda i: {S3: 10.0 if i < 31 else 20.0}),
        ]
    )
    bot = make_bot(edit=_aws(moto.url), clock=_at(2026, 1, 1, 9, 0))
    await bot.start()
    moto.start_recording()
    alice, bob = people["alice"], people["bob"]

    mark = alice.mark()
    ran = await bob.ask(room, "!jobs run aws-weekly", bot.user_id, timeout=300)
    assert ran.body == "job aws-weekly: ok: posted: $560.00 this week"
    summary = await alice.wait_for(
        lambda e: e.sender == bot.user_id and e.body.startswith("📊 Weekly AWS costs"), after=mark
    )
    body = summary.body
    assert body.startswith("📊 Weekly AWS costs, last 7 days (2025-12-25 – 2025-12-31): $560.00")
    assert "month to date (January): no figures yet" in body
    assert "December 2025, the month just ended: $2,480.00" in body
    assert (
        "December 2025 came to $2,480.00 vs baseline $2,500.00/month — $20.00/month below" in body
    )
    assert "forecast for January: unavailable" in body and "idle resources: 0" in body
    assert body.endswith(BASIS)
    chart = await alice.wait_for(
        lambda e: e.sender == bot.user_id and e.content.get("msgtype") == "m.image", after=mark
    )
    assert chart.content["body"] == "aws-spend-2026-01-01.png"

    december = await alice.ask(room, "!costs 2025-12-01..2026-01-01", bot.user_id, timeout=30)
    assert december.body.startswith(
        "AWS costs, 2025-12-01..2026-01-01 (2025-12-01 – 2025-12-31): $620.00, ▲ $310.00 (+100.0 %)"
        " vs the previous 31 days"
    )
    assert _windows(moto) == [
        ("GetCostAndUsage", "2025-12-04", "2026-01-01"),
        ("GetCostAndUsage", "2025-12-01", "2026-01-01"),
        ("GetCostForecast", "2026-01-01", "2026-02-01"),
        ("GetCostAndUsage", "2025-10-31", "2026-01-01"),
        ("GetCostAndUsage", "2025-12-01", "2026-01-01"),
        ("GetCostForecast", "2026-01-01", "2026-02-01"),
    ]


async def test_idle_resources_and_weekly_summary_with_chart(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, moto: LocalMoto
) -> None:
    moto.reset()
    ec2 = boto3.client(
        "ec2",
        endpoint_url=moto.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    loose = ec2.create_volume(Size=100, AvailabilityZone="us-east-1a", VolumeType="gp2")
    snap = ec2.create_snapshot(VolumeId=loose["VolumeId"], Description="pre-upgrade backup")
    old = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="m4.large")
    stopped = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.small")
    stopped_id = stopped["Instances"][0]["InstanceId"]
    ec2.stop_instances(InstanceIds=[stopped_id])

    # A mid-month day after the resources were made (ages are counted from the bot's clock).
    later = (datetime.now(UTC) + timedelta(days=31)).replace(day=15, hour=9, minute=0)
    # moto builds its catalogue of public snapshots on DescribeSnapshots: over 15 s on a busy
    # 2-core machine, so the read timeout is generous here (a limit, not an expectation).
    bot = make_bot(edit=_aws(moto.url, timeout_s=60), clock=ManualClock(later))
    await bot.start()
    alice, bob = people["alice"], people["bob"]
    idle = await alice.ask(room, "!aws idle", bot.user_id, timeout=300)
    body = idle.body
    assert loose["VolumeId"] in body and "100 GiB gp2, unattached" in body and "$10.00" in body
    assert snap["SnapshotId"] in body and "$5.00" in body and "pre-upgrade backup" in body
    assert (
        old["Instances"][0]["InstanceId"] in body
        and "m4.large running" in body
        and "$73.00" in body
    )
    assert stopped_id in body and "t3.small stopped" in body
    assert "could save about $" in body
    assert body.count("snapshot") == 1, "AWS's own public snapshots are not ours to delete"

    # moto answers a region it does not know with an HTML error page: that region is named
    # with the reason and the others are still reported.
    both = await alice.ask(room, "!aws idle us-east-1 xx-nowhere-1", bot.user_id, timeout=300)
    assert loose["VolumeId"] in both.body and "could save about $" in both.body
    assert "could not check xx-nowhere-1: AWS answered ec2:describe_volumes with something" in (
        both.body
    )

    today = later.date()
    start = (today - timedelta(days=28)).isoformat()
    moto.queue_cost_results(
        [
            daily_results(
                start, 28, lambda i: {S3: 30.0 + i, EC2: 50.0, OTHER: 8.0, "AWS Lambda": 0.5}
            ),
            _monthly(today.replace(day=1), today, 2100.0),
        ]
    )
    mark = alice.mark()
    ran = await bob.ask(room, "!jobs run aws-weekly", bot.user_id, timeout=300)
    assert ran.body.startswith("job aws-weekly: ok: posted: $")
    summary = await alice.wait_for(
        lambda e: e.sender == bot.user_id and e.body.startswith("📊 Weekly AWS costs"), after=mark
    )
    assert "idle resources: 4, could save about" in summary.body
    rate = money(2100.0 / 14 * calendar.monthrange(today.year, today.month)[1])
    assert f"month to date ({today:%B} 1–14, 14 day(s)): $2,100.00; run rate {rate}/month" in (
        summary.body
    )
    assert f"savings tracker: run rate {rate}/month vs baseline $2,500.00/month" in summary.body
    chart = await alice.wait_for(
        lambda e: e.sender == bot.user_id and e.content.get("msgtype") == "m.image", after=mark
    )
    assert chart.content["info"]["mimetype"] == "image/png"
    assert chart.content["info"]["size"] > 5000 and chart.content["url"].startswith("mxc://")

    listing = await alice.ask(room, "!jobs", bot.user_id)
    assert "aws-weekly" in listing.body and "0 9 * * 1" in listing.body


async def test_unreachable_aws_is_a_clear_error(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    bot = make_bot(edit=_aws(f"http://127.0.0.1:{free_port()}", timeout_s=2))
    await bot.start()
    alice, bob = people["alice"], people["bob"]
    for command in ("!aws idle", "!costs", "!costs month --service S3"):
        reply = await alice.ask(room, command, bot.user_id, timeout=60)
        assert reply.body.startswith("❌ ") and "AWS" in reply.body, (command, reply.body)
        assert "Traceback" not in reply.body and "unexpectedly" not in reply.body
    mark = alice.mark()
    ran = await bob.ask(room, "!jobs run aws-weekly", bot.user_id, timeout=300)
    assert ran.body.startswith("job aws-weekly: error: AWS call ce:get_cost_and_usage failed")
    told = await alice.wait_for(
        lambda e: e.sender == bot.user_id and e.body.startswith("⚠️ scheduled job aws-weekly"),
        after=mark,
    )
    assert "failed: AWS call ce:get_cost_and_usage failed" in told.body


def test_error_mapping_and_report_maths(tmp_path: Path) -> None:
    def err(code: str, status: int = 400) -> botocore.exceptions.ClientError:
        return botocore.exceptions.ClientError(
            {
                "Error": {"Code": code, "Message": "m"},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            "GetCostAndUsage",
        )

    assert "denied ce:x (AccessDeniedException)" in describe_client_error(
        err("AccessDeniedException"), "ce:x"
    )
    assert "throttling" in describe_client_error(err("ThrottlingException"), "ce:x")
    assert "not available" in describe_client_error(err("InternalError", 500), "ce:x")
    today = datetime(2026, 11, 25, tzinfo=UTC).date()
    period = parse_period("week", today)
    assert (period.start.isoformat(), period.end.isoformat()) == ("2026-11-18", "2026-11-25")
    assert period.previous.start.isoformat() == "2026-11-11"
    daily = parse_daily(daily_results("2026-11-11", 14, lambda i: {"A": 1.0 if i < 7 else 3.0}))
    c = compare(daily, period)
    assert (c.total, c.previous_total) == (21.0, 7.0)
    assert change(21.0, 7.0) == "▲ $14.00 (+200.0 %)" and change(5, 5) == "±$0.00"
