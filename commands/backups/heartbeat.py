"""A dead man's switch: the backup job reports itself, and silence is the alarm.

The job calls `POST /heartbeat/<check>/start` when it begins, `POST /heartbeat/<check>` when
it succeeded and `POST /heartbeat/<check>/fail` (body: its last lines) when it failed, each
with `Authorization: Bearer <the check's token>`. `record` folds one signal into the stored
row (`commands.backups.db.HeartbeatRow`); `judge` turns the row into the check's result at a
given time:

- a failure not followed by a success: ERROR, with the lines the job sent;
- a run started and not ended within `max_run`: STALE ("running for 5 h");
- no success within `max_age` + `grace`: STALE ("no successful run for 26 h (last …)");
- otherwise OK, with when the last success was and how long the last run took.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Literal

from bot.durations import format_duration
from bot.messages import human_duration
from commands.backups.db import HeartbeatRow
from commands.backups.result import CheckResult, Verdicts, stamp

Signal = Literal["start", "success", "fail"]
SIGNALS: dict[str, Signal] = {"start": "start", "fail": "fail"}
# What of a failing job's output is kept and shown: its last lines, and not without bound.
MAX_LINES = 20
MAX_CHARS = 2000
# The largest body /fail accepts (bytes); the rest of what a job may send is cut above.
MAX_BODY = 64 * 1024


def last_lines(body: bytes) -> str | None:
    """The last MAX_LINES lines of a body (UTF-8, undecodable bytes replaced), at most
    MAX_CHARS characters; None for an empty body."""
    text = body.decode("utf-8", errors="replace").replace("\r\n", "\n").strip()
    if not text:
        return None
    kept = "\n".join(text.splitlines()[-MAX_LINES:])
    return kept if len(kept) <= MAX_CHARS else "…" + kept[-MAX_CHARS:]


def record(row: HeartbeatRow, signal: Signal, now: datetime, lines: str | None) -> HeartbeatRow:
    """The row after one signal at `now`; an end (success or fail) closes the running run and
    keeps its duration.

    Ends count in the order they arrive: one at the same instant as the last end (a coarse
    or test clock) or earlier (a clock stepped back) is put just after it, so a failure told
    after a success is never judged older than it.
    """
    if signal == "start":
        return replace(row, running_since=now, last_start=now)
    ends = [t for t in (row.last_success, row.last_fail) if t is not None]
    if ends and now <= max(ends):
        now = max(ends) + timedelta(microseconds=1)
    duration = (now - row.running_since).total_seconds() if row.running_since else None
    ended = replace(row, running_since=None, last_duration=duration)
    if signal == "success":
        return replace(ended, last_success=now)
    return replace(ended, last_fail=now, fail_lines=lines)


def judge(
    row: HeartbeatRow, grace: timedelta, max_run: timedelta | None, v: Verdicts
) -> CheckResult:
    """The check's one result at `v.now` (see the module's docstring for the rules)."""
    took = (
        f"; the last run took {human_duration(row.last_duration)}"
        if row.last_duration is not None
        else ""
    )
    facts = {
        "last_success": row.last_success.isoformat() if row.last_success else None,
        "last_fail": row.last_fail.isoformat() if row.last_fail else None,
        "running_since": row.running_since.isoformat() if row.running_since else None,
        "last_duration_s": row.last_duration,
    }
    failed = row.last_fail is not None and (
        row.last_success is None or row.last_fail > row.last_success
    )
    if failed:
        assert row.last_fail is not None
        lines = f":\n{row.fail_lines}" if row.fail_lines else " (it sent no output)"
        if row.running_since is not None:
            took += f"; a new run is going since {stamp(row.running_since)}"
        last_ok = (
            f"last success {stamp(row.last_success)}" if row.last_success else "no success yet"
        )
        detail = f"the job reported a failure at {stamp(row.last_fail)} ({last_ok}{took}){lines}"
        return v.result("ERROR", detail, None, row.last_success, facts)
    if row.running_since is not None and max_run is not None:
        running = (v.now - row.running_since).total_seconds()
        if running > max_run.total_seconds():
            detail = (
                f"running for {human_duration(running)} (since {stamp(row.running_since)}; "
                f"limit {format_duration(max_run)}) without reporting an end"
            )
            return v.result("STALE", detail, None, row.last_success, facts)
    text = v.max_age_text + (f" + {format_duration(grace)} grace" if grace else "")
    allowed = Verdicts(v.check, v.max_age + grace, text, v.now)
    result = allowed.since(row.last_success, "successful run", None, facts)
    if row.running_since is not None:
        running = max(0.0, (v.now - row.running_since).total_seconds())
        result.detail += f"; running for {human_duration(running)}"
    result.detail += took
    return result
