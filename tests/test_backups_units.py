"""The pure judging of zrepl and zfs output, one case per shape the tools really print."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.errors import RemoteError
from commands.backups import zfs, zrepl
from commands.backups.result import CheckResult, Verdicts
from tests.backups_fixtures import (
    attempt,
    done_replication,
    fs_report,
    push_job,
    replication,
    sink_job,
    snap_job,
    zfs_lines,
    zrepl_status,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
V = Verdicts("zrepl-pluto", timedelta(hours=1), "1h", NOW)


def judge(jobs: dict[str, Any], wanted: list[str] | None = None) -> dict[str, CheckResult]:
    return {r.item or "": r for r in zrepl.judge(zrepl_status(jobs), wanted or [], V)}


def test_a_done_fresh_push_job_is_ok() -> None:
    rsync = judge({"rsyncnet": push_job(done_replication(timedelta(minutes=12), NOW), NOW)})
    assert list(rsync) == ["rsyncnet"]
    result = rsync["rsyncnet"]
    assert result.state == "OK" and result.key == "zrepl-pluto:rsyncnet"
    assert result.detail == "newest replication of job rsyncnet 12 min old"
    assert result.newest == NOW - timedelta(minutes=12)


def test_only_the_last_attempt_counts() -> None:
    first_start = NOW - timedelta(minutes=30)
    first_end = first_start + timedelta(minutes=1)
    failed = attempt(
        "filesystem-error",
        first_start,
        first_end,
        [fs_report("zroot/pg", first_end, "step-error", step_error="connection reset by peer")],
    )
    done_at = NOW - timedelta(minutes=10)
    done = attempt("done", first_end, done_at, [fs_report("zroot/pg", done_at)])
    job = push_job(replication([failed, done], first_start), NOW)
    result = judge({"rsyncnet": job})["rsyncnet"]
    assert result.state == "OK", result.detail
    assert "10 min old (after 1 failed attempt(s))" in result.detail


def test_a_failed_filesystem_is_named_with_its_step_error() -> None:
    start = NOW - timedelta(minutes=20)
    end = start + timedelta(minutes=3)
    fss = [
        fs_report("zroot/pg", end),
        fs_report(
            "zroot/root",
            end,
            "step-error",
            step_error="zfs send: cannot hold: dataset is busy",
        ),
    ]
    job = push_job(replication([attempt("filesystem-error", start, end, fss)], start), NOW)
    result = judge({"rsyncnet": job})["rsyncnet"]
    assert result.state == "ERROR"
    assert result.detail == (
        "job rsyncnet: last replication failed: zroot/root: zfs send: cannot hold: dataset is busy"
    )


def test_a_planning_error_and_a_pending_reconnect_are_said() -> None:
    start = NOW - timedelta(minutes=2)
    failed = attempt("planning-error", start, start, [], plan_error="dial tcp: i/o timeout")
    rep = replication([failed], start, reconnect_until=NOW + timedelta(minutes=8))
    result = judge({"rsyncnet": push_job(rep, NOW)})["rsyncnet"]
    assert result.state == "ERROR"
    assert "planning failed: dial tcp: i/o timeout" in result.detail
    assert "zrepl waits to reconnect until 2024-05-01 12:08 UTC" in result.detail
    gave_up = replication([failed], start, reconnect_error="context deadline exceeded")
    result = judge({"rsyncnet": push_job(gave_up, NOW)})["rsyncnet"]
    assert "reconnecting failed: context deadline exceeded" in result.detail


def test_replication_null_is_stale_with_its_reason() -> None:
    result = judge({"rsyncnet": push_job(None, NOW)})["rsyncnet"]
    assert result.state == "STALE"
    assert result.detail == "job rsyncnet: no replication since the zrepl daemon started"


def test_a_running_replication_is_ok_until_it_runs_longer_than_max_age() -> None:
    def running(started_ago: timedelta) -> CheckResult:
        start = NOW - started_ago
        fss = [fs_report("zroot/pg", start, "stepping")]
        job = push_job(replication([attempt("fan-out-filesystems", start, None, fss)], start), NOW)
        return judge({"rsyncnet": job})["rsyncnet"]

    assert running(timedelta(minutes=5)).state == "OK"
    long = running(timedelta(hours=3))
    assert long.state == "STALE" and "replication running for 3 h (limit 1h)" in long.detail


def test_internal_sink_and_snap_jobs_are_judged_only_when_listed() -> None:
    jobs = {
        "rsyncnet": push_job(done_replication(timedelta(minutes=12), NOW), NOW),
        "backup-sink": sink_job(),
        "tmp-snap": snap_job(NOW),
    }
    assert list(judge(jobs)) == ["rsyncnet"]
    listed = judge(jobs, ["rsyncnet", "tmp-snap", "backup-sink", "_control"])
    assert listed["tmp-snap"].state == "OK"
    assert listed["tmp-snap"].detail == "newest snapshot by job tmp-snap 5 min old"
    assert listed["backup-sink"].state == "OK" and "no age" in listed["backup-sink"].detail
    assert listed["_control"].state == "ERROR" and "internal" in listed["_control"].detail


def test_no_jobs_at_all_is_an_error_of_the_whole_check() -> None:
    with pytest.raises(RemoteError, match="zrepl reports no jobs"):
        zrepl.judge('{"Jobs": {}}\n', [], V)
    with pytest.raises(RemoteError, match="no push or pull job to judge"):
        zrepl.judge(zrepl_status({"backup-sink": sink_job()}), [], V)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("zrepl: not a tty", "did not print JSON"),
        ("", "did not print JSON"),
        ("[]", 'without a "Jobs" object'),
        ('{"Jobs": []}', 'without a "Jobs" object'),
    ],
)
def test_output_that_is_not_zrepl_status_is_an_error(text: str, reason: str) -> None:
    with pytest.raises(RemoteError, match=reason):
        zrepl.judge(text, [], V)


@pytest.mark.parametrize(
    ("job", "reason"),
    [
        ("push", "the job is str, not an object"),
        ({"type": "push"}, 'no "push" object beside "type": "push"'),
        ({"type": "push", "JobSpecific": {}}, 'no "push" object'),
        ({"type": "push", "push": {"Replication": {"Attempts": "x"}}}, "is str, not a list"),
        (
            {
                "type": "push",
                "push": {"Replication": {"Attempts": [{"State": "done", "FinishAt": 12}]}},
            },
            "is int, not a time",
        ),
        (
            {"type": "push", "push": {"Replication": {"Attempts": [{"State": "weird"}]}}},
            "unknown attempt state 'weird'",
        ),
        (
            {
                "type": "push",
                "push": {"Replication": {"Attempts": [{"State": "done", "FinishAt": "yesterday"}]}},
            },
            "not an RFC 3339 time",
        ),
    ],
)
def test_an_odd_job_is_an_error_for_that_job_alone(job: Any, reason: str) -> None:
    jobs = {"good": push_job(done_replication(timedelta(minutes=3), NOW), NOW), "odd": job}
    results = judge(jobs, ["good", "odd"])
    assert results["good"].state == "OK"
    assert results["odd"].state == "ERROR" and reason in results["odd"].detail, results["odd"]


def test_a_listed_job_zrepl_does_not_have_is_an_error() -> None:
    results = judge({"rsyncnet": push_job(None, NOW)}, ["offsite"])
    assert results["offsite"].detail == "zrepl has no job 'offsite' (its jobs: rsyncnet)"


def test_go_times_with_offsets_and_nanoseconds() -> None:
    text = zrepl_status({"rsyncnet": push_job(done_replication(timedelta(minutes=7), NOW), NOW)})
    finish = json.loads(text)["Jobs"]["rsyncnet"]["push"]["Replication"]["Attempts"][0]["FinishAt"]
    assert finish.endswith("417+02:00")  # CEST, nanoseconds, as Go prints it
    [result] = zrepl.judge(text, [], V)
    assert result.newest == NOW - timedelta(minutes=7)


# zfs list, per dataset.
ZV = Verdicts("tank-zfs", timedelta(days=1), "1d", NOW)


def test_each_dataset_gets_its_own_result() -> None:
    out = zfs_lines("tank", [timedelta(days=9), timedelta(days=10)], NOW)
    results = zfs.judge(out, "", 0, ["tank", "tank/media"], None, False, ZV)
    assert [(r.item, r.state) for r in results] == [("tank", "STALE"), ("tank/media", "STALE")]
    assert results[0].detail == "newest snapshot of tank is 9 d old (limit 1d)"
    assert results[1].detail == "no snapshots of tank/media"


def test_a_dataset_zfs_cannot_open_is_an_error_beside_the_others() -> None:
    out = zfs_lines("tank", [timedelta(hours=2)], NOW)
    err = "cannot open 'tank/media': dataset does not exist\n"
    results = zfs.judge(out, err, 1, ["tank", "tank/media"], None, True, ZV)
    assert results[0].state == "OK" and "it holds 5.0 MiB" in results[0].detail
    assert results[1].state == "ERROR"
    assert results[1].detail == "cannot list snapshots of tank/media: dataset does not exist"


def test_zfs_failures_that_name_no_dataset_fail_the_whole_check() -> None:
    with pytest.raises(RemoteError, match="`zfs` exited 127: sh: 1: zfs: not found"):
        zfs.judge("", "sh: 1: zfs: not found\n", 127, ["tank"], None, False, ZV)
    with pytest.raises(RemoteError, match="unexpected `zfs list` output on line 1"):
        zfs.judge("NAME  CREATION\n", "", 0, ["tank"], None, False, ZV)
    with pytest.raises(RemoteError, match="creation 99999999999999999999 is no time"):
        zfs.judge("tank@a\t99999999999999999999\t0\n", "", 0, ["tank"], None, False, ZV)


def test_a_prefix_judges_every_dataset_found_under_it() -> None:
    out = zfs_lines("data/pluto/pg", [timedelta(hours=1)], NOW) + zfs_lines(
        "data/pluto/root", [timedelta(days=3)], NOW
    )
    results = zfs.judge(out, "", 0, [], "data/pluto/", False, ZV)
    assert [(r.key, r.state) for r in results] == [
        ("tank-zfs:data/pluto/pg", "OK"),
        ("tank-zfs:data/pluto/root", "STALE"),
    ]
    [empty] = zfs.judge("", "", 0, [], "data/pluto/", False, ZV)
    assert empty.item is None and empty.detail == "no snapshots under data/pluto/"
    assert zfs.list_command([], "data/pluto/").endswith("-r data/pluto")
    assert zfs.list_command(["tank", "tank/my media"], None).endswith("-d 1 tank 'tank/my media'")
