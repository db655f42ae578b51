"""The deploy feature's tables (`deploys`): the only module that reads or writes them.

Times are Unix seconds (REAL) from the runtime's clock. The SQL is plain and takes `?`
parameters; both stores run it (bot.store.to_postgres translates it for PostgreSQL).
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.store import Row, Store

# (version, SQL) steps for the `deploy` component, applied by the store in order.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE deploys (
            id INTEGER PRIMARY KEY,
            host TEXT NOT NULL,
            action TEXT NOT NULL,
            ref TEXT,
            revision TEXT,
            requested_by TEXT NOT NULL,
            room_id TEXT NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL,
            state TEXT NOT NULL DEFAULT 'running',
            exit_code INTEGER,
            summary TEXT,
            log_excerpt TEXT
        );
        CREATE INDEX deploys_host ON deploys(host, started_at)
        """,
    ),
    # Four-eyes: the second person who confirmed the deploy (NULL: none was needed).
    (2, "ALTER TABLE deploys ADD COLUMN confirmed_by TEXT"),
    # Four-eyes requests waiting for a second person: a restart loses the waiting (it lives
    # in memory), so the next leader finds their prompts here and says they were dropped.
    (
        3,
        """
        CREATE TABLE deploy_requests (
            confirm_id TEXT PRIMARY KEY,
            room_id TEXT NOT NULL,
            prompt_outbox_id INTEGER NOT NULL,
            requested_by TEXT NOT NULL,
            hosts TEXT NOT NULL,
            action TEXT NOT NULL
        )
        """,
    ),
]

RUNNING = "running"
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class DeployRow:
    """One deploy of one host. `state` is 'running' until it ends ('ok', 'failed',
    'units_failed', 'cancelled', 'timeout', 'silent', 'interrupted')."""

    id: int
    host: str
    action: str
    ref: str | None
    revision: str | None
    requested_by: str
    room_id: str
    started_at: float
    ended_at: float | None
    state: str
    exit_code: int | None
    summary: str | None
    confirmed_by: str | None = None

    @classmethod
    def of(cls, row: Row) -> DeployRow:
        """The dataclass of a `SELECT * FROM deploys` row."""
        return cls(
            id=int(row["id"]),
            host=row["host"],
            action=row["action"],
            ref=row["ref"],
            revision=row["revision"],
            requested_by=row["requested_by"],
            room_id=row["room_id"],
            started_at=float(row["started_at"]),
            ended_at=None if row["ended_at"] is None else float(row["ended_at"]),
            state=row["state"],
            exit_code=row["exit_code"],
            summary=row["summary"],
            confirmed_by=row["confirmed_by"],
        )


async def start_deploy(
    store: Store,
    host: str,
    action: str,
    ref: str | None,
    requested_by: str,
    room_id: str,
    started_at: float,
    confirmed_by: str | None = None,
) -> int:
    """Record a deploy as running; returns its id."""
    cur = await store.execute(
        "INSERT INTO deploys(host, action, ref, requested_by, room_id, started_at, state, "
        "confirmed_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (host, action, ref, requested_by, room_id, started_at, RUNNING, confirmed_by),
    )
    return cur.new_id()


async def set_revision(store: Store, deploy_id: int, revision: str) -> None:
    """The commit the deploy runs (known once the checkout is updated)."""
    await store.execute("UPDATE deploys SET revision = ? WHERE id = ?", (revision, deploy_id))


async def finish_deploy(
    store: Store,
    deploy_id: int,
    *,
    ended_at: float,
    state: str,
    exit_code: int | None,
    summary: str,
    log_excerpt: str,
) -> None:
    """Record how a deploy ended."""
    await store.execute(
        "UPDATE deploys SET ended_at = ?, state = ?, exit_code = ?, summary = ?, "
        "log_excerpt = ? WHERE id = ?",
        (ended_at, state, exit_code, summary, log_excerpt, deploy_id),
    )


async def history(store: Store, host: str | None = None, limit: int = 10) -> list[DeployRow]:
    """The newest deploys first (of one host, or of all)."""
    if host is None:
        rows = await store.execute("SELECT * FROM deploys ORDER BY id DESC LIMIT ?", (limit,))
    else:
        rows = await store.execute(
            "SELECT * FROM deploys WHERE host = ? ORDER BY id DESC LIMIT ?",
            (host, limit),
        )
    return [DeployRow.of(r) for r in rows.fetchall()]


async def last_deploy(store: Store, host: str) -> DeployRow | None:
    """The newest deploy of a host, or None."""
    found = await history(store, host, 1)
    return found[0] if found else None


async def has_history(store: Store, host: str) -> bool:
    """Whether any deploy of `host` was recorded."""
    row = (await store.execute("SELECT 1 FROM deploys WHERE host = ? LIMIT 1", (host,))).fetchone()
    return row is not None


async def interrupt_running(store: Store, ended_at: float, summary: str) -> list[DeployRow]:
    """Mark every deploy still 'running' as interrupted; returns them as they were.

    Only called at start, before any deploy of this run begins: whatever is still running
    then was cut off by the previous run's end.
    """
    async with store.transaction():
        rows = [
            DeployRow.of(r)
            for r in (
                await store.execute(
                    "SELECT * FROM deploys WHERE state = ? ORDER BY id",
                    (RUNNING,),
                )
            ).fetchall()
        ]
        for row in rows:
            await store.execute(
                "UPDATE deploys SET state = ?, ended_at = ?, summary = ? WHERE id = ?",
                (INTERRUPTED, ended_at, summary, row.id),
            )
    return rows


@dataclass(frozen=True)
class RequestRow:
    """A four-eyes request waiting for confirmation; `hosts` as typed back ("pluto,mimas")."""

    confirm_id: str
    room_id: str
    prompt_outbox_id: int
    requested_by: str
    hosts: str
    action: str


async def add_request(store: Store, req: RequestRow) -> None:
    """Record a request waiting for confirmation (its prompt is already posted)."""
    await store.execute(
        "INSERT INTO deploy_requests(confirm_id, room_id, prompt_outbox_id, requested_by, "
        "hosts, action) VALUES (?, ?, ?, ?, ?, ?)",
        (
            req.confirm_id,
            req.room_id,
            req.prompt_outbox_id,
            req.requested_by,
            req.hosts,
            req.action,
        ),
    )


async def drop_request(store: Store, confirm_id: str) -> None:
    """Forget a request: confirmed or expired."""
    await store.execute("DELETE FROM deploy_requests WHERE confirm_id = ?", (confirm_id,))


async def requests(store: Store) -> list[RequestRow]:
    """Every request still recorded as waiting, oldest prompt first."""
    rows = await store.execute("SELECT * FROM deploy_requests ORDER BY prompt_outbox_id")
    return [
        RequestRow(
            confirm_id=r["confirm_id"],
            room_id=r["room_id"],
            prompt_outbox_id=int(r["prompt_outbox_id"]),
            requested_by=r["requested_by"],
            hosts=r["hosts"],
            action=r["action"],
        )
        for r in rows.fetchall()
    ]
