"""SQLite state (WAL) with versioned migrations per component, and the key/value table.

Calls are synchronous on purpose: each statement is a sub-millisecond local write, cheaper than
a hop to a thread, and keeping one connection on the loop thread serialises writers for free.

Each table has one owner, the only module that reads or writes it, through named functions and
row dataclasses: `kv` here (`get`, `put`, `delete_prefix`), `audit` in bot.audit, `job_runs` in
bot.job_runs, `outbox` in bot.outbox_db, and each feature's tables in the feature's own database
module. `execute` and `transaction` are the primitive those modules use. SQL stays plain (`?`
parameters, no SQLite-only syntax where a portable form costs nothing) for a later PostgreSQL
store.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    """One schema step of a component; versions count up from 1 without gaps.

    `sql` holds one or more statements separated by ';' (a ';' inside a string literal,
    a quoted name or a comment is no separator: see `split_statements`).
    """

    component: str
    version: int
    sql: str


# The core's tables, each owned by one module (see the module docstring). Their history stays
# one component: databases in the field are at its versions, and re-splitting it would re-run it.
CORE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "core",
        1,
        """
        CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            started_at REAL NOT NULL,
            ended_at REAL,
            sender TEXT NOT NULL,
            room_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            command TEXT NOT NULL,
            args TEXT NOT NULL,
            outcome TEXT NOT NULL DEFAULT 'running',
            detail TEXT
        );
        CREATE INDEX audit_started ON audit(started_at);
        CREATE TABLE job_runs (
            id INTEGER PRIMARY KEY,
            job TEXT NOT NULL,
            scheduled_for REAL NOT NULL,
            trigger TEXT NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL,
            outcome TEXT NOT NULL DEFAULT 'running',
            detail TEXT
        );
        CREATE INDEX job_runs_job ON job_runs(job, scheduled_for);
        CREATE TABLE outbox (
            -- AUTOINCREMENT: ids are referenced ("outbox:N") and must never be reused.
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            room_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            content TEXT NOT NULL,
            txn_id TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            state TEXT NOT NULL DEFAULT 'pending',
            event_id TEXT,
            sent_at REAL
        );
        CREATE INDEX outbox_pending ON outbox(state, room_id, id);
        """,
    ),
    Migration(
        "core",
        2,
        """
        ALTER TABLE outbox ADD COLUMN coalesce_key TEXT;
        CREATE INDEX outbox_coalesce ON outbox(coalesce_key, state);
        """,
    ),
    Migration("core", 3, "ALTER TABLE outbox ADD COLUMN ordered INTEGER NOT NULL DEFAULT 1"),
    # One send per room at a time made the flag meaningless.
    Migration("core", 4, "ALTER TABLE outbox DROP COLUMN ordered"),
    # Reactions name the event they react to; features find their message by it.
    Migration("core", 5, "CREATE INDEX outbox_event ON outbox(event_id)"),
)


class Store:
    """The bot's one SQLite connection; features add tables through their own migrations."""

    def __init__(self, path: Path, migrations: Sequence[Migration] = ()) -> None:
        self.path = path
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=5000")
        if str(path) != ":memory:":
            path.chmod(0o600)  # holds the access token when logging in with a password
        self._migrate([*CORE_MIGRATIONS, *migrations])

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        current = {
            r["component"]: r["version"]
            for r in self.db.execute("SELECT component, version FROM schema_version")
        }
        for mig in sorted(
            migrations, key=lambda m: (m.component != "core", m.component, m.version)
        ):
            have = current.get(mig.component, 0)
            if mig.version <= have:
                continue
            if mig.version != have + 1:
                raise RuntimeError(
                    f"migration {mig.component} v{mig.version} skips v{have + 1}; refusing to guess"
                )
            log.info("applying schema migration %s v%d", mig.component, mig.version)
            with self.transaction():
                for statement in split_statements(mig.sql):
                    self.db.execute(statement)
                self.db.execute(
                    "INSERT INTO schema_version(component, version) VALUES (?, ?) "
                    "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                    (mig.component, mig.version),
                )
            current[mig.component] = mig.version

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any exception; nests into an outer one."""
        if self.db.in_transaction:
            yield self.db
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @contextmanager
    def savepoint(self) -> Iterator[sqlite3.Connection]:
        """A nested part of the current transaction, undone alone if it raises."""
        self.db.execute("SAVEPOINT part")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK TO part")
            self.db.execute("RELEASE part")
            raise
        self.db.execute("RELEASE part")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run one statement in autocommit mode."""
        return self.db.execute(sql, params)

    # --- key/value -------------------------------------------------------------------------
    def get(self, key: str) -> str | None:
        """A value from the key/value table, or None."""
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def put(self, key: str, value: str) -> None:
        """Set a key/value pair."""
        self.db.execute(
            "INSERT INTO kv(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def get_json(self, key: str) -> Any:
        """A JSON value from the key/value table, or None."""
        raw = self.get(key)
        return None if raw is None else json.loads(raw)

    def put_json(self, key: str, value: Any) -> None:
        """Set a JSON value."""
        self.put(key, json.dumps(value))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key that starts with `prefix`; returns how many.

        Compared with `substr`, not LIKE, so '%' and '_' in a prefix mean themselves.
        """
        cur = self.db.execute("DELETE FROM kv WHERE substr(key, 1, ?) = ?", (len(prefix), prefix))
        return cur.rowcount


def split_statements(script: str) -> list[str]:
    """The statements of a migration script, in order.

    A ';' ends a statement only where SQLite agrees the text so far is complete
    (`sqlite3.complete_statement`), so a ';' inside a string literal, a quoted name, a
    comment or a trigger body stays inside its statement. A last statement may omit its ';'.
    """
    out: list[str] = []
    start = 0
    for end, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : end + 1]):
            _keep(out, script[start : end + 1])
            start = end + 1
    _keep(out, script[start:])
    return out


def _keep(out: list[str], statement: str) -> None:
    text = statement.strip()
    if text.rstrip(";").strip():
        out.append(text)
