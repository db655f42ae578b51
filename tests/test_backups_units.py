"""The pure judging of zrepl and zfs output (one case per shape the tools really print), when
the room is told, the feature's tables and its check-name argument."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest

from bot.context import Runtime
from bot.errors import RemoteError, UserError
from bot.store import Store
from commands.backups import BackupsConfig, db, zfs, zrepl
from commands.backups import router as backups_router
from commands.backups.checks import BackupCheck
from commands.backups.db import StateRow
from commands.backups.result import CheckResult, State, Verdicts
from commands.backups.transitions import transition
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
    assert results[0].detail == (
        "newest snapshot of tank is 9 d old (from 2024-04-22 12:00 UTC; limit 1d)"
    )
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


# --- when the room is told (commands.backups.transitions) --------------------------------

T0 = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _row(state: str, since: timedelta, said: timedelta | None) -> StateRow:
    """A stored state, `since` and `said` (announced) as offsets from T0."""
    return StateRow("k", cast(State, state), T0 + since, None if said is None else T0 + said)


@pytest.mark.parametrize(
    ("prev", "state", "at", "announce", "saved", "since"),
    [
        # First sight: said unless OK; stored either way.
        (None, "OK", 0, None, ("OK", 0, None), 0),
        (None, "STALE", 0, "now", ("STALE", 0, 0), 0),
        (None, "ERROR", 0, "now", ("ERROR", 0, 0), 0),
        # A change is said at once, back to OK as a recovery.
        (_row("OK", timedelta(0), None), "STALE", 2, "now", ("STALE", 2, 2), 2),
        (_row("STALE", timedelta(0), timedelta(0)), "ERROR", 2, "now", ("ERROR", 2, 2), 2),
        (_row("ERROR", timedelta(0), timedelta(0)), "OK", 2, "recovered", ("OK", 2, 2), 2),
        # Unchanged: OK is never repeated; a bad state is reminded once remind_every passed
        # since it was last said (or since it began, if it never was), counted from its start.
        (_row("OK", timedelta(0), None), "OK", 30, None, None, 0),
        (_row("STALE", timedelta(0), timedelta(0)), "STALE", 0.9, None, None, 0),
        (_row("STALE", timedelta(0), timedelta(0)), "STALE", 1, "still", ("STALE", 0, 1), 0),
        (_row("ERROR", timedelta(0), HOUR), "ERROR", 1.5, None, None, 0),
        (_row("ERROR", timedelta(0), HOUR), "ERROR", 2, "still", ("ERROR", 0, 2), 0),
        (_row("STALE", timedelta(0), None), "STALE", 1, "still", ("STALE", 0, 1), 0),
    ],
)
def test_transitions(
    prev: StateRow | None,
    state: str,
    at: float,
    announce: str | None,
    saved: tuple[str, float, float | None] | None,
    since: float,
) -> None:
    def hours(n: float) -> datetime:
        return T0 + timedelta(hours=n)

    step = transition(prev, "k", cast(State, state), hours(at), HOUR)
    assert step.announce == announce
    if saved is None:
        assert step.save is None
    else:
        s, begun, said = saved
        assert step.save == StateRow(
            "k", cast(State, s), hours(begun), None if said is None else hours(said)
        )
    assert step.since == hours(since)


# --- the tables (commands.backups.db) and the check-name converter --------------------------


async def test_results_and_states_round_trip(any_store: Store) -> None:
    store = any_store
    assert await db.state_of(store, "pg:tank") is None and await db.recent_runs(store, "pg") == []
    for n in range(7):
        at = T0 + n * HOUR
        await db.add_result(store, CheckResult("pg", "OK", f"run {n}", at, {"n": n}, "tank"), at)
        await db.add_result(store, CheckResult("pg", "STALE", f"run {n}", None, {}, "media"), at)
        await db.add_result(store, CheckResult("other", "OK", "x"), at)
    runs = await db.recent_runs(store, "pg", 5)
    assert [(r.checked_at, r.item) for r in runs[:3]] == [
        (T0 + 6 * HOUR, "media"),
        (T0 + 6 * HOUR, "tank"),
        (T0 + 5 * HOUR, "media"),
    ]
    assert len(runs) == 10 and runs[-1].checked_at == T0 + 2 * HOUR
    tank = runs[1]
    assert tank.newest == T0 + 6 * HOUR and tank.facts == {"n": 6} and tank.state == "OK"
    assert runs[0].newest is None

    await db.save_state(store, StateRow("pg:tank", "STALE", T0, None))
    await db.save_state(store, StateRow("pg:tank", "STALE", T0, T0 + HOUR))
    assert await db.state_of(store, "pg:tank") == StateRow("pg:tank", "STALE", T0, T0 + HOUR)


def test_a_check_is_named_from_the_config_with_the_usage_on_a_mistake() -> None:
    checks = [
        BackupCheck(name=n, kind="zfs_snapshots", host="root@h", datasets=["t"], max_age=HOUR)
        for n in ("pg-zfs", "root-zfs")
    ]
    config = SimpleNamespace(
        section=lambda key, model: BackupsConfig(checks=checks) if key == "backups" else None
    )
    rt = cast(Runtime, SimpleNamespace(prefix="?", config=config))
    command = next(c for c in backups_router.commands if c.name == "backups")
    assert command.bind(["root-zfs"], rt).values["name"] is checks[1]
    assert command.bind([], rt).given == set()
    with pytest.raises(UserError) as err:
        command.bind(["nosuch"], rt)
    assert "no backup check named 'nosuch'; known: pg-zfs, root-zfs" in str(err.value)
    assert "usage: `?backups [name]`" in str(err.value)
    assert "!" not in command.help
