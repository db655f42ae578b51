"""Cost reports through moto in server mode and a real Synapse: spend by tag and usage type,
daily anomalies, the weekly summary's tag line and savings chart, idle prices and paging."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
import yaml

from bot.clock import ManualClock
from devstack.client import RoomUser, SeenEvent
from devstack.moto import LocalMoto, daily_results
from tests.conftest import BotFactory

ROOT = Path(__file__).resolve().parent.parent
S3 = "Amazon Simple Storage Service"
EC2 = "Amazon Elastic Compute Cloud - Compute"
BASIS = "cost basis: unblended cost (Cost Explorer UnblendedCost), USD, by UTC day"
OUT = "USE1-DataTransfer-Out-Bytes"
STORAGE = "USE1-TimedStorage-ByteHrs"
LAMBDA = "USE1-Lambda-GB-Second"
BY_USAGE = {"Type": "DIMENSION", "Key": "USAGE_TYPE"}


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
            "baseline_monthly": 2500,
            "timeout_s": 5,
            # Far ahead: no scheduled weekly summary takes the queued answers.
            "weekly_cron": "0 9 1 7 *",
            **extra,
        }

    return edit


def _at(*args: int) -> ManualClock:
    return ManualClock(datetime(*args, tzinfo=UTC))  # type: ignore[arg-type,misc]


def _requests(moto: LocalMoto) -> list[tuple[str, dict[str, Any]]]:
    """Cost Explorer requests since `start_recording`, each checked to be a non-empty
    [Start, End); botocore's retries of one call count once."""
    out: list[tuple[str, dict[str, Any]]] = []
    for op, body in moto.cost_explorer_requests():
        period = body["TimePeriod"]
        assert date.fromisoformat(period["Start"]) < date.fromisoformat(period["End"]), body
        if not out or out[-1] != (op, body):
            out.append((op, body))
    return out


def _spans(moto: LocalMoto) -> list[tuple[str, str, str, Any]]:
    return [
        (op, b["TimePeriod"]["Start"], b["TimePeriod"]["End"], b.get("GroupBy"))
        for op, b in _requests(moto)
    ]


def _ec2_requests(moto: LocalMoto) -> list[dict[str, list[str]]]:
    """EC2 query-protocol requests (form bodies) from moto's recorder, parsed."""
    with urllib.request.urlopen(  # noqa: S310 - loopback URL
        f"{moto.url}/moto-api/recorder/download-recording", timeout=10
    ) as resp:
        lines = resp.read().decode().splitlines()
    out = []
    for line in lines:
        entry = json.loads(line)
        body = entry["body"]
        raw = base64.b64decode(body).decode() if entry.get("body_encoded") else body
        form = urllib.parse.parse_qs(raw or "")
        if form.get("Action", [""])[0].startswith("Describe"):
            out.append(form)
    return out


async def _download(user: RoomUser, event: SeenEvent, to: Path) -> bytes:
    """An uploaded image through the authenticated media API (Matrix spec v1.11,
    GET /_matrix/client/v1/media/download/{serverName}/{mediaId})."""
    server, media = event.content["url"].removeprefix("mxc://").split("/", 1)
    url = f"{user.client.homeserver}/_matrix/client/v1/media/download/{server}/{media}"
    headers = {"Authorization": f"Bearer {user.client.access_token}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        data = await resp.read()
    await asyncio.to_thread(to.write_bytes, data)
    return data


TAGGED = {"Name$limesurvey": 5.0, "Name$releases": 33.0}


def _by_tag(i: int) -> dict[str, float]:
    # The untagged spend doubles in the second week; "Name$" is how Cost Explorer keys it.
    return {**TAGGED, "Name$": 2.0 if i < 7 else 4.0, "Name$archeology": 0.5}


USAGE = (
    "usage: `!costs [week|month|YYYY-MM-DD..YYYY-MM-DD] [--service SERVICE] "
    "[--by service|usage-type|tag:KEY]`"
)


async def test_costs_by_tag_and_by_usage_type(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, moto: LocalMoto
) -> None:
    moto.reset()
    moto.queue_cost_results([daily_results("2025-11-11", 14, _by_tag)])
    bot = make_bot(edit=_aws(moto.url, top=2), clock=_at(2025, 11, 25, 14, 0))
    await bot.start()
    moto.start_recording()
    alice = people["alice"]

    body = (await alice.ask(room, "!costs --by tag:Name", bot.user_id, timeout=30)).body
    assert body.startswith(
        "AWS costs by tag Name, last 7 days (2025-11-18 – 2025-11-24): $297.50, "
        "▲ $14.00 (+4.9 %) vs the previous 7 days"
    )
    rows = body.splitlines()
    # top 2 (releases, limesurvey), archeology left out, the untagged spend its own last row.
    table = [r for r in rows if "$" in r and "AWS costs" not in r and "movers" not in r]
    assert [r.split()[0] for r in table[:-1]] == ["releases", "limesurvey"]
    assert table[-1].startswith("(untagged)") and "$28.00" in table[-1] and "$14.00" in table[-1]
    assert "▲ $14.00 (+100.0 %)" in table[-1]
    assert "archeology" not in "\n".join(table)
    assert body.endswith(BASIS)
    assert _spans(moto) == [
        ("GetCostAndUsage", "2025-11-11", "2025-11-25", [{"Type": "TAG", "Key": "Name"}])
    ]

    moto.queue_cost_results(
        [daily_results("2025-09-26", 60, lambda i: {OUT: 40.0 if i >= 30 else 25.0, STORAGE: 3.0})]
    )
    moto.start_recording()
    usage = await alice.ask(room, "!costs month --by usage-type", bot.user_id, timeout=30)
    assert usage.body.startswith("AWS costs by usage type, last 30 days (2025-10-26 – 2025-11-24)")
    assert OUT in usage.body and "$1,200.00" in usage.body and "(untagged)" not in usage.body
    assert _spans(moto) == [
        (
            "GetCostAndUsage",
            "2025-09-26",
            "2025-11-25",
            [{"Type": "DIMENSION", "Key": "USAGE_TYPE"}],
        )
    ]

    for text, expected in [
        ("!costs --by region", "`region` is not a grouping"),
        ("!costs --by tag:", "is not a tag key"),
        ("!costs --by", "--by needs a value"),
    ]:
        reply = await alice.ask(room, text, bot.user_id)
        assert expected in reply.body and USAGE in reply.body, (text, reply.body)


def _usage_days(start: str, spikes: dict[str, dict[int, float]]) -> list[dict[str, Any]]:
    def day(i: int) -> dict[str, float]:
        values = {OUT: 20.0, STORAGE: 3.0}
        for key, by_day in spikes.items():
            if i in by_day:
                values[key] = by_day[i]
        return values

    return daily_results(start, 15, day)


async def test_anomalies_are_posted_once_with_mentions_across_a_restart(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, moto: LocalMoto
) -> None:
    moto.reset()
    alice, bob = people["alice"], people["bob"]
    anomalies = {"by": "usage-type", "mentions": [bob.client.user_id], "cron": "0 10 1 7 *"}
    edit = _aws(moto.url, anomalies=anomalies)
    # 14 days of $20 of transfer out, then $61 on the 24th.
    moto.queue_cost_results([_usage_days("2025-11-10", {OUT: {14: 61.0}})])
    bot = make_bot(edit=edit, clock=_at(2025, 11, 25, 10, 0))
    await bot.start()
    moto.start_recording()

    mark = alice.mark()
    ran = await bob.ask(room, "!jobs run aws-anomalies", bot.user_id, timeout=60)
    assert ran.body == "job aws-anomalies: ok: 1 new anomaly on 2025-11-24"
    posted = await alice.wait_for(
        lambda e: e.sender == bot.user_id and "AWS spend anomaly" in e.body, after=mark
    )
    assert posted.body == (
        f"{bob.client.user_id} ⚠️ AWS spend anomaly by usage type: {OUT} $61.00 yesterday "
        "(2025-11-24), 3.1× its usual $20.00 (median of the 14 days before)"
    )
    assert posted.content["m.mentions"] == {"user_ids": [bob.client.user_id]}
    assert _spans(moto) == [
        (
            "GetCostAndUsage",
            "2025-11-10",
            "2025-11-25",
            [{"Type": "DIMENSION", "Key": "USAGE_TYPE"}],
        )
    ]

    # The same day again (a manual run after the scheduled one; moto answers the same request
    # with the same figures): nothing new is posted. The job's own answer comes through the
    # same outbox after anything the job queued.
    mark = alice.mark()
    again = await bob.ask(room, "!jobs run aws-anomalies", bot.user_id, timeout=60)
    assert again.body == "job aws-anomalies: ok: 0 new anomalies on 2025-11-24, 1 already told"
    assert not [e for e in alice.seen[mark:] if "AWS spend anomaly" in e.body]
    await bot.stop()

    # The next day, after a restart: the transfer spike goes on (the room knows it), and
    # Lambda, never seen before, jumps: only Lambda is posted.
    moto.queue_cost_results(
        [_usage_days("2025-11-11", {OUT: {13: 61.0, 14: 65.0}, LAMBDA: {14: 30.0}})]
    )
    bot = make_bot(edit=edit, clock=_at(2025, 11, 26, 0, 5))
    await bot.start()
    mark = alice.mark()
    ran = await bob.ask(room, "!jobs run aws-anomalies", bot.user_id, timeout=60)
    assert ran.body == "job aws-anomalies: ok: 1 new anomaly on 2025-11-25, 1 already told"
    posted = await alice.wait_for(
        lambda e: e.sender == bot.user_id and "AWS spend anomaly" in e.body, after=mark
    )
    assert f"{LAMBDA} $30.00 yesterday (2025-11-25), new: its usual is $0.00" in posted.body
    assert OUT not in posted.body
    listing = await alice.ask(room, "!jobs", bot.user_id)
    assert "aws-anomalies" in listing.body and "0 10 1 7 *" in listing.body


def _monthly(months: list[tuple[str, str, float]]) -> list[dict[str, Any]]:
    """MONTHLY ResultsByTime without groups (AWS Cost Explorer API reference, GetCostAndUsage
    response: TimePeriod, Total.UnblendedCost.{Amount,Unit}, Groups, Estimated)."""
    return [
        {
            "TimePeriod": {"Start": start, "End": end},
            "Total": {"UnblendedCost": {"Amount": f"{amount}", "Unit": "USD"}},
            "Groups": [],
            "Estimated": False,
        }
        for start, end, amount in months
    ]


async def test_weekly_summary_names_top_tags_and_charts_the_savings(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    moto: LocalMoto,
    tmp_path: Path,
) -> None:
    moto.reset()
    moto.queue_cost_results(
        [
            daily_results("2025-10-20", 28, {S3: 30.0, EC2: 25.0}),
            _monthly([("2025-11-01", "2025-11-17", 1024.0)]),
            daily_results("2025-11-03", 14, _by_tag),
            _monthly(
                [
                    ("2025-06-01", "2025-07-01", 2610.0),
                    ("2025-07-01", "2025-08-01", 2450.0),
                    ("2025-08-01", "2025-09-01", 2100.0),
                    ("2025-09-01", "2025-10-01", 1950.0),
                    ("2025-10-01", "2025-11-01", 1820.0),
                    ("2025-11-01", "2025-11-17", 1024.0),
                ]
            ),
        ]
    )
    edit = _aws(moto.url, cost_tag="Name", baseline_since="2025-06-12", top=3)
    bot = make_bot(edit=edit, clock=_at(2025, 11, 17, 9, 0))
    await bot.start()
    moto.start_recording()
    alice, bob = people["alice"], people["bob"]

    mark = alice.mark()
    ran = await bob.ask(room, "!jobs run aws-weekly", bot.user_id, timeout=300)
    assert ran.body == "job aws-weekly: ok: posted: $385.00 this week"
    summary = await alice.wait_for(
        lambda e: e.sender == bot.user_id and e.body.startswith("📊 Weekly AWS costs"), after=mark
    )
    body = summary.body
    assert (
        "top by tag Name, last 7 days: releases $231.00 (±$0.00); limesurvey $35.00 (±$0.00); "
        "archeology $3.50 (±$0.00); (untagged) $28.00 (▲ $14.00 (+100.0 %))"
    ) in body
    assert "month to date (November 1–16, 16 day(s)): $1,024.00; run rate $1,920.00/month" in body
    assert (
        "savings since June 2025: $1,570.00 below baseline $2,500.00/month over 5 whole month(s)"
        " (chart below)"
    ) in body
    assert "forecast for November: unavailable" in body and body.endswith(BASIS)
    assert _spans(moto) == [
        ("GetCostAndUsage", "2025-10-20", "2025-11-17", [{"Type": "DIMENSION", "Key": "SERVICE"}]),
        ("GetCostAndUsage", "2025-11-01", "2025-11-17", None),
        ("GetCostForecast", "2025-11-17", "2025-12-01", None),
        ("GetCostAndUsage", "2025-11-03", "2025-11-17", [{"Type": "TAG", "Key": "Name"}]),
        ("GetCostAndUsage", "2025-06-01", "2025-11-17", None),
    ]
    # Actuals and forecast on the same basis: unblended.
    metrics = [b.get("Metrics") or [b.get("Metric")] for _, b in _requests(moto)]
    assert {m for ms in metrics for m in ms} == {"UnblendedCost", "UNBLENDED_COST"}

    def image(name: str) -> Callable[[SeenEvent], bool]:
        return lambda e: e.sender == bot.user_id and e.content.get("body") == name

    images: dict[str, SeenEvent] = {}
    for name in ("aws-spend-2025-11-17.png", "aws-savings-2025-11-17.png"):
        images[name] = await alice.wait_for(image(name), after=mark)
    # Saved for a person to look at (pytest --basetemp=DIR keeps them).
    for name, event in images.items():
        data = await _download(alice, event, tmp_path / name)
        assert data.startswith(b"\x89PNG") and len(data) > 5000


async def test_idle_prices_from_the_example_config_paging_and_own_snapshots(
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

    # A full first page (moto answers DescribeInstances 100 reservations at a time, as AWS
    # may page): the instances that matter come on the next page, behind a NextToken.
    def fill() -> None:
        for _ in range(100):
            ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.nano")

    await asyncio.to_thread(fill)
    xlarge = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="m4.xlarge")
    unpriced = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="m3.2xlarge")

    # The price table exactly as config.example.yaml has it (it lists no m4.xlarge).
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text())["aws"]["prices"]
    assert "m4.xlarge" not in example["instance_hour"]
    # moto builds its catalogue of public snapshots on DescribeSnapshots: over 15 s on a busy
    # 2-core machine, so the read timeout is generous here (a limit, not an expectation).
    edit = _aws(moto.url, prices=example, timeout_s=60)
    bot = make_bot(edit=edit, clock=_at(2025, 11, 25, 9, 0))
    await bot.start()
    moto.start_recording()
    body = (await people["alice"].ask(room, "!aws idle", bot.user_id, timeout=300)).body
    lines = body.splitlines()
    row = next(line for line in lines if xlarge["Instances"][0]["InstanceId"] in line)
    assert "m4.xlarge running" in row and "$146.00" in row, row
    row = next(line for line in lines if unpriced["Instances"][0]["InstanceId"] in line)
    assert "m3.2xlarge running" in row and row.rstrip().endswith("?"), row
    assert "(1 item(s) without a price in the table)" in body
    assert "add to the config: aws.prices.instance_hour: {m3.2xlarge: …}" in body
    assert "t3.nano" not in body

    described = _ec2_requests(moto)
    pages = [r for r in described if r["Action"] == ["DescribeInstances"]]
    assert len(pages) == 2 and "NextToken" in pages[1], pages
    snapshots = [r for r in described if r["Action"] == ["DescribeSnapshots"]]
    assert snapshots and all(r.get("Owner.1") == ["self"] for r in snapshots), snapshots


async def test_every_new_request_is_a_whole_day_range_on_new_years_day_just_after_midnight(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, moto: LocalMoto
) -> None:
    moto.reset()
    moto.queue_cost_results(
        [
            daily_results("2025-12-04", 28, {S3: 30.0, EC2: 25.0}),
            _monthly([("2025-12-01", "2026-01-01", 1900.0)]),
            daily_results("2025-12-18", 14, _by_tag),
            _monthly(
                [
                    ("2025-10-01", "2025-11-01", 2400.0),
                    ("2025-11-01", "2025-12-01", 2000.0),
                    ("2025-12-01", "2026-01-01", 1900.0),
                ]
            ),
            _usage_days("2025-12-17", {OUT: {14: 61.0}}),
        ]
    )
    anomalies = {"by": "usage-type", "cron": "0 10 1 7 *"}
    edit = _aws(moto.url, cost_tag="Name", baseline_since="2025-10-15", top=2, anomalies=anomalies)
    bot = make_bot(edit=edit, clock=_at(2026, 1, 1, 0, 0, 30))
    await bot.start()
    moto.start_recording()
    alice, bob = people["alice"], people["bob"]

    mark = alice.mark()
    ran = await bob.ask(room, "!jobs run aws-weekly", bot.user_id, timeout=300)
    assert ran.body == "job aws-weekly: ok: posted: $385.00 this week"
    summary = await alice.wait_for(
        lambda e: e.sender == bot.user_id and e.body.startswith("📊 Weekly AWS costs"), after=mark
    )
    assert "month to date (January): no figures yet" in summary.body
    assert "top by tag Name, last 7 days: releases $231.00" in summary.body
    assert (
        "savings since October 2025: $1,200.00 below baseline $2,500.00/month over 3 whole month(s)"
    ) in summary.body
    ran = await bob.ask(room, "!jobs run aws-anomalies", bot.user_id, timeout=60)
    assert ran.body == "job aws-anomalies: ok: 1 new anomaly on 2025-12-31"
    assert _spans(moto) == [
        ("GetCostAndUsage", "2025-12-04", "2026-01-01", [{"Type": "DIMENSION", "Key": "SERVICE"}]),
        ("GetCostAndUsage", "2025-12-01", "2026-01-01", None),
        ("GetCostForecast", "2026-01-01", "2026-02-01", None),
        ("GetCostAndUsage", "2025-12-18", "2026-01-01", [{"Type": "TAG", "Key": "Name"}]),
        ("GetCostAndUsage", "2025-10-01", "2026-01-01", None),
        ("GetCostAndUsage", "2025-12-17", "2026-01-01", [BY_USAGE]),
    ]
