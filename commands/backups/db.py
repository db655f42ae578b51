"""The backups feature's tables; no other module reads or writes them.

`backup_results` keeps every result of every run (one row per check and item: a dataset, a
zrepl job, or NULL for a result of the whole check), for `backups NAME`. `backup_state` keeps,
per result key (`check` or `check:item`, see CheckResult.key), the state the room was last
told and since when, so a restart does not announce again what the room already knows.
Times are stored as Unix seconds (REAL) and handed out as aware UTC datetimes. The SQL is
plain (`?` parameters, ON CONFLICT upsert), so both stores run it (bot.store.to_postgres).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from bot.store import Store
from commands.backups.result import CheckResult, State

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE backup_results (
            id INTEGER PRIMARY KEY,
            check_name TEXT NOT NULL,
            checked_at REAL NOT NULL,
            state TEXT NOT NULL,
            newest REAL,
            detail TEXT NOT NULL,
            facts TEXT NOT NULL
        );
        CREATE INDEX backup_results_check ON backup_results(check_name, checked_at);
        CREATE TABLE backup_state (
            check_name TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            since REAL NOT NULL,
            announced_at REAL
        )
        """,
    ),
    # Results per item: backup_results.item names it; backup_state.check_name holds the key.
    (2, "ALTER TABLE backup_results ADD COLUMN item TEXT"),
    # What each `heartbeat` check's job last reported (commands.backups.heartbeat).
    (
        3,
        """
        CREATE TABLE backup_heartbeats (
            check_name TEXT PRIMARY KEY,
            running_since REAL,
            last_start REAL,
            last_success REAL,
            last_fail REAL,
            fail_lines TEXT,
            last_duration REAL
        )
        """,
    ),
)


@dataclass(frozen=True)
class ResultRow:
    """One stored result: a check's verdict on one item (or the whole check) at one run."""

    check_name: str
    item: str | None
    checked_at: datetime
    state: State
    newest: datetime | None
    detail: str
    facts: dict[str, Any]


@dataclass(frozen=True)
class StateRow:
    """What the room was last told of one result key, since when, and when it was said."""

    key: str
    state: State
    since: datetime
    announced_at: datetime | None


def _ts(moment: datetime) -> float:
    return moment.timestamp()


def _dt(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


async def add_result(store: Store, result: CheckResult, checked_at: datetime) -> None:
    """Keep one result of the run at `checked_at`."""
    await store.execute(
        "INSERT INTO backup_results(check_name, item, checked_at, state, newest, detail, facts) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            result.name,
            result.item,
            _ts(checked_at),
            result.state,
            _ts(result.newest) if result.newest else None,
            result.detail,
            json.dumps(result.facts, default=str),
        ),
    )


async def state_of(store: Store, key: str) -> StateRow | None:
    """The stored state of a result key (`check` or `check:item`), if any."""
    row = (
        await store.execute(
            "SELECT check_name, state, since, announced_at FROM backup_state WHERE check_name = ?",
            (key,),
        )
    ).fetchone()
    if row is None:
        return None
    since = _dt(row["since"])
    assert since is not None  # NOT NULL in the schema
    return StateRow(row["check_name"], cast(State, row["state"]), since, _dt(row["announced_at"]))


async def save_state(store: Store, row: StateRow) -> None:
    """Insert or replace the stored state of `row.key`."""
    await store.execute(
        "INSERT INTO backup_state(check_name, state, since, announced_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(check_name) DO UPDATE SET state = excluded.state, since = excluded.since, "
        "announced_at = excluded.announced_at",
        (
            row.key,
            row.state,
            _ts(row.since),
            _ts(row.announced_at) if row.announced_at else None,
        ),
    )


async def recent_runs(store: Store, check_name: str, runs: int = 5) -> list[ResultRow]:
    """Every result of the check's last `runs` runs, newest run first, items in order."""
    rows = (
        await store.execute(
            "SELECT check_name, item, checked_at, state, newest, detail, facts FROM backup_results "
            "WHERE check_name = ? AND checked_at IN ("
            " SELECT DISTINCT checked_at FROM backup_results WHERE check_name = ?"
            " ORDER BY checked_at DESC LIMIT ?) ORDER BY checked_at DESC, item NULLS FIRST",
            (check_name, check_name, runs),
        )
    ).fetchall()
    out = []
    for row in rows:
        checked_at = _dt(row["checked_at"])
        assert checked_at is not None  # NOT NULL in the schema
        out.append(
            ResultRow(
                row["check_name"],
                row["item"],
                checked_at,
                cast(State, row["state"]),
                _dt(row["newest"]),
                row["detail"],
                json.loads(row["facts"]),
            )
        )
    return out


@dataclass(frozen=True)
class HeartbeatRow:
    """What a heartbeat check's job last reported; times UTC, `last_duration` in seconds (of
    the last run that ended, by success or failure)."""

    check_name: str
    running_since: datetime | None = None
    last_start: datetime | None = None
    last_success: datetime | None = None
    last_fail: datetime | None = None
    fail_lines: str | None = None
    last_duration: float | None = None


async def heartbeat_of(store: Store, check_name: str) -> HeartbeatRow:
    """The check's stored heartbeat (an empty row when its job never reported)."""
    row = (
        await store.execute(
            "SELECT check_name, running_since, last_start, last_success, last_fail, fail_lines, "
            "last_duration FROM backup_heartbeats WHERE check_name = ?",
            (check_name,),
        )
    ).fetchone()
    if row is None:
        return HeartbeatRow(check_name)
    return HeartbeatRow(
        row["check_name"],
        _dt(row["running_since"]),
        _dt(row["last_start"]),
        _dt(row["last_success"]),
        _dt(row["last_fail"]),
        row["fail_lines"],
        row["last_duration"],
    )


async def save_heartbeat(store: Store, row: HeartbeatRow) -> None:
    """Insert or replace the check's heartbeat."""

    def ts(moment: datetime | None) -> float | None:
        return None if moment is None else _ts(moment)

    await store.execute(
        "INSERT INTO backup_heartbeats(check_name, running_since, last_start, last_success, "
        "last_fail, fail_lines, last_duration) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(check_name) DO UPDATE SET running_since = excluded.running_since, "
        "last_start = excluded.last_start, last_success = excluded.last_success, "
        "last_fail = excluded.last_fail, fail_lines = excluded.fail_lines, "
        "last_duration = excluded.last_duration",
        (
            row.check_name,
            ts(row.running_since),
            ts(row.last_start),
            ts(row.last_success),
            ts(row.last_fail),
            row.fail_lines,
            row.last_duration,
        ),
    )


async def last_error(store: Store, check_name: str, item: str | None) -> ResultRow | None:
    """The newest ERROR of one result key, or of its check as a whole, since the key was last
    OK, if any: the error behind a backup that is now merely stale."""
    rows = (
        await store.execute(
            "SELECT check_name, item, checked_at, state, newest, detail, facts FROM backup_results "
            "WHERE check_name = ? AND (item = ? OR item IS NULL) "
            "AND state = 'ERROR' AND checked_at > COALESCE((SELECT MAX(checked_at) FROM "
            "backup_results WHERE check_name = ? AND (item = ? OR (item IS NULL AND "
            # Typed: PostgreSQL cannot infer the type of a bare `? IS NULL`.
            "CAST(? AS TEXT) IS NULL)) AND state = 'OK'), 0) ORDER BY checked_at DESC LIMIT 1",
            (check_name, item, check_name, item, item),
        )
    ).fetchall()
    if not rows:
        return None
    row = rows[0]
    checked_at = _dt(row["checked_at"])
    assert checked_at is not None  # NOT NULL in the schema
    return ResultRow(
        row["check_name"],
        row["item"],
        checked_at,
        cast(State, row["state"]),
        _dt(row["newest"]),
        row["detail"],
        json.loads(row["facts"]),
    )
