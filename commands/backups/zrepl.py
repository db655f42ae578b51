"""Judging `zrepl status --mode raw` (zrepl 0.6), one result per zrepl job.

The shape, from zrepl's source (github.com/zrepl/zrepl, 0.6):
- `daemon/daemon.go` `Status`: `{"Jobs": {NAME: job status, …}, "Global": {…}}`; internal
  jobs (`_control`, `_prometheus`) are in `Jobs` too.
- `daemon/job/job.go` `Status.MarshalJSON`: a job's status is `{"type": T, T: specific}` —
  the specifics sit under the job's type name (`"push": {…}`), never under `JobSpecific`.
  Types: `push`, `pull` (active), `sink`, `source` (passive), `snap`, `internal` (specifics
  `null`).
- `daemon/job/active.go` `ActiveSideStatus`: `{"Replication": report or null,
  "PruningSender", "PruningReceiver", "Snapshotting"}`. The report is replaced at each
  invocation and is `null` until the first one since the daemon started.
- `replication/report/replication_report.go` `Report`: `StartAt`, `FinishAt`,
  `WaitReconnectSince`, `WaitReconnectUntil`, `WaitReconnectError` (`{"Err", "Time"}`),
  `Attempts[]`; an attempt has `State` (`planning`, `planning-error`,
  `fan-out-filesystems`, `filesystem-error`, `done`), `StartAt`, `FinishAt`, `PlanError`,
  `Filesystems[]` with `Info.Name`, `State` (`planning`, `planning-error`, `stepping`,
  `step-error`, `done`), `PlanError`, `StepError`, `CurrentStep`, `Steps[]`.
- `replication/driver/replication_driver.go`: one invocation retries up to
  ZREPL_REPLICATION_MAX_ATTEMPTS times; all attempts but the last ended in errors, so the
  last attempt alone says how the invocation went. `run.finishedAt` is never set there, so
  the report's own `FinishAt` stays zero; the last attempt's `FinishAt` is the one to read.
- Times are Go `time.Time` (RFC 3339 with nanoseconds); the zero time
  `0001-01-01T00:00:00Z` means "not set".
- `daemon/job/snapjob.go` `SnapJobStatus`: `{"Pruning", "Snapshotting"}`;
  `daemon/job/passive.go` `PassiveStatus`: `{"Snapper"}`; a snapper report carries `Error`
  and `Progress[]` (`DoneAt` per filesystem), in later releases under `Periodic`/`Cron`.
- `daemon/snapper/periodic.go`: a snapper that cannot snapshot sets `Error` and still signals
  replication, which then ends `done` with nothing new: a push job's snapshotting error makes
  it an ERROR however fresh its replication.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from bot.errors import RemoteError
from bot.messages import human_duration
from commands.backups.result import CheckResult, Verdicts

COMMAND = "zrepl status --mode raw"
ACTIVE = ("push", "pull")
PASSIVE = ("snap", "sink", "source")
_FAILED = ("planning-error", "filesystem-error")
_RUNNING = ("planning", "fan-out-filesystems")


class ShapeError(Exception):
    """The JSON is not shaped as zrepl 0.6 prints it; the message says where."""


def parse_jobs(text: str) -> dict[str, Any]:
    """The `Jobs` map of `zrepl status --mode raw`, or RemoteError saying what is wrong."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        first = text.strip().splitlines()[:1] or ["no output"]
        raise RemoteError(
            f"`{COMMAND}` did not print JSON ({exc}); it printed: {first[0][:120]!r}"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("Jobs"), dict):
        raise RemoteError(f'`{COMMAND}` printed JSON without a "Jobs" object')
    jobs: dict[str, Any] = doc["Jobs"]
    if not jobs:
        raise RemoteError("zrepl reports no jobs (Jobs is empty): is its config loaded?")
    return jobs


def judge(text: str, wanted: list[str], verdicts: Verdicts) -> list[CheckResult]:
    """One result per listed job, or per push/pull job when none are listed.

    Raises RemoteError when the output as a whole is unusable (not JSON, no jobs, nothing to
    judge); an odd shape inside one job is an ERROR for that job only.
    """
    jobs = parse_jobs(text)
    names = wanted or sorted(
        name for name, job in jobs.items() if isinstance(job, dict) and job.get("type") in ACTIVE
    )
    if not names:
        raise RemoteError(
            f"zrepl has no push or pull job to judge (it has {', '.join(sorted(jobs))}); "
            "list the jobs to check under `jobs`"
        )
    results = []
    for name in names:
        try:
            results.append(_judge_job(name, jobs, verdicts))
        except ShapeError as exc:
            results.append(
                verdicts.result("ERROR", f"job {name}: unexpected `{COMMAND}` output: {exc}", name)
            )
    return results


def _judge_job(name: str, jobs: dict[str, Any], v: Verdicts) -> CheckResult:
    if name not in jobs:
        have = ", ".join(sorted(j for j in jobs if not j.startswith("_"))) or "none"
        return v.result("ERROR", f"zrepl has no job {name!r} (its jobs: {have})", name)
    job = jobs[name]
    if job is None:
        return v.result("ERROR", f"zrepl reports no status for job {name}", name)
    job = _obj(job, "the job")
    kind = job.get("type")
    if not isinstance(kind, str):
        raise ShapeError('no "type"')
    if kind == "internal":
        return v.result("ERROR", f"job {name} is zrepl's internal job; it has no backups", name)
    if kind not in job:
        raise ShapeError(f'no "{kind}" object beside "type": "{kind}"')
    body = _obj(job[kind], f'"{kind}"')
    if kind in ACTIVE:
        result = _judge_replication(name, body.get("Replication"), v)
        # A push job whose snapshotter fails still replicates, finding nothing new: "done"
        # and fresh, while the newest snapshot grows old. Its error outranks the freshness.
        failing = _snapper_errors(body.get("Snapshotting"))
        if failing:
            result.state = "ERROR"
            result.detail = f"job {name}: " + "; ".join(failing)[:400] + f" ({result.detail})"
        return result
    if kind in PASSIVE:
        return _judge_snapper(name, kind, body, v)
    return v.result("ERROR", f"job {name} has type {kind!r}, which this check does not know", name)


def _judge_replication(name: str, report: Any, v: Verdicts) -> CheckResult:
    if report is None:
        return v.result("STALE", f"job {name}: no replication since the zrepl daemon started", name)
    report = _obj(report, "Replication")
    attempts = _list(report.get("Attempts"), "Replication.Attempts")
    if not attempts:
        return _running(name, _time(report.get("StartAt"), "Replication.StartAt"), v, {})
    last = _obj(attempts[-1], "the last attempt")
    state = last.get("State")
    failed_before = len(attempts) - 1
    facts: dict[str, Any] = {"state": state, "attempts": len(attempts)}
    if state == "done":
        finished = _time(last.get("FinishAt"), "FinishAt of the last attempt")
        facts["finished"] = finished.isoformat() if finished else None
        filesystems = _list(last.get("Filesystems"), "Filesystems")
        if finished is None:
            raise ShapeError("the last attempt is done but has no FinishAt")
        if not filesystems:
            return v.result(
                "STALE",
                f"job {name}: the last replication matched no filesystems "
                "(check the job's `filesystems` filter)",
                name,
                finished,
                facts,
            )
        result = v.by_age(finished, f"replication of job {name}", name, facts)
        if failed_before:
            result.detail += f" (after {failed_before} failed attempt(s))"
        return result
    if state in _FAILED:
        return _failed(name, report, last, v, facts)
    if state in _RUNNING:
        started = _time(last.get("StartAt"), "StartAt of the last attempt")
        return _running(name, started, v, facts)
    raise ShapeError(f"unknown attempt state {state!r}")


def _failed(
    name: str, report: dict[str, Any], last: dict[str, Any], v: Verdicts, facts: dict[str, Any]
) -> CheckResult:
    errors = []
    plan_error = _error(last.get("PlanError"), "PlanError")
    if plan_error:
        errors.append(f"planning failed: {plan_error}")
    for fs in _list(last.get("Filesystems"), "Filesystems"):
        fs = _obj(fs, "a filesystem")
        info = fs.get("Info")
        fs_name = info.get("Name") if isinstance(info, dict) else None
        error = _error(fs.get("StepError"), "StepError") or _error(fs.get("PlanError"), "PlanError")
        if error:
            errors.append(f"{fs_name or 'a filesystem'}: {error}")
    reason = "; ".join(errors) or f"state {last.get('State')}"
    detail = f"job {name}: last replication failed: {reason}"
    if len(detail) > 600:
        detail = detail[:600] + "…"
    gave_up = _error(report.get("WaitReconnectError"), "WaitReconnectError")
    until = _time(report.get("WaitReconnectUntil"), "WaitReconnectUntil")
    if gave_up:
        detail += f"; reconnecting failed: {gave_up[:200]}"
    elif until is not None and until > v.now:
        detail += f"; zrepl waits to reconnect until {until:%Y-%m-%d %H:%M} UTC"
    facts["errors"] = errors
    return v.result("ERROR", detail, name, None, facts)


def _running(
    name: str, started: datetime | None, v: Verdicts, facts: dict[str, Any]
) -> CheckResult:
    if started is None:
        return v.result("OK", f"job {name}: replication is starting", name, None, facts)
    running = max(0.0, (v.now - started).total_seconds())
    if running > v.max_age.total_seconds():
        detail = (
            f"job {name}: replication running for {human_duration(running)} "
            f"(limit {v.max_age_text}), since {started:%Y-%m-%d %H:%M} UTC"
        )
        return v.result("STALE", detail, name, None, facts)
    return v.result(
        "OK", f"job {name}: replicating for {human_duration(running)}", name, None, facts
    )


def _judge_snapper(name: str, kind: str, body: dict[str, Any], v: Verdicts) -> CheckResult:
    errors: list[str] = []
    newest: datetime | None = None
    for key in ("Snapshotting", "Snapper"):
        errors += _snapper_errors(body.get(key))
        for part in _snapper_parts(body.get(key)):
            for fs in _list(part.get("Progress"), "Progress"):
                done = _time(_obj(fs, "Progress entry").get("DoneAt"), "DoneAt")
                if done is not None and (newest is None or done > newest):
                    newest = done
    pruning = body.get("Pruning")
    if isinstance(pruning, dict) and isinstance(pruning.get("Error"), str) and pruning["Error"]:
        errors.append(f"pruning: {pruning['Error']}")
    if errors:
        return v.result("ERROR", f"job {name} ({kind}): " + "; ".join(errors)[:400], name)
    if newest is not None:
        return v.by_age(newest, f"snapshot by job {name}", name)
    return v.result(
        "OK",
        f"job {name} ({kind}): zrepl reports no error, but no age either "
        "(a zfs_snapshots check can watch its datasets)",
        name,
    )


def _snapper_parts(report: Any) -> list[dict[str, Any]]:
    """A snapper report and the parts it nests (none for `null`)."""
    if report is None:
        return []
    report = _obj(report, "the snapper report")
    # zrepl 0.6 reports at the top; later releases nest it under the snapshotting type.
    nested = [report[k] for k in ("Periodic", "Cron") if report.get(k)]
    return [report, *(_obj(p, "the snapper report") for p in nested)]


def _snapper_errors(report: Any) -> list[str]:
    """The snapper's errors ("snapshotting: …"), e.g. zrepl's "one or more snapshots could
    not be created, check logs for details" (daemon/snapper/periodic.go, 0.6)."""
    return [
        f"snapshotting: {part['Error']}"
        for part in _snapper_parts(report)
        if isinstance(part.get("Error"), str) and part["Error"]
    ]


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ShapeError(f"{what} is {type(value).__name__}, not an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ShapeError(f"{what} is {type(value).__name__}, not a list")
    return value


def _error(value: Any, what: str) -> str | None:
    """The text of a zrepl TimedError (`{"Err": "...", "Time": "..."}`), or None."""
    if value is None:
        return None
    err = _obj(value, what).get("Err")
    if not isinstance(err, str):
        raise ShapeError(f"{what}.Err is not text")
    return err or None


def _time(value: Any, what: str) -> datetime | None:
    """A Go time.Time from JSON as an aware datetime; None for the zero time."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ShapeError(f"{what} is {type(value).__name__}, not a time")
    if value.startswith("0001-01-01"):
        return None
    # Go prints up to nine fractional digits; Python reads six.
    text = re.sub(r"(\.\d{1,6})\d*", r"\1", value).replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ShapeError(f"{what} {value[:40]!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ShapeError(f"{what} {value[:40]!r} has no time zone")
    return moment.astimezone(UTC)
