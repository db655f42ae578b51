"""Pure logic of the prometheus, heartbeat and zpool checks, and the order of `!backups`.

The zpool fixtures print what OpenZFS 2.2 prints (see tests/backups_fixtures.py); the
Prometheus answers are shaped as its HTTP API documents (docs/querying/api.md, 2.42).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.errors import RemoteError
from commands.backups import heartbeat, prometheus, worst_first, zpool
from commands.backups.checks import BackupCheck
from commands.backups.db import HeartbeatRow
from commands.backups.result import CheckResult, Verdicts
from tests.backups_fixtures import (
    DEGRADED_STATUS,
    ctime,
    mirror,
    scrub_done,
    scrub_running,
    zpool_list_lines,
    zpool_status_block,
)

NOW = datetime(2026, 1, 15, 5, 30, tzinfo=UTC)


def v(max_age: timedelta = timedelta(hours=1)) -> Verdicts:
    return Verdicts("c", max_age, "1h", NOW)


# --- prometheus ---------------------------------------------------------------------------


def test_each_series_is_judged_on_its_own_and_named_by_its_labels() -> None:
    last = NOW - timedelta(hours=26)
    series = [
        (
            {"zrepl_job": "rsyncnet", "instance": "pluto:9811", "job": "zrepl"},
            str(last.timestamp()),
        ),
        (
            {"zrepl_job": "local", "instance": "pluto:9811", "job": "zrepl"},
            str(NOW.timestamp() - 60),
        ),
    ]
    out = prometheus.judge(series, "timestamp", ["zrepl_job"], "successful replication", v())
    assert [(r.item, r.state) for r in out] == [
        ("zrepl_job=local", "OK"),
        ("zrepl_job=rsyncnet", "STALE"),
    ]
    assert out[1].detail == (
        "no successful replication for 1 d 2 h (last 2026-01-14 03:30 UTC; limit 1h)"
    )
    # Without chosen labels every label but __name__ names it.
    [one] = prometheus.judge(series[:1], "timestamp", [], "x", v())
    assert one.item == "instance=pluto:9811,job=zrepl,zrepl_job=rsyncnet"


def test_ages_nan_and_no_series() -> None:
    [ok] = prometheus.judge([({"a": "1"}, "120.5")], "age", [], "sample", v())
    assert ok.state == "OK" and ok.newest == NOW - timedelta(seconds=120.5)
    [nan] = prometheus.judge([({"a": "1"}, "NaN")], "age", [], "sample", v())
    assert nan.state == "ERROR" and nan.detail == "the value NaN is no age"
    [inf] = prometheus.judge([({}, "+Inf")], "timestamp", [], "sample", v())
    assert inf.state == "ERROR" and inf.item is None
    [empty] = prometheus.judge([], "age", [], "sample", v())
    assert empty.state == "STALE" and empty.detail == "no series: the query returned nothing"


def test_a_range_vector_is_refused_with_a_reason() -> None:
    with pytest.raises(RemoteError, match="returns a matrix, not an instant vector"):
        prometheus._series({"resultType": "matrix", "result": []})
    assert prometheus._series({"resultType": "scalar", "result": [1.0, "42"]}) == [({}, "42")]


# --- heartbeat ----------------------------------------------------------------------------


def test_heartbeat_signals_and_verdicts() -> None:
    grace = timedelta(hours=1)
    day = timedelta(days=1)
    row = HeartbeatRow("borg")
    [never] = [heartbeat.judge(row, grace, None, v(day))]
    assert never.state == "STALE" and never.detail == "no successful run reported yet"
    start = NOW - timedelta(hours=3)
    row = heartbeat.record(row, "start", start, None)
    row = heartbeat.record(row, "success", start + timedelta(minutes=12), None)
    ok = heartbeat.judge(row, grace, None, v(day))
    assert ok.state == "OK" and ok.detail.endswith("; the last run took 12 min"), ok.detail
    # max_age + grace passes: stale, saying since when.
    later = Verdicts("c", day, "1d", NOW + timedelta(hours=22))
    late = heartbeat.judge(row, grace, None, later)
    assert later.now - row.last_success > day  # type: ignore[operator]
    assert late.state == "OK"  # within the grace
    later = Verdicts("c", day, "1d", NOW + timedelta(hours=24))
    late = heartbeat.judge(row, grace, None, later)
    assert late.state == "STALE"
    assert "no successful run for 1 d 2 h (last 2026-01-15 02:42 UTC; limit 1d + 1h grace)" in (
        late.detail
    )
    # A start without an end beyond max_run.
    row = heartbeat.record(row, "start", NOW, None)
    hung = heartbeat.judge(
        row, grace, timedelta(hours=4), Verdicts("c", day, "1d", NOW + timedelta(hours=5))
    )
    assert hung.state == "STALE" and hung.detail.startswith("running for 5 h (since 2026-01-15")
    # A failure, with its lines; the duration of that run is kept.
    body = b"".join(f"line {i}\n".encode() for i in range(40)) + b"borg: Repository locked\xff\n"
    row = heartbeat.record(row, "fail", NOW + timedelta(hours=5), heartbeat.last_lines(body))
    failed = heartbeat.judge(row, grace, None, Verdicts("c", day, "1d", NOW + timedelta(hours=5)))
    assert failed.state == "ERROR"
    assert "the last run took 5 h" in failed.detail
    assert (
        failed.detail.endswith("borg: Repository locked\ufffd") and "line 20" not in failed.detail
    )
    assert failed.detail.count("\n") == heartbeat.MAX_LINES
    assert heartbeat.last_lines(b"  \n") is None


# --- zpool --------------------------------------------------------------------------------


def status_of(*blocks: str) -> str:
    return "\n".join(blocks)


def judged(
    listing: dict[str, tuple[str, int]], *blocks: str, pools: list[str] | None = None
) -> list[CheckResult]:
    out = zpool_list_lines(listing) + zpool.SEPARATOR + "\n" + status_of(*blocks)
    return zpool.judge(out, pools or [], timedelta(days=35), v(timedelta(days=35)))


def test_zpool_states_errors_and_scrubs() -> None:
    fresh = NOW - timedelta(days=3)
    old = NOW - timedelta(days=40)
    results = judged(
        {
            "zroot": ("ONLINE", 42),
            "tank": ("DEGRADED", 80),
            "old": ("ONLINE", 5),
            "new": ("ONLINE", 1),
        },
        zpool_status_block("zroot", "ONLINE", scrub_done(fresh), mirror("zroot")),
        zpool_status_block(
            "tank",
            "DEGRADED",
            scrub_running(NOW - timedelta(hours=2), 22.15, 8650),
            mirror("tank", "DEGRADED", (2, "sdb", "UNAVAIL", 0, 0, 0, "cannot open")),
            status=DEGRADED_STATUS,
        ),
        zpool_status_block("old", "ONLINE", scrub_done(old), mirror("old")),
        zpool_status_block("new", "ONLINE", "none requested\n", mirror("new")),
    )
    by = {r.item: r for r in results}
    assert by["zroot"].state == "OK" and by["zroot"].newest == fresh.replace(microsecond=0)
    assert by["zroot"].detail == (
        f"ONLINE; last scrub finished {fresh:%Y-%m-%d %H:%M} UTC (3 d ago; repaired 0B in "
        "01:02:03); 42% full"
    )
    assert by["tank"].state == "ERROR"
    assert by["tank"].detail.startswith(
        "state DEGRADED; sdb UNAVAIL (0 read, 0 write, 0 checksum errors; cannot open); "
        "scrub running since"
    )
    assert "22.15% done, 02:24:10 to go" in by["tank"].detail
    assert by["old"].state == "STALE" and by["old"].detail.startswith("ONLINE; no scrub for 40 d")
    assert by["new"].state == "STALE" and "never scrubbed" in by["new"].detail


def test_zpool_errors_counts_and_missing_pools() -> None:
    fresh = NOW - timedelta(days=3)
    [cksum, gone] = judged(
        {"zroot": ("ONLINE", 42)},
        zpool_status_block(
            "zroot",
            "ONLINE",
            scrub_done(fresh, errors=2, repaired="1.50M"),
            mirror("zroot", bad=(2, "sdb", "ONLINE", 0, 0, 17, "")),
            data_errors=2,
        ),
        pools=["zroot", "tank"],
    )
    assert cksum.state == "ERROR"
    assert "sdb ONLINE (0 read, 0 write, 17 checksum errors)" in cksum.detail
    assert "2 data errors, use '-v' for a list" in cksum.detail
    assert "with 2 errors" in cksum.detail
    assert gone.state == "ERROR" and gone.detail == "no pool named tank (the host has: zroot)"


def test_scrub_in_progress_within_limit_is_ok_and_ctime_parses() -> None:
    start = datetime(2026, 1, 4, 3, 5, 9, tzinfo=UTC)
    assert ctime(start) == "Sun Jan  4 03:05:09 2026"
    assert zpool.ctime(f"on {ctime(start)}\n") == start
    [r] = judged(
        {"zroot": ("ONLINE", 42)},
        zpool_status_block(
            "zroot", "ONLINE", scrub_running(NOW - timedelta(hours=1), 50.0, None), mirror("zroot")
        ),
    )
    assert r.state == "OK" and r.detail.startswith("ONLINE; scrub running since")
    assert "50.00% done" in r.detail


def test_zpool_output_without_a_pool_or_separator_is_an_error() -> None:
    with pytest.raises(RemoteError, match="the `zpool status` part is missing"):
        zpool.judge("zroot\tONLINE\t4\n", [], timedelta(days=1), v())
    with pytest.raises(RemoteError, match="printed no pool"):
        zpool.judge(f"{zpool.SEPARATOR}\nno pools available\n", [], timedelta(days=1), v())


# --- !backups order -----------------------------------------------------------------------


def test_backups_are_grouped_by_kind_worst_group_first() -> None:
    def check(name: str, kind: str) -> BackupCheck:
        extras: dict[str, dict[str, object]] = {
            "zfs_snapshots": {"host": "root@h", "datasets": ["a"], "max_age": "1h"},
            "zpool": {"host": "root@h", "max_scrub_age": "35d"},
            "heartbeat": {"token": "x" * 20, "max_age": "1d"},
        }
        extra = extras[kind]
        return BackupCheck.model_validate({"name": name, "kind": kind, **extra})

    checks = [check("snaps", "zfs_snapshots"), check("pools", "zpool"), check("borg", "heartbeat")]
    results = [
        CheckResult("snaps", "OK", "", item="a"),
        CheckResult("snaps", "STALE", "", item="b"),
        CheckResult("pools", "OK", "", item="zroot"),
        CheckResult("pools", "ERROR", "", item="tank"),
        CheckResult("borg", "STALE", ""),
    ]
    order = [(r.name, r.item) for r in worst_first(results, checks)]
    assert order == [
        ("pools", "tank"),
        ("pools", "zroot"),
        ("snaps", "b"),
        ("snaps", "a"),
        ("borg", None),
    ]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"kind": "zpool", "host": "root@h"}, "needs max_scrub_age"),
        ({"kind": "zpool", "host": "root@h", "max_scrub_age": "35d", "max_age": "1d"}, "remove"),
        ({"kind": "prometheus", "url": "prometheus:9090", "query": "up", "max_age": "1h"}, "url"),
        ({"kind": "prometheus", "url": "http://p:9090", "query": " ", "max_age": "1h"}, "query"),
        ({"kind": "prometheus", "url": "http://p", "query": "up", "value_is": "date"}, "value_is"),
        ({"kind": "heartbeat", "max_age": "1d"}, "needs token"),
        ({"kind": "heartbeat", "max_age": "1d", "token": "short"}, "at least 16"),
        ({"kind": "heartbeat", "token": "x" * 20}, "needs max_age"),
    ],
)
def test_each_kind_says_what_it_lacks(fields: dict[str, object], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        BackupCheck.model_validate({"name": "c", **fields})
