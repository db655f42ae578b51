"""The on-demand machines' tables (`machine_timers`, `machine_runs`): their only reader and writer.

A timer is the pending auto-stop of one configured machine (at most one each); a run is one
period a machine ran as the bot saw it (started by the bot, or found running), which prices
"cost so far this month". Times are Unix seconds (REAL) from the runtime's clock. The SQL is
plain with `?` parameters, so that a later PostgreSQL store can run it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.store import Migration, Row, Store

# Their own component (not the `costs` router's), so that other cost tables can be versioned
# without agreeing on numbers with this module.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "aws_machines",
        1,
        """
        CREATE TABLE machine_timers (
            name TEXT PRIMARY KEY,
            instance_id TEXT NOT NULL,
            room_id TEXT NOT NULL,
            stop_at REAL NOT NULL,
            warned INTEGER NOT NULL DEFAULT 0,
            set_by TEXT NOT NULL
        );
        CREATE TABLE machine_runs (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            instance_id TEXT NOT NULL,
            started_at REAL NOT NULL,
            stopped_at REAL
        );
        CREATE INDEX machine_runs_name ON machine_runs(name, started_at)
        """,
    ),
)


@dataclass(frozen=True)
class TimerRow:
    """The auto-stop of machine `name` at `stop_at`; `warned` once the room was told."""

    name: str
    instance_id: str
    room_id: str
    stop_at: float
    warned: bool
    set_by: str

    @classmethod
    def of(cls, row: Row) -> TimerRow:
        """The dataclass of a `SELECT * FROM machine_timers` row."""
        return cls(
            name=str(row["name"]),
            instance_id=str(row["instance_id"]),
            room_id=str(row["room_id"]),
            stop_at=float(row["stop_at"]),
            warned=bool(row["warned"]),
            set_by=str(row["set_by"]),
        )


@dataclass(frozen=True)
class RunRow:
    """One period machine `name` ran; `stopped_at` is None while it runs."""

    name: str
    instance_id: str
    started_at: float
    stopped_at: float | None


async def set_timer(
    store: Store, name: str, instance_id: str, room_id: str, stop_at: float, set_by: str
) -> None:
    """Set (or replace) the auto-stop of `name`; a replaced one's warning is due again."""
    await store.execute(
        "INSERT INTO machine_timers(name, instance_id, room_id, stop_at, warned, set_by) "
        "VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT(name) DO UPDATE SET "
        "instance_id = excluded.instance_id, room_id = excluded.room_id, "
        "stop_at = excluded.stop_at, warned = 0, set_by = excluded.set_by",
        (name, instance_id, room_id, stop_at, set_by),
    )


async def timer(store: Store, name: str) -> TimerRow | None:
    """The pending auto-stop of `name`, if any."""
    row = (await store.execute("SELECT * FROM machine_timers WHERE name = ?", (name,))).fetchone()
    return None if row is None else TimerRow.of(row)


async def timers(store: Store) -> list[TimerRow]:
    """Every pending auto-stop, soonest first."""
    rows = (await store.execute("SELECT * FROM machine_timers ORDER BY stop_at, name")).fetchall()
    return [TimerRow.of(r) for r in rows]


async def mark_warned(store: Store, name: str) -> None:
    """Record that the room was warned of `name`'s auto-stop."""
    await store.execute("UPDATE machine_timers SET warned = 1 WHERE name = ?", (name,))


async def clear_timer(store: Store, name: str) -> None:
    """Drop the auto-stop of `name` (stopped, or no longer configured)."""
    await store.execute("DELETE FROM machine_timers WHERE name = ?", (name,))


async def open_run(store: Store, name: str, instance_id: str, started_at: float) -> None:
    """Record that `name` runs since `started_at`, unless a run of it is already open."""
    async with store.transaction() as tx:
        row = (
            await tx.execute(
                "SELECT 1 FROM machine_runs WHERE name = ? AND stopped_at IS NULL", (name,)
            )
        ).fetchone()
        if row is None:
            await tx.execute(
                "INSERT INTO machine_runs(name, instance_id, started_at) VALUES (?, ?, ?)",
                (name, instance_id, started_at),
            )


async def close_run(store: Store, name: str, stopped_at: float) -> RunRow | None:
    """End the open run of `name` at `stopped_at`; returns it as ended, or None if none was open."""
    async with store.transaction() as tx:
        row = (
            await tx.execute(
                "SELECT * FROM machine_runs WHERE name = ? AND stopped_at IS NULL", (name,)
            )
        ).fetchone()
        if row is None:
            return None
        end = max(stopped_at, float(row["started_at"]))
        await tx.execute("UPDATE machine_runs SET stopped_at = ? WHERE id = ?", (end, row["id"]))
    return RunRow(str(row["name"]), str(row["instance_id"]), float(row["started_at"]), end)


async def runs_since(store: Store, name: str, since: float) -> list[RunRow]:
    """Runs of `name` still open or ended after `since`, oldest first."""
    rows = (
        await store.execute(
            "SELECT * FROM machine_runs WHERE name = ? AND (stopped_at IS NULL OR stopped_at > ?) "
            "ORDER BY started_at",
            (name, since),
        )
    ).fetchall()
    return [
        RunRow(
            str(r["name"]),
            str(r["instance_id"]),
            float(r["started_at"]),
            None if r["stopped_at"] is None else float(r["stopped_at"]),
        )
        for r in rows
    ]
