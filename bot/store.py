"""The bot's state: versioned migrations per component, the key/value table, and the
async primitive (`execute`, `transaction`) that every table's owner module uses.

Two implementations behind one API, chosen by `state:` in the config (`open_store`):

- `SqliteStore` (the default, one instance): one sqlite3 connection in WAL mode used on the
  loop thread. Each statement is a sub-millisecond local write, cheaper than a hop to a thread;
  the async API only lets a statement from another task wait while a transaction is open.
- `PostgresStore` (`state: {dsn: ...}`, for two instances): psycopg 3 `AsyncConnectionPool`,
  autocommit connections, a connect timeout, a per-statement timeout.

Each table has one owner, the only module that reads or writes it, through named functions and
row dataclasses: `kv` here (`get`, `put`, `delete_prefix`), `audit` in bot.audit, `job_runs` in
bot.job_runs, `outbox` in bot.outbox_db, and each feature's tables in the feature's own database
module. SQL is written once, in SQLite's spelling with `?` parameters; `to_postgres` (the one
place) translates it: `?` → `%s`, and in migrations `INTEGER PRIMARY KEY [AUTOINCREMENT]` →
an identity column and `REAL` → `DOUBLE PRECISION`. Inserts that need the new id say
`RETURNING id` (SQLite ≥ 3.35 and PostgreSQL both have it).

Concurrency (two processes on one PostgreSQL): every `transaction()` first takes one
transaction-scoped advisory lock, so writers are serialised across processes as SQLite's
BEGIN IMMEDIATE serialises them within one: a check-then-write inside a transaction (outbox
coalescing, an alert group opened once, a backup state change) cannot interleave with the other
instance's. Autocommit statements outside a transaction are single statements, atomic anyway.
Ids come from identity sequences (never reused); `UNIQUE` constraints (outbox.txn_id, one open
alert group per room and key) hold across processes. Migrations run under a session advisory
lock, so two instances starting together apply each step once.

Errors: a store that cannot be reached (server down, pool exhausted, a timeout) raises
`StoreUnavailable`, a `BotError` whose message names no password; callers answer 503, retry
or log — the statement's effect is then unknown only for an autocommit write whose answer was
lost, and none of the owner modules' writes is harmful to repeat.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.backoff import Backoff
from bot.errors import BotError

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

    from bot.config import StateConfig

log = logging.getLogger(__name__)

Row = Mapping[str, Any]
"""One result row: column name → value (sqlite3.Row or psycopg's dict_row)."""

# The advisory locks (any fixed 64-bit numbers; "infrabot" in ASCII, then + 1).
WRITE_LOCK = 0x696E667261626F74
MIGRATE_LOCK = WRITE_LOCK + 1


class StoreUnavailable(BotError):
    """The store could not be reached or did not answer in time; the work was not done.

    The message is fit for the room and the log: "the state store (PostgreSQL) is
    unavailable: <libpq's first line>", which names host and port, never a password."""


class StoreRefused(BotError):
    """The store answered but refused what the bot must do at start (its migrations): a
    setting to fix, not an outage to wait out."""


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


@dataclass(frozen=True)
class Result:
    """What a statement gave: its rows (all fetched), and how many rows it changed."""

    rows: list[Row]
    rowcount: int

    def fetchone(self) -> Any:
        """The first row, or None (typed Any, as sqlite3's is)."""
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Row]:
        """Every row."""
        return self.rows

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def new_id(self) -> int:
        """The `id` of an `INSERT … RETURNING id`."""
        return int(self.rows[0]["id"])


class Store(ABC):
    """The async API both stores offer; features add tables through their own migrations."""

    kind = "abstract"

    def __init__(self) -> None:
        # The callbacks waiting for the current task's outermost transaction to end.
        self._hooks: contextvars.ContextVar[list[Callable[[], None]] | None] = (
            contextvars.ContextVar(f"store-hooks-{id(self)}", default=None)
        )

    def after_transaction(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the current task's transaction has ended, committed or rolled
        back (at once outside one). What others see only once committed (a row for the
        outbox's sender, which reads through another connection on PostgreSQL) is announced
        from here, and what was held for the transaction is let go."""
        hooks = self._hooks.get()
        if hooks is None:
            callback()
        else:
            hooks.append(callback)

    @contextmanager
    def _collecting_hooks(self) -> Iterator[list[Callable[[], None]]]:
        hooks: list[Callable[[], None]] = []
        token = self._hooks.set(hooks)
        try:
            yield hooks
        finally:
            self._hooks.reset(token)

    @abstractmethod
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """Run one statement (SQLite spelling, `?` parameters), inside the current task's
        transaction if it has one, else on its own; raises StoreUnavailable."""

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Store]:
        """`async with store.transaction() as tx:` all or nothing; nests into an outer one.

        Writers are serialised (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock)."""

    @abstractmethod
    def savepoint(self) -> AbstractAsyncContextManager[Store]:
        """`async with store.savepoint():` a part of the current transaction, undone alone
        if it raises."""

    @abstractmethod
    async def close(self) -> None:
        """Close the connection(s)."""

    # --- key/value -------------------------------------------------------------------------
    async def get(self, key: str) -> str | None:
        """A value from the key/value table, or None."""
        row = (await self.execute("SELECT value FROM kv WHERE key = ?", (key,))).fetchone()
        return None if row is None else str(row["value"])

    async def put(self, key: str, value: str) -> None:
        """Set a key/value pair."""
        await self.execute(
            "INSERT INTO kv(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    async def get_json(self, key: str) -> Any:
        """A JSON value from the key/value table, or None."""
        raw = await self.get(key)
        return None if raw is None else json.loads(raw)

    async def put_json(self, key: str, value: Any) -> None:
        """Set a JSON value."""
        await self.put(key, json.dumps(value))

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key that starts with `prefix`; returns how many.

        Compared with `substr`, not LIKE, so '%' and '_' in a prefix mean themselves.
        """
        cur = await self.execute(
            "DELETE FROM kv WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
        )
        return cur.rowcount


def _ordered(migrations: Sequence[Migration]) -> list[Migration]:
    return sorted(migrations, key=lambda m: (m.component != "core", m.component, m.version))


def _check_next(mig: Migration, have: int) -> bool:
    """Whether `mig` is to be applied on top of version `have` (raises on a gap)."""
    if mig.version <= have:
        return False
    if mig.version != have + 1:
        raise RuntimeError(
            f"migration {mig.component} v{mig.version} skips v{have + 1}; refusing to guess"
        )
    return True


_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version "
    "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
)
_SET_VERSION = (
    "INSERT INTO schema_version(component, version) VALUES (?, ?) "
    "ON CONFLICT(component) DO UPDATE SET version = excluded.version"
)


class SqliteStore(Store):
    """The bot's one SQLite connection (WAL), used on the loop thread."""

    kind = "sqlite"

    def __init__(self, path: Path, migrations: Sequence[Migration] = ()) -> None:
        super().__init__()
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
        # Held for a whole transaction: another task's statement waits instead of joining it.
        self._lock = asyncio.Lock()
        self._inside: contextvars.ContextVar[bool] = contextvars.ContextVar(
            f"sqlite-tx-{id(self)}", default=False
        )
        self._migrate([*CORE_MIGRATIONS, *migrations])

    async def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        self.db.execute(_SCHEMA_TABLE)
        current = {
            r["component"]: r["version"]
            for r in self.db.execute("SELECT component, version FROM schema_version")
        }
        for mig in _ordered(migrations):
            if not _check_next(mig, current.get(mig.component, 0)):
                continue
            log.info("applying schema migration %s v%d", mig.component, mig.version)
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in split_statements(mig.sql):
                    self.db.execute(statement)
                self.db.execute(_SET_VERSION, (mig.component, mig.version))
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            current[mig.component] = mig.version

    def _run(self, sql: str, params: Sequence[Any]) -> Result:
        cur = self.db.execute(sql, params)
        rows: list[Row] = cur.fetchall() if cur.description else []
        return Result(rows, cur.rowcount)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """Run one statement (see Store.execute)."""
        if self._inside.get() or not self._lock.locked():
            return self._run(sql, params)
        async with self._lock:
            return self._run(sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteStore]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any exception; nests into an outer one."""
        if self._inside.get():
            yield self
            return
        hooks: list[Callable[[], None]] = []
        try:
            async with self._lock:
                token = self._inside.set(True)
                try:
                    with self._collecting_hooks() as hooks:
                        self.db.execute("BEGIN IMMEDIATE")
                        try:
                            yield self
                        except BaseException:
                            self.db.execute("ROLLBACK")
                            raise
                        self.db.execute("COMMIT")
                finally:
                    self._inside.reset(token)
        finally:
            for hook in hooks:
                hook()

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[SqliteStore]:
        """A nested part of the current transaction, undone alone if it raises."""
        self.db.execute("SAVEPOINT part")
        try:
            yield self
        except BaseException:
            self.db.execute("ROLLBACK TO part")
            self.db.execute("RELEASE part")
            raise
        self.db.execute("RELEASE part")


_PARAM = re.compile(r"'(?:[^']|'')*'|\?|%")
_ROWID = re.compile(r"\bINTEGER\s+PRIMARY\s+KEY(?:\s+AUTOINCREMENT)?\b", re.IGNORECASE)
_REAL = re.compile(r"\bREAL\b", re.IGNORECASE)


def to_postgres(sql: str, *, ddl: bool = False) -> str:
    """A statement in SQLite's spelling as PostgreSQL (psycopg) takes it.

    `?` (outside string literals) becomes `%s` and a literal `%` becomes `%%`. With `ddl`,
    for migrations: `INTEGER PRIMARY KEY [AUTOINCREMENT]` (SQLite's row id, never reused with
    AUTOINCREMENT) becomes `BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY` (a sequence
    never hands a number out twice), and `REAL` (8 bytes in SQLite, 4 in PostgreSQL) becomes
    `DOUBLE PRECISION`, so Unix seconds keep their microseconds.
    """

    def param(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "?":
            return "%s"
        return "%%" if text == "%" else text.replace("%", "%%")

    if ddl:
        sql = _ROWID.sub("BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", sql)
        sql = _REAL.sub("DOUBLE PRECISION", sql)
    return _PARAM.sub(param, sql)


class PostgresStore(Store):
    """A psycopg 3 async connection pool on one PostgreSQL database.

    Open it with `await PostgresStore.open(...)`. Connections are in autocommit mode; a
    `transaction()` takes one connection for its task (a context variable routes the task's
    statements to it) and the write lock first.
    """

    kind = "postgres"

    def __init__(self, pool: AsyncConnectionPool[Any], *, timeout: float) -> None:
        super().__init__()
        self.pool = pool
        self.timeout = timeout
        self._conn: contextvars.ContextVar[AsyncConnection[Any] | None] = contextvars.ContextVar(
            f"pg-tx-{id(self)}", default=None
        )

    @classmethod
    async def open(
        cls,
        dsn: str,
        migrations: Sequence[Migration] = (),
        *,
        password: str | None = None,
        connect_timeout: timedelta = timedelta(seconds=10),
        statement_timeout: timedelta = timedelta(seconds=30),
        pool_size: int = 4,
    ) -> PostgresStore:
        """Connect (waiting up to `connect_timeout`), migrate, and return the store.

        `dsn` is a libpq connection string or URI without a password; `password` is given
        apart so that no DSN that is logged can hold it. Raises StoreUnavailable."""
        # On first use: a bot on SQLite never loads libpq and the pool (~10 MB, ~0.15 s).
        import psycopg
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool, PoolTimeout

        kwargs: dict[str, Any] = {
            "autocommit": True,
            "row_factory": dict_row,
            "connect_timeout": max(1, int(connect_timeout.total_seconds())),
            "options": f"-c statement_timeout={int(statement_timeout.total_seconds() * 1000)}",
            "application_name": "infrabot",
        }
        if password is not None:
            kwargs["password"] = password
        timeout = connect_timeout.total_seconds()
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn,
            kwargs=kwargs,
            min_size=1,
            max_size=pool_size,
            timeout=timeout,
            # A connection broken by a server restart is found and replaced before use.
            check=AsyncConnectionPool.check_connection,
            # psycopg_pool retries a failed connect with a doubling delay for 5 minutes by
            # default: after a long outage its next try could come minutes after the server
            # is back, every statement meanwhile failing. Bounded to one connect_timeout, a
            # retry is never more than half of it away, and a statement waiting that long
            # for a connection gets one once the server answers (a new round of tries starts
            # with the next statement that finds the pool empty).
            reconnect_timeout=timeout,
            open=False,
            name="infrabot",
        )
        store = cls(pool, timeout=timeout)
        try:
            await pool.open(wait=True, timeout=timeout)
            await store._migrate([*CORE_MIGRATIONS, *migrations])
        except PoolTimeout as exc:
            await pool.close()
            # The pool only logs why it could not connect: ask once more, to tell a login the
            # server refuses (a setting to fix) from a server that is not there (to wait for).
            reason = str(exc)
            try:
                probe = await psycopg.AsyncConnection.connect(
                    dsn, **{**kwargs, "connect_timeout": max(1, int(timeout))}
                )
            except psycopg.Error as why:
                reason = _first_line(why)
                if _LOGIN_REFUSED.search(reason):
                    raise StoreRefused(
                        f"the state store (PostgreSQL) refused the login: {reason} (check the "
                        "user and dbname in state.dsn and the password, state.password_file "
                        "or state.password_env)"
                    ) from why
            else:
                await probe.close()
            raise _unavailable(reason) from exc
        except psycopg.Error as exc:
            # The server answered and said no (a role without CREATE, a schema it does not
            # own): no wait makes that work, so it is told once, plainly, and the start ends.
            await pool.close()
            raise StoreRefused(
                "the state store (PostgreSQL) refused the schema migrations: "
                f"{_first_line(exc)} (the role in state.dsn needs to create tables there)"
            ) from exc
        except BaseException:
            await pool.close()
            raise
        return store

    async def close(self) -> None:
        """Close every connection of the pool."""
        await self.pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            async with self.pool.connection(timeout=self.timeout) as conn:
                yield conn
        except PoolTimeout as exc:
            raise _unavailable(str(exc)) from exc
        except psycopg.OperationalError as exc:
            raise _unavailable(_first_line(exc)) from exc

    async def _migrate(self, migrations: Sequence[Migration]) -> None:
        async with self._connection() as conn:
            await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
            try:
                await conn.execute(_SCHEMA_TABLE)
                cur = await conn.execute("SELECT component, version FROM schema_version")
                current = {r["component"]: r["version"] for r in await cur.fetchall()}
                for mig in _ordered(migrations):
                    if not _check_next(mig, current.get(mig.component, 0)):
                        continue
                    log.info("applying schema migration %s v%d", mig.component, mig.version)
                    async with conn.transaction():
                        for statement in split_statements(mig.sql):
                            await conn.execute(to_postgres(statement, ddl=True).encode())
                        await conn.execute(
                            to_postgres(_SET_VERSION).encode(), (mig.component, mig.version)
                        )
                    current[mig.component] = mig.version
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))

    @staticmethod
    async def _run(conn: AsyncConnection[Any], sql: str, params: Sequence[Any]) -> Result:
        cur = await conn.execute(to_postgres(sql).encode(), params)
        rows: list[Row] = await cur.fetchall() if cur.description else []
        return Result(rows, cur.rowcount)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """Run one statement (see Store.execute)."""
        import psycopg

        conn = self._conn.get()
        if conn is not None:
            try:
                return await self._run(conn, sql, params)
            except psycopg.OperationalError as exc:
                raise _unavailable(_first_line(exc)) from exc
        async with self._connection() as conn:
            return await self._run(conn, sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresStore]:
        """One connection, BEGIN, the write lock … COMMIT; nests into an outer one."""
        if self._conn.get() is not None:
            yield self
            return
        hooks: list[Callable[[], None]] = []
        try:
            async with self._connection() as conn:
                token = self._conn.set(conn)
                try:
                    with self._collecting_hooks() as hooks:
                        async with conn.transaction():
                            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                            yield self
                finally:
                    self._conn.reset(token)
        finally:
            for hook in hooks:
                hook()

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[PostgresStore]:
        """A nested part of the current transaction, undone alone if it raises."""
        conn = self._conn.get()
        if conn is None:
            raise RuntimeError("savepoint() outside a transaction")
        async with conn.transaction():
            yield self


# libpq's and the server's words for a login that no waiting makes work: a wrong or missing
# password, a role or database that does not exist, no pg_hba.conf line, no CONNECT right.
_LOGIN_REFUSED = re.compile(
    r"authentication failed|no password supplied|does not exist|no pg_hba\.conf entry"
    r"|permission denied for database|is not permitted to log in",
    re.IGNORECASE,
)


def _unavailable(detail: str) -> StoreUnavailable:
    return StoreUnavailable(f"the state store (PostgreSQL) is unavailable: {detail}")


def _first_line(exc: BaseException) -> str:
    # libpq's messages name host and port, never the password; the first line says it all.
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


async def open_store(state: StateConfig, migrations: Sequence[Migration] = ()) -> Store:
    """The store `state:` names: PostgreSQL when it gives a `dsn`, else the SQLite file.

    A PostgreSQL that cannot be reached at start is waited for (logged, backing off from 1 s
    to 60 s) rather than ending the process."""
    if state.dsn is None:
        return SqliteStore(state.db_path, migrations)
    backoff = Backoff(1.0, 60.0)
    while True:
        try:
            return await PostgresStore.open(
                state.dsn,
                migrations,
                password=None if state.password is None else state.password.get_secret_value(),
                connect_timeout=state.connect_timeout,
                statement_timeout=state.statement_timeout,
                pool_size=state.pool_size,
            )
        except StoreUnavailable as exc:
            wait = backoff.next()
            log.warning("%s; trying again in %.1f s", exc, wait)
            await asyncio.sleep(wait)


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
