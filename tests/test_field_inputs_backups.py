"""Field inputs for the backup checks that the backups tests do not cover.

zrepl 0.6 (github.com/zrepl/zrepl, daemon/snapper/periodic.go): when the snapper of a push job
cannot create a snapshot it enters ErrorWait with `Error` "one or more snapshots could not be
created, check logs for details", yet it still signals `snapshotsTaken`, so replication runs,
finds nothing new and ends `done` — fresh by its FinishAt while the newest snapshot ages.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from commands.backups import zrepl
from commands.backups.result import Verdicts
from tests.backups_fixtures import done_replication, push_job, zrepl_status

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
V = Verdicts("zrepl-pluto", timedelta(hours=1), "1h", NOW)
SNAP_ERROR = "one or more snapshots could not be created, check logs for details"


def test_a_push_job_whose_snapshotter_fails_is_an_error_though_replication_is_fresh() -> None:
    job = push_job(done_replication(timedelta(minutes=3), NOW), NOW)
    job["push"]["Snapshotting"]["Error"] = SNAP_ERROR
    job["push"]["Snapshotting"]["State"] = 32  # ErrorWait (State bit flags, 0.6)
    (result,) = zrepl.judge(zrepl_status({"rsyncnet": job}), [], V)
    assert result.state == "ERROR", result.detail
    assert f"snapshotting: {SNAP_ERROR}" in result.detail
    assert "3 min old" in result.detail  # what replication says is kept beside it


def test_a_later_release_nesting_the_snapper_error_under_periodic_is_read_too() -> None:
    job = push_job(done_replication(timedelta(minutes=3), NOW), NOW)
    job["push"]["Snapshotting"] = {
        "Type": "periodic",
        "Periodic": {"State": 32, "SleepUntil": "0001-01-01T00:00:00Z", "Error": SNAP_ERROR},
    }
    (result,) = zrepl.judge(zrepl_status({"rsyncnet": job}), [], V)
    assert result.state == "ERROR" and SNAP_ERROR in result.detail
