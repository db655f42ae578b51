"""The costs feature's pure parts: date windows, declared arguments, month lines."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from bot.args import Bound
from bot.cli import load, load_registry
from bot.clock import ManualClock
from bot.config import ConfigError
from bot.context import Runtime
from bot.errors import UserError
from bot.registry import Command
from commands.costs import PERIOD, REGIONS, SERVICE, router
from commands.costs.aws import AwsClients
from commands.costs.dates import (
    MonthWindows,
    Window,
    month_windows,
    next_month_start,
    parse_period,
    run_rate,
    utc_day,
)
from commands.costs.explorer import Got, MonthFigures
from commands.costs.render import month_lines
from commands.costs.report import Sum, parse_daily, parse_total
from tests.test_config import example_config

D = date.fromisoformat


def _span(w: Window | None) -> tuple[str, str] | None:
    return None if w is None else (w.start.isoformat(), w.end.isoformat())


# today → (to date, forecast, previous month, days in month, whole days so far)
MONTH_CASES = [
    ("2025-12-01", None, ("2025-12-01", "2026-01-01"), ("2025-11-01", "2025-12-01"), 31, 0),
    (
        "2025-11-30",
        ("2025-11-01", "2025-11-30"),
        ("2025-11-30", "2025-12-01"),
        ("2025-10-01", "2025-11-01"),
        30,
        29,
    ),
    (
        "2025-12-31",
        ("2025-12-01", "2025-12-31"),
        ("2025-12-31", "2026-01-01"),
        ("2025-11-01", "2025-12-01"),
        31,
        30,
    ),
    ("2026-01-01", None, ("2026-01-01", "2026-02-01"), ("2025-12-01", "2026-01-01"), 31, 0),
    (
        "2026-01-02",
        ("2026-01-01", "2026-01-02"),
        ("2026-01-02", "2026-02-01"),
        ("2025-12-01", "2026-01-01"),
        31,
        1,
    ),
    (
        "2028-02-29",
        ("2028-02-01", "2028-02-29"),
        ("2028-02-29", "2028-03-01"),
        ("2028-01-01", "2028-02-01"),
        29,
        28,
    ),
    (
        "2027-02-28",
        ("2027-02-01", "2027-02-28"),
        ("2027-02-28", "2027-03-01"),
        ("2027-01-01", "2027-02-01"),
        28,
        27,
    ),
    ("2026-03-01", None, ("2026-03-01", "2026-04-01"), ("2026-02-01", "2026-03-01"), 31, 0),
    (
        "2026-07-15",
        ("2026-07-01", "2026-07-15"),
        ("2026-07-15", "2026-08-01"),
        ("2026-06-01", "2026-07-01"),
        31,
        14,
    ),
]


@pytest.mark.parametrize(
    ("today", "to_date", "forecast", "previous", "days", "elapsed"), MONTH_CASES
)
def test_month_windows(
    today: str,
    to_date: tuple[str, str] | None,
    forecast: tuple[str, str],
    previous: tuple[str, str],
    days: int,
    elapsed: int,
) -> None:
    w = month_windows(D(today))
    assert _span(w.to_date) == to_date
    assert _span(w.forecast) == forecast
    assert _span(w.previous_month) == previous
    assert (w.days_in_month, w.elapsed) == (days, elapsed)
    for window in (w.to_date, w.forecast, w.previous_month, w.month):
        assert window is None or window.start < window.end


def test_every_day_of_four_years_gives_valid_windows() -> None:
    day = D("2025-01-01")
    while day < D("2029-01-01"):
        w = month_windows(day)
        assert w.month.start.day == 1 and w.month.start <= day < w.month.end
        assert w.forecast.start == day and w.forecast.end == w.month.end
        assert w.previous_month.end == w.month.start and w.previous_month.start.day == 1
        assert (w.to_date is None) == (day.day == 1)
        assert next_month_start(day) == w.month.end
        for name in ("week", "month"):
            p = parse_period(name, day)
            assert p.start < p.end == day and p.with_previous.start < p.start
        day += timedelta(days=1)


@pytest.mark.parametrize(
    ("moment", "day"),
    [
        (datetime(2025, 12, 1, 0, 30, tzinfo=UTC), "2025-12-01"),
        (datetime(2025, 11, 30, 23, 59, 59, tzinfo=UTC), "2025-11-30"),
        # 23:59 on 31 December in New York is already 1 January in UTC, Cost Explorer's day.
        (datetime(2025, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-5))), "2026-01-01"),
        (datetime(2026, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=2))), "2025-12-31"),
    ],
)
def test_the_day_is_the_utc_day(moment: datetime, day: str) -> None:
    assert utc_day(moment) == D(day)


def test_a_naive_clock_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        utc_day(datetime(2025, 12, 1, 0, 30))


def test_a_window_is_never_empty() -> None:
    with pytest.raises(ValueError, match="empty window"):
        Window("x", D("2025-12-01"), D("2025-12-01"))
    with pytest.raises(ValueError, match="empty window"):
        Window("x", D("2025-12-02"), D("2025-12-01"))


@pytest.mark.parametrize(
    ("text", "today", "span", "previous"),
    [
        (None, "2026-01-01", ("2025-12-25", "2026-01-01"), ("2025-12-18", "2025-12-25")),
        ("week", "2025-12-01", ("2025-11-24", "2025-12-01"), ("2025-11-17", "2025-11-24")),
        ("MONTH", "2026-03-01", ("2026-01-30", "2026-03-01"), ("2025-12-31", "2026-01-30")),
        (
            "2025-12-01..2026-01-01",
            "2026-01-01",
            ("2025-12-01", "2026-01-01"),
            ("2025-10-31", "2025-12-01"),
        ),
        # Today's partial figures may be asked for: the end is exclusive.
        (
            "2025-12-31..2026-01-01",
            "2025-12-31",
            ("2025-12-31", "2026-01-01"),
            ("2025-12-30", "2025-12-31"),
        ),
    ],
)
def test_periods(
    text: str | None, today: str, span: tuple[str, str], previous: tuple[str, str]
) -> None:
    p = parse_period(text, D(today))
    assert _span(p) == span and _span(p.previous) == previous
    assert p.time_period() == {"Start": span[0], "End": span[1]}


def _runtime(prefix: str, today: str) -> Runtime:
    """What the converters and the usage line read: the prefix and the clock."""
    clock = ManualClock(datetime.fromisoformat(f"{today}T09:30:00+00:00"))
    return cast(Runtime, SimpleNamespace(prefix=prefix, clock=clock))


def _command(name: str) -> Command:
    return next(c for c in router.commands if c.name == name)


def _bind(words: list[str], today: str = "2025-12-01", prefix: str = "!") -> Bound:
    return _command("costs").bind(words, _runtime(prefix, today))


COSTS_USAGE = (
    "`{p}costs [week|month|YYYY-MM-DD..YYYY-MM-DD] [--service SERVICE] "
    "[--by service|usage-type|tag:KEY]`"
)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fortnight"], "is not a period"),
        (["2026-02-10..2026-02-01"], "end must come after the start"),
        (["2026-02-01..2026-02-01"], "end must come after the start"),
        (["2026-02-30..2026-03-01"], "day is out of range"),
        (["2024-01-01..2025-06-01"], "at most 366 days"),
        (["2025-12-01..2025-12-03"], "no figures after today (2025-12-01)"),
        # Used to be an unexpected failure (OverflowError working out the previous period).
        (["0001-01-01..0001-01-05"], "the period before it would start before year 1"),
        (["week", "--service"], "--service needs a value (SERVICE)"),
        (["--service", "--bogus"], "--service: needs a service name"),
        (["--service="], "--service= has no value (SERVICE)"),
        (["--service", "S3", "--service", "EC2"], "--service given twice"),
        (["--bogus"], "unknown option `--bogus`"),
        (["week", "extra"], "unexpected `extra`"),
    ],
)
@pytest.mark.parametrize("prefix", ["!", "?"])
def test_bad_arguments_answer_with_the_usage(args: list[str], expected: str, prefix: str) -> None:
    with pytest.raises(UserError) as err:
        _bind(args, prefix=prefix)
    message = str(err.value)
    assert expected in message, message
    assert f"usage: {COSTS_USAGE.format(p=prefix)}" in message
    assert f"`{prefix}help costs`" in message


def _values(bound: Bound) -> tuple[Any, Any]:
    return bound.values[PERIOD.name], bound.values[SERVICE.name]


def test_good_arguments() -> None:
    window, service = _values(_bind(["month", "--service=s3"], "2026-01-01"))
    assert service == "Amazon Simple Storage Service" and window.label == "last 30 days"
    assert _span(window) == ("2025-12-02", "2026-01-01")
    window, service = _values(
        _bind(["--service", "Amazon CloudFront", "2025-12-01..2026-01-01"], "2026-01-01")
    )
    assert service == "Amazon CloudFront" and _span(window) == ("2025-12-01", "2026-01-01")
    bound = _bind([], "2026-01-01")
    assert _values(bound) == (None, None) and bound.given == set()


def test_the_period_is_read_against_the_runtime_clock() -> None:
    # The same words on another day of the bot's clock give another window.
    assert _span(_values(_bind(["week"], "2025-11-25"))[0]) == ("2025-11-18", "2025-11-25")
    assert _span(_values(_bind(["week"], "2026-01-01"))[0]) == ("2025-12-25", "2026-01-01")
    with pytest.raises(UserError, match=r"no figures after today \(2025-11-25\)"):
        _bind(["2025-11-20..2025-12-20"], "2025-11-25")


@pytest.mark.parametrize(
    ("words", "regions"),
    [
        ([], []),
        (["eu-west-1"], ["eu-west-1"]),
        (
            ["US-EAST-1", "ap-southeast-3", "us-gov-west-1"],
            ["us-east-1", "ap-southeast-3", "us-gov-west-1"],
        ),
    ],
)
def test_idle_regions(words: list[str], regions: list[str]) -> None:
    bound = _command("aws idle").bind(words, _runtime("!", "2025-12-01"))
    assert bound.values[REGIONS.name] == regions


@pytest.mark.parametrize("word", ["us-east-1;", "eu_west_1", "useast1", "--all", "us-east-"])
def test_idle_refuses_what_is_not_a_region(word: str) -> None:
    with pytest.raises(UserError) as err:
        _command("aws idle").bind(["eu-west-1", word], _runtime("?", "2025-12-01"))
    message = str(err.value)
    assert "is not an AWS region name" in message or "unknown option" in message, message
    assert "usage: `?aws idle [region…]`" in message


def test_help_lines_do_not_hard_code_the_prefix() -> None:
    for command in router.commands:
        assert "!" not in command.help, command.help
        assert command.usage("?").startswith(f"?{command.name}")


def test_clients_are_made_once_and_closed() -> None:
    aws = AwsClients(
        region="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        profile=None,
        access_key_id="testing",
        secret_access_key="testing",
        timeout_s=1,
    )
    assert aws.open_clients == []
    ec2 = aws.client("ec2", "eu-west-1")
    assert aws.client("ec2", "eu-west-1") is ec2
    aws.client("ce")
    assert aws.open_clients == [("ec2", "eu-west-1"), ("ce", "us-east-1")]
    aws.close()
    assert aws.open_clients == [] and aws.closed
    from bot.errors import RemoteError

    with pytest.raises(RemoteError, match="closed"):
        aws.client("ce")


def _figures(
    today: str,
    to_date: Got[Sum | None],
    previous: Got[Sum | None] | None,
    forecast: Got[float],
) -> MonthFigures:
    w: MonthWindows = month_windows(D(today))
    return MonthFigures(w, to_date, previous, forecast)


NO_FORECAST = Got[float](None, "ce:get_cost_forecast is not available here (500)")


def test_month_lines_on_the_first() -> None:
    lines = month_lines(
        _figures("2025-12-01", Got(None), Got(Sum(2345.67, False)), NO_FORECAST), 2500
    )
    assert lines == [
        "month to date (December): no figures yet — "
        "Cost Explorer has a day's costs only after the day ends",
        "November 2025, the month just ended: $2,345.67",
        "forecast for December: unavailable — ce:get_cost_forecast is not available here (500)",
        "savings tracker: November 2025 came to $2,345.67 vs baseline $2,500.00/month"
        " — $154.33/month below it",
    ]
    assert not any("$0.00" in line for line in lines)


def test_month_lines_on_the_first_with_nothing_known() -> None:
    lines = month_lines(
        _figures("2026-01-01", Got(None), Got(None, "AWS is throttling ce:x"), Got(3000.0)), 2500
    )
    assert lines[1] == "December 2025, the month just ended: unavailable — AWS is throttling ce:x"
    assert lines[2] == "forecast for January: $3,000.00"
    assert lines[3] == "savings tracker: no figures for January yet, nor for December 2025"


def test_month_lines_on_the_last_day() -> None:
    lines = month_lines(_figures("2025-11-30", Got(Sum(2900.0, True)), None, Got(110.0)), 2500)
    assert lines == [
        "month to date (November 1–29, 29 day(s)): $2,900.00; run rate $3,000.00/month",
        "forecast for November: $3,010.00",
        "savings tracker: run rate $3,000.00/month vs baseline $2,500.00/month"
        " — $500.00/month above it",
    ]


def test_month_lines_on_the_second_before_any_figures() -> None:
    lines = month_lines(
        _figures("2025-12-02", Got(None), Got(Sum(2600.0, False)), Got(2900.0)), 2500
    )
    assert lines == [
        "month to date (December): no figures yet — Cost Explorer has none for it yet",
        "November 2025, the month just ended: $2,600.00",
        "forecast for the rest of December (from 2025-12-02): $2,900.00",
        "savings tracker: November 2025 came to $2,600.00 vs baseline $2,500.00/month"
        " — $100.00/month above it",
    ]


def test_month_lines_without_a_baseline() -> None:
    lines = month_lines(_figures("2025-12-01", Got(None), Got(Sum(1.0, False)), Got(2.0)), None)
    assert not any(line.startswith("savings tracker") for line in lines)


def test_month_lines_when_month_to_date_fails() -> None:
    lines = month_lines(
        _figures("2025-11-30", Got(None, "AWS denied ce:get_cost_and_usage"), None, Got(110.0)),
        2500,
    )
    assert lines == [
        "month to date: unavailable — AWS denied ce:get_cost_and_usage",
        "forecast for the rest of November (from 2025-11-30): $110.00",
        "savings tracker: no run rate without the month to date",
    ]


def test_run_rate() -> None:
    assert run_rate(100.0, month_windows(D("2025-12-01"))) is None
    assert run_rate(100.0, month_windows(D("2025-12-02"))) == 3100.0
    assert run_rate(2900.0, month_windows(D("2025-11-30"))) == 3000.0


def test_unexpected_answers_are_remote_errors() -> None:
    from bot.errors import RemoteError

    with pytest.raises(RemoteError, match="unexpected shape"):
        parse_daily([{"TimePeriod": {}}])
    with pytest.raises(RemoteError, match="unexpected shape"):
        parse_total([{"Total": {"UnblendedCost": {"Amount": "lots"}}}])
    assert parse_total([]) == Sum(0.0, False)


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (
            "role: operator         #",
            "role: operatr #",
            "aws.on_demand[0].role: unknown role 'operatr': not under permissions.roles",
        ),
        (
            "region: eu-west-1      #",
            "region: eu-west1 #",
            "aws.on_demand[0].region: `eu-west1` is not an AWS region name",
        ),
        (
            "regions: [us-east-1, eu-west-1]",
            "regions: [us-east1]",
            "aws.regions[0]: `us-east1` is not an AWS region name",
        ),
        ("  region: us-east-1\n", "  region: useast\n", "aws.region: `useast`"),
        (
            'weekly_cron: "0 9 * * 1"',
            'weekly_cron: "0 9 * * 8"',
            "aws.weekly_cron: `0 9 * * 8`",
        ),
        ('cron: "0 10 * * *"', 'cron: "0 25 * * *"', "aws.anomalies.cron: `0 25"),
        (
            'mentions: ["@alice:example.org"]',
            'mentions: ["alice"]',
            "aws.anomalies.mentions[0]: `alice` is not a Matrix user id",
        ),
        ("m4.large: 0.10,", "m4.large: -1,", "aws.prices.instance_hour.m4.large: Input should"),
        ("gp2: 0.10,", "gp2: -0.10,", "aws.prices.ebs_gb_month.gp2: Input should be greater"),
        ("snapshot_gb_month: 0.05", "snapshot_gb_month: -3", "aws.prices.snapshot_gb_month:"),
    ],
)
def test_aws_config_mistakes_are_load_time_errors(
    tmp_path: Path, old: str, new: str, problem: str
) -> None:
    # Each of these used to load: a typo'd role left the machine to admins, a bad cron
    # crashed the start (check-config said OK), a negative price made costs savings.
    path = example_config(tmp_path)
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load(str(path), load_registry())
    assert [p for p in err.value.problems if problem in p and p.startswith(f"{path}: ")], (
        err.value.problems
    )
