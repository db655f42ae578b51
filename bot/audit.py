"""The command audit log: the `audit` table's one owner.

Every command and every reaction that acts like one gets a row when it starts (outcome
`running`) that is completed when it ends, whatever the outcome: `ok`, `denied`, `bad_input`
or `error`. Times are Unix seconds from the bot's clock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from bot.store import Row, Store


@dataclass(frozen=True)
class AuditRow:
    """One command run as recorded; `args` are the words after the command's name."""

    id: int
    started_at: float
    ended_at: float | None
    sender: str
    room_id: str
    event_id: str
    command: str
    args: tuple[str, ...]
    outcome: str
    detail: str | None

    @classmethod
    def of(cls, row: Row) -> AuditRow:
        """The dataclass for a row of `SELECT * FROM audit`."""
        return cls(
            id=int(row["id"]),
            started_at=float(row["started_at"]),
            ended_at=None if row["ended_at"] is None else float(row["ended_at"]),
            sender=str(row["sender"]),
            room_id=str(row["room_id"]),
            event_id=str(row["event_id"]),
            command=str(row["command"]),
            args=tuple(str(a) for a in json.loads(row["args"])),
            outcome=str(row["outcome"]),
            detail=None if row["detail"] is None else str(row["detail"]),
        )


async def start(
    store: Store,
    *,
    sender: str,
    room_id: str,
    event_id: str,
    command: str,
    args: Sequence[str],
    now: float,
) -> int:
    """Record that a command started at `now`; returns the row id for `end`."""
    cur = await store.execute(
        "INSERT INTO audit(started_at, sender, room_id, event_id, command, args) "
        "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (now, sender, room_id, event_id, command, json.dumps(list(args))),
    )
    return cur.new_id()


async def end(store: Store, audit_id: int, outcome: str, detail: str | None, *, now: float) -> None:
    """Record how the command of row `audit_id` ended, at `now`."""
    await store.execute(
        "UPDATE audit SET ended_at = ?, outcome = ?, detail = ? WHERE id = ?",
        (now, outcome, detail, audit_id),
    )


async def recent(store: Store, limit: int = 20) -> list[AuditRow]:
    """The newest `limit` rows, newest first."""
    rows = (
        await store.execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
    ).fetchall()
    return [AuditRow.of(r) for r in rows]


async def of_command(store: Store, command: str) -> list[AuditRow]:
    """Every row of one command (or reaction acting as it), oldest first."""
    rows = (
        await store.execute("SELECT * FROM audit WHERE command = ? ORDER BY id", (command,))
    ).fetchall()
    return [AuditRow.of(r) for r in rows]
