"""Cost reports' pure parts: groupings, the anomaly rule, the price table, charts, paging."""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.stub import Stubber

from bot.mentions import Mentions
from commands.costs import DEFAULT_INSTANCE_HOUR, AwsConfig
from commands.costs.anomalies import Anomaly, anomaly_message, find_anomalies
from commands.costs.aws import AwsClients, describe_client_error
from commands.costs.chart import (
    MonthPoint,
    daily_spend_figure,
    daily_spend_png,
    savings_figure,
    savings_png,
)
from commands.costs.dates import Window, month_windows
from commands.costs.explorer import daily_costs, month_figures
from commands.costs.grouping import BY_SERVICE, UNTAGGED, parse_grouping
from commands.costs.idle import IdleItem, IdleReport
from commands.costs.render import month_lines, render_comparison, render_idle, top_line
from commands.costs.report import Daily, Sum, compare, parse_daily
from commands.costs.savings import month_points, savings_line, savings_window
from devstack.moto import daily_results

ROOT = Path(__file__).resolve().parent.parent
D = date.fromisoformat


# --- groupings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "kind", "key", "label"),
    [
        ("service", "DIMENSION", "SERVICE", "service"),
        ("usage-type", "DIMENSION", "USAGE_TYPE", "usage type"),
        ("USAGE_TYPE", "DIMENSION", "USAGE_TYPE", "usage type"),
        ("tag:Name", "TAG", "Name", "tag Name"),
        ("tag:cost-center", "TAG", "cost-center", "tag cost-center"),
    ],
)
def test_groupings(word: str, kind: str, key: str, label: str) -> None:
    g = parse_grouping(word)
    assert (g.kind, g.key, g.label) == (kind, key, label)
    assert g.group_by() == {"Type": kind, "Key": key}


@pytest.mark.parametrize("word", ["region", "tag:", "tag:a;b", "tag:" + "x" * 129, ""])
def test_bad_groupings(word: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        parse_grouping(word)


def test_tag_keys_become_values_and_untagged_its_own_line() -> None:
    g = parse_grouping("tag:Name")
    assert g.name_of("Name$limesurvey") == "limesurvey"
    assert g.name_of("Name$") == UNTAGGED
    assert BY_SERVICE.name_of("Amazon Simple Storage Service") == "Amazon Simple Storage Service"
    week = Window("last 7 days", D("2025-11-18"), D("2025-11-25"))
    daily = parse_daily(
        daily_results(
            "2025-11-11",
            14,
            lambda i: {"limesurvey": 5.0, UNTAGGED: 1.0 if i < 7 else 2.0, "releases": 30.0},
        )
    )
    c = compare(daily, week)
    # top 1 would otherwise push the untagged spend out; it stays, on its own last row.
    lines, _ = render_comparison(c, 1, "AWS costs by tag Name")
    table = lines[1]
    assert "releases" in table and "limesurvey" not in table
    assert table.splitlines()[-1].startswith(UNTAGGED) and "$14.00" in table
    assert top_line(c, 2, "tag Name") == (
        "top by tag Name, last 7 days: releases $210.00 (±$0.00); limesurvey $35.00 (±$0.00); "
        "(untagged) $14.00 (▲ $7.00 (+100.0 %))"
    )


# --- anomalies ----------------------------------------------------------------------------

DAY = D("2025-11-24")


def _series(history: list[float], last: float, key: str = "S3") -> Daily:
    days = len(history)
    out: Daily = {DAY - timedelta(days=days - i): {key: v} for i, v in enumerate(history)}
    out[DAY] = {key: last}
    return out


@pytest.mark.parametrize(
    ("history", "last", "flagged"),
    [
        ([20.0] * 14, 61.0, True),  # the example: 3.1x its usual $20
        ([20.0] * 14, 40.0, True),  # +$20 and +100 %
        ([20.0] * 14, 39.0, False),  # +$19 < min_amount
        ([200.0] * 14, 260.0, False),  # +$60 but only +30 % < min_share
        ([0.10] * 14, 0.40, False),  # 4x, but cents
        ([0.0] * 14, 25.0, True),  # new spend of $25
        ([20.0] * 7 + [100.0] * 7, 85.0, False),  # median $60: +$25, but +50 % needs > $90
        ([20.0] * 8 + [100.0] * 6, 61.0, True),  # one-off days do not move the median much
        ([20.0] * 10, 61.0, True),  # missing days (no entry) count as $0: median still $20
    ],
)
def test_the_anomaly_rule(history: list[float], last: float, flagged: bool) -> None:
    found = find_anomalies(_series(history, last), DAY, 14, 0.5, 20)
    assert bool(found) == flagged, found


def test_anomaly_words_and_mentions() -> None:
    found = find_anomalies(_series([20.0] * 14, 61.0, "S3 data transfer"), DAY, 14, 0.5, 20)
    assert found == [Anomaly("S3 data transfer", DAY, 61.0, 20.0)]
    pings = Mentions(["@alice:example.org"])
    text, html = anomaly_message(found, "usage type", DAY + timedelta(days=1), 14, pings)
    assert text == (
        "@alice:example.org ⚠️ AWS spend anomaly by usage type: S3 data transfer $61.00 "
        "yesterday (2025-11-24), 3.1× its usual $20.00 (median of the 14 days before)"
    )
    assert 'href="https://matrix.to/#/@alice:example.org"' in html
    new = Anomaly("AWS Lambda", DAY, 30.0, 0.0)
    assert "new: its usual is $0.00" in anomaly_message([new], "service", DAY, 14, Mentions())[0]


# --- prices -------------------------------------------------------------------------------


def test_the_example_price_table_adds_to_the_built_in_one() -> None:
    raw = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    cfg = AwsConfig.model_validate(raw["aws"])
    example = raw["aws"]["prices"]["instance_hour"]
    assert "m4.xlarge" not in example, "the example lists only some types"
    assert cfg.prices.instance_hour["m4.xlarge"] == DEFAULT_INSTANCE_HOUR["m4.xlarge"] == 0.20
    over = AwsConfig.model_validate(
        {"prices": {"instance_hour": {"m4.large": 0.11, "x9.huge": 9.0}, "ebs_gb_month": {}}}
    )
    assert over.prices.instance_hour["m4.large"] == 0.11  # the config's own price wins
    assert over.prices.instance_hour["x9.huge"] == 9.0
    assert over.prices.instance_hour["t2.micro"] == 0.0116
    assert over.prices.ebs_gb_month["gp2"] == 0.10


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"anomalies": {"by": "region"}}, "`region` is not a grouping"),
        ({"anomalies": {"min_share": 0}}, "greater than 0"),
        ({"cost_tag": "a;b"}, "`a;b` is not a tag key"),
        ({"baseline_since": "June"}, "baseline_since"),
    ],
)
def test_bad_report_settings_are_named(raw: dict[str, Any], expected: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=re.escape(expected)):
        AwsConfig.model_validate(raw)


def test_an_unknown_price_says_which_key_to_add() -> None:
    items = [
        IdleItem(
            "previous generation",
            "us-east-1",
            "i-1",
            "m3.2xlarge running",
            None,
            0.0,
            "aws.prices.instance_hour: {m3.2xlarge: …}",
        ),
        IdleItem(
            "volume",
            "us-east-1",
            "vol-1",
            "5 GiB gp9",
            None,
            0.0,
            "aws.prices.ebs_gb_month: {gp9: …}",
        ),
        IdleItem("volume", "us-east-1", "vol-2", "100 GiB gp2", 10.0, 10.0),
    ]
    text, html, saving = render_idle(IdleReport(items, {}), ["us-east-1"])
    assert saving == 10.0
    assert "(2 item(s) without a price in the table)" in text
    assert (
        'to price the "?" items, add to the config: aws.prices.ebs_gb_month: {gp9: …}; '
        "aws.prices.instance_hour: {m3.2xlarge: …}"
    ) in text
    assert "aws.prices.instance_hour" in html


# --- forecast and paging ------------------------------------------------------------------


def _client_error(code: str, status: int = 400) -> Any:
    import botocore.exceptions

    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetCostForecast",
    )


def test_a_forecast_without_history_says_why_and_leaves_the_rest() -> None:
    why = describe_client_error(_client_error("DataUnavailableException"), "ce:get_cost_forecast")
    assert why == (
        "Cost Explorer has too little cost history for ce:get_cost_forecast yet "
        "(DataUnavailableException: a new account, or one without costs so far)"
    )


def _stubbed() -> tuple[AwsClients, Stubber]:
    aws = AwsClients(
        region="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        profile=None,
        access_key_id="testing",
        secret_access_key="testing",
        timeout_s=5,
    )
    stub = Stubber(aws.client("ce"))
    stub.activate()
    return aws, stub


async def test_cost_explorer_pages_are_followed() -> None:
    """botocore's Stubber checks each request against the ce service model (the shapes of the
    AWS API reference) and gives the answers in order: the second page carries the token."""
    aws, stub = _stubbed()
    week = Window("w", D("2025-11-11"), D("2025-11-25"))
    first = daily_results("2025-11-11", 7, {"Name$a": 1.0, "Name$": 2.0})
    second = daily_results("2025-11-18", 7, {"Name$a": 3.0})
    base = {
        "TimePeriod": {"Start": "2025-11-11", "End": "2025-11-25"},
        "Granularity": "DAILY",
        "Metrics": ["UnblendedCost"],
        "GroupBy": [{"Type": "TAG", "Key": "Name"}],
    }
    stub.add_response(
        "get_cost_and_usage", {"ResultsByTime": first, "NextPageToken": "page-2"}, base
    )
    stub.add_response(
        "get_cost_and_usage", {"ResultsByTime": second}, {**base, "NextPageToken": "page-2"}
    )
    daily = await daily_costs(aws, week, parse_grouping("tag:Name"))
    stub.assert_no_pending_responses()
    assert len(daily) == 14 and daily[D("2025-11-24")] == {"a": 3.0}
    assert daily[D("2025-11-11")] == {"a": 1.0, UNTAGGED: 2.0}
    aws.close()


async def test_month_figures_stand_when_the_forecast_is_unavailable() -> None:
    aws, stub = _stubbed()
    windows = month_windows(D("2025-11-25"))
    stub.add_response(
        "get_cost_and_usage",
        {
            "ResultsByTime": [
                {
                    "TimePeriod": {"Start": "2025-11-01", "End": "2025-11-25"},
                    "Total": {"UnblendedCost": {"Amount": "1234.56", "Unit": "USD"}},
                    "Groups": [],
                    "Estimated": True,
                }
            ]
        },
        {
            "TimePeriod": {"Start": "2025-11-01", "End": "2025-11-25"},
            "Granularity": "MONTHLY",
            "Metrics": ["UnblendedCost"],
        },
    )
    stub.add_client_error(
        "get_cost_forecast",
        "DataUnavailableException",
        "Insufficient amount of historical data to generate forecast.",
        expected_params={
            "TimePeriod": {"Start": "2025-11-25", "End": "2025-12-01"},
            "Metric": "UNBLENDED_COST",
            "Granularity": "MONTHLY",
        },
    )
    figures = await month_figures(aws, windows)
    lines = month_lines(figures, 2500)
    assert lines[0].startswith("month to date (November 1–24, 24 day(s)): $1,234.56")
    assert lines[1] == (
        "forecast for November: unavailable — Cost Explorer has too little cost history for "
        "ce:get_cost_forecast yet (DataUnavailableException: a new account, or one without "
        "costs so far)"
    )
    assert lines[2].startswith("savings tracker: run rate $1,543.20/month")
    aws.close()


# --- savings and charts -------------------------------------------------------------------


def test_savings_months_and_line() -> None:
    assert savings_window(D("2025-06-12"), D("2025-06-01")) is None
    assert savings_window(D("2025-06-12"), D("2025-06-02")) == Window(
        "since June 2025", D("2025-06-01"), D("2025-06-02")
    )
    windows = month_windows(D("2025-11-15"))
    months = [
        (D("2025-06-01"), Sum(2600.0, False)),
        (D("2025-07-01"), Sum(2300.0, False)),
        (D("2025-11-01"), Sum(1400.0, True)),
    ]
    points = month_points(months, windows)
    assert points == [
        MonthPoint(D("2025-06-01"), 2600.0),
        MonthPoint(D("2025-07-01"), 2300.0),
        MonthPoint(D("2025-11-01"), 3000.0, partial=True),
    ]
    assert savings_line(points, 2500, D("2025-06-12")) == (
        "savings since June 2025: $100.00 below baseline $2,500.00/month over 2 whole month(s)"
        " (chart below)"
    )
    assert "no whole month yet" in savings_line(points[2:], 2500, D("2025-11-03"))


def _legend_is_off_the_data(fig: Any) -> None:
    fig.canvas.draw()
    for ax in fig.axes:
        legend = ax.get_legend()
        box, plot = legend.get_window_extent(), ax.get_window_extent()
        assert box.x0 >= plot.x1, "the legend must sit outside the plot, not on the data"


def test_the_charts_keep_legends_off_the_data(tmp_path: Path) -> None:
    """Writes both PNGs under tmp_path (look at them: `pytest --basetemp=DIR`)."""
    daily = parse_daily(
        daily_results(
            "2025-10-18",
            28,
            lambda i: {
                "Amazon Simple Storage Service": 30.0 + i,
                "Amazon Elastic Compute Cloud - Compute": 50.0,
                "EC2 - Other": 8.0,
                "AWS Lambda": 0.5,
            },
        )
    )
    top = ["Amazon Simple Storage Service", "Amazon Elastic Compute Cloud - Compute"]
    fig = daily_spend_figure(daily, top, "Daily AWS spend, last 4 weeks")
    _legend_is_off_the_data(fig)
    fig.savefig(tmp_path / "weekly.png", bbox_inches="tight")
    points = [
        MonthPoint(D("2025-06-01"), 2610.0),
        MonthPoint(D("2025-07-01"), 2450.0),
        MonthPoint(D("2025-08-01"), 2100.0),
        MonthPoint(D("2025-09-01"), 1950.0),
        MonthPoint(D("2025-10-01"), 1820.0),
        MonthPoint(D("2025-11-01"), 1790.0, partial=True),
    ]
    fig = savings_figure(points, 2500.0, "Monthly AWS spend since June 2025 vs baseline")
    _legend_is_off_the_data(fig)
    fig.savefig(tmp_path / "savings.png", bbox_inches="tight")
    png = savings_png(points, 2500.0, "t")
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    # A single month in progress (nothing whole yet) still draws.
    assert savings_png(points[-1:], 2500.0, "t").startswith(b"\x89PNG")


def test_a_weekly_chart_without_spend_still_draws(tmp_path: Path) -> None:
    # Days with $0 everywhere (a new account, credits only) used to fail the weekly job's
    # upload: matplotlib refused the day ticks on an axis without bars.
    daily = parse_daily(daily_results("2025-10-18", 28, lambda i: {"AWS Lambda": 0.0}))
    png = daily_spend_png(daily, ["AWS Lambda"], "Daily AWS spend, last 4 weeks")
    assert png.startswith(b"\x89PNG")
    (tmp_path / "no-spend.png").write_bytes(png)
    assert daily_spend_png({}, [], "t").startswith(b"\x89PNG")
