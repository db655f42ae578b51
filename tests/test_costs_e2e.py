"""AWS costs through moto in server mode and a real Synapse."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest

from commands.costs.aws import describe_client_error
from commands.costs.report import change, compare, parse_daily, parse_period
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


def _two_weeks(today: datetime) -> list[dict[str, Any]]:
    start = (today.date() - timedelta(days=14)).isoformat()

    def day(i: int) -> dict[str, float]:
        this_week = i >= 7
        return {S3: 30.0 if this_week else 20.0, EC2: 50.0, OTHER: 5.0 if this_week else 10.0}

    return daily_results(start, 14, day)


def _month_to_date(amount: float) -> list[dict[str, Any]]:
    today = datetime.now(UTC).date()
    return [
        {
            "TimePeriod": {"Start": today.replace(day=1).isoformat(), "End": today.isoformat()},
            "Total": {"UnblendedCost": {"Amount": f"{amount}", "Unit": "USD"}},
            "Groups": [],
        }
    ]


async def test_costs_week_service_breakdown_and_errors(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, moto: LocalMoto
) -> None:
    moto.reset()
    now = datetime.now(UTC)
    mtd = now.day > 1
    moto.queue_cost_results([_two_weeks(now), *([_month_to_date(1234.56)] if mtd else [])])
    bot = make_bot(edit=_aws(moto.url))
    await bot.start()
    alice = people["alice"]

    answer = await alice.ask(room, "!costs", bot.user_id, timeout=30)
    body = answer.body
    assert body.startswith("AWS costs, last 7 days")
    assert "$595.00, ▲ $35.00 (+6.2 %) vs the previous 7 days" in body
    assert "Amazon Simple Storage Service" in body and "$210.00" in body and "$140.00" in body
    assert (
        "biggest movers: Amazon Simple Storage Service ▲ $70.00 (+50.0 %); EC2 - Other ▼ $35.00"
        in body
    )
    if mtd:
        assert "month to date: $1,234.56" in body and "savings tracker: run rate" in body
    assert "forecast unavailable" in body and "ce:get_cost_forecast is not available" in body
    assert "<table>" in answer.content["formatted_body"]

    start = (now.date() - timedelta(days=60)).isoformat()
    moto.queue_cost_results(
        [
            daily_results(
                start,
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

    for text, expected in [
        ("!costs fortnight", "is not a period"),
        ("!costs 2026-02-10..2026-02-01", "end must come after"),
        ("!costs week --service", "--service needs a name"),
        ("!costs week extra", "unexpected `extra`"),
    ]:
        reply = await alice.ask(room, text, bot.user_id)
        assert expected in reply.body, (text, reply.body)


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

    bot = make_bot(edit=_aws(moto.url))
    await bot.start()
    alice, bob = people["alice"], people["bob"]
    idle = await alice.ask(room, "!aws idle", bot.user_id, timeout=30)
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

    now = datetime.now(UTC)
    start = (now.date() - timedelta(days=28)).isoformat()
    moto.queue_cost_results(
        [
            daily_results(
                start, 28, lambda i: {S3: 30.0 + i, EC2: 50.0, OTHER: 8.0, "AWS Lambda": 0.5}
            ),
            *([_month_to_date(2100.0)] if now.day > 1 else []),
        ]
    )
    mark = alice.mark()
    ran = await bob.ask(room, "!jobs run aws-weekly", bot.user_id, timeout=60)
    assert ran.body.startswith("job aws-weekly: ok: posted: $")
    summary = await alice.wait_for(
        lambda e: e.sender == bot.user_id and e.body.startswith("📊 Weekly AWS costs"), after=mark
    )
    assert "idle resources: 4, could save about" in summary.body
    assert "savings tracker" in summary.body or now.day == 1
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
    reply = await people["alice"].ask(room, "!aws idle", bot.user_id, timeout=60)
    assert reply.body.startswith("❌ ") and "AWS" in reply.body
    assert "Traceback" not in reply.body


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
