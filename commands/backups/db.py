"""The backups feature's tables; no other module reads or writes them.

`backup_results` keeps every result of every run (one row per check and item: a dataset, a
zrepl job, or NULL for a result of the whole check), for `backups NAME`. `backup_state` keeps,
per result key (`check` or `check:item`, see CheckResult.key), the state the room was last
told and since when, so a restart does not announce again what the room already knows.
Times are stored as Unix seconds (REAL) and handed out as aware UTC datetimes. The SQL is
plain (`?` parameters, ON CONFLICT upsert) so that another store can run it unchanged.
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
