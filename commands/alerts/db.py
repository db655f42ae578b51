"""The alerts feature's tables, and the only code that reads or writes them.

`alert_groups` holds one row per alert group per room: the outbox row of the message that
shows it, what the group last said (its state digest), whether it is still open, and what a
🔕 on its message silences. Times are Unix seconds (REAL). Plain SQL with `?` parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from bot.store import Row, Store

# (version, SQL) in order; registered by the feature's router.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
    CREATE TABLE alert_groups (
        id INTEGER PRIMARY KEY,
        room_id TEXT NOT NULL,
        group_key TEXT NOT NULL,
        open INTEGER NOT NULL DEFAULT 1,
        outbox_id INTEGER NOT NULL,
        digest TEXT NOT NULL,
        status TEXT NOT NULL,
        alerts INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX alert_groups_open ON alert_groups(room_id, group_key) WHERE open = 1
    """,
    ),
    (
        2,
        """
    ALTER TABLE alert_groups ADD COLUMN in_digest INTEGER NOT NULL DEFAULT 0
    """,
    ),
    # A group's newest row, open or not (a resolved group's HA twin must find it), and the
    # rows of one message (marked shared when a second group joins it).
    (
        3,
        """
    CREATE INDEX alert_groups_newest ON alert_groups(room_id, group_key, id);
    CREATE INDEX alert_groups_message ON alert_groups(outbox_id)
    """,
    ),
    # What silences a group from chat (🔕): its group labels, or its common ones.
    (
        4,
        """
    ALTER TABLE alert_groups ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'
    """,
    ),
    # The matchers a 🔕 uses, or why there are none (silencing.encode_plan); NULL: use labels.
    (
        5,
        """
    ALTER TABLE alert_groups ADD COLUMN silence TEXT
    """,
    ),
    # Which firings of its alerts the group has seen, and when each resolve was seen
    # (rules.learn): an HA replica's older copy is recognised by it.
    (
        6,
        """
    ALTER TABLE alert_groups ADD COLUMN known TEXT NOT NULL DEFAULT '{}'
    """,
    ),
]


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(frozen=True)
class GroupRow:
    """One alert group as shown in one room."""

    id: int
    room_id: str
    group_key: str
    open: bool
    outbox_id: int  # the outbox row of the message showing it
    digest: str  # Notification.state_digest() of what it last said
    status: str  # "firing" | "resolved", as Alertmanager last said
    alerts: int  # alerts in its last notification
    created_at: datetime  # when it started firing (UTC)
    updated_at: datetime  # its last notification (UTC)
    in_digest: bool  # its message shows other groups too
    labels: str  # JSON object: its group labels (or common labels)
    silence: str | None  # JSON silence plan (silencing.encode_plan); None: use labels
    known: str  # JSON object: rules.learn's incarnation -> Unix time of its resolve, or null

    @classmethod
    def of(cls, row: Row) -> GroupRow:
        """The dataclass for a `SELECT *` row."""
        return cls(
            id=int(row["id"]),
            room_id=str(row["room_id"]),
            group_key=str(row["group_key"]),
            open=bool(row["open"]),
            outbox_id=int(row["outbox_id"]),
            digest=str(row["digest"]),
            status=str(row["status"]),
            alerts=int(row["alerts"]),
            created_at=_moment(float(row["created_at"])),
            updated_at=_moment(float(row["updated_at"])),
            in_digest=bool(row["in_digest"]),
            labels=str(row["labels"]),
            silence=None if row["silence"] is None else str(row["silence"]),
            known=str(row["known"]),
        )


@dataclass(frozen=True)
class GroupState:
    """What a notification changes in a group's row."""

    digest: str
    status: str
    alerts: int
    open: bool
    silence: str  # JSON silence plan
    known: str = "{}"  # JSON object (rules.learn)


async def newest_group(store: Store, room_id: str, group_key: str) -> GroupRow | None:
    """The group's newest row in the room, open or closed, or None."""
    row = (
        await store.execute(
            "SELECT * FROM alert_groups WHERE room_id = ? AND group_key = ? "
            "ORDER BY id DESC LIMIT 1",
            (room_id, group_key),
        )
    ).fetchone()
    return None if row is None else GroupRow.of(row)


async def open_group(
    store: Store,
    room_id: str,
    group_key: str,
    outbox_id: int,
    state: GroupState,
    *,
    created_at: datetime,
    updated_at: datetime,
    shared: bool,
    labels: str,
) -> int:
    """Add the group's row for a new message; returns its id."""
    cursor = await store.execute(
        "INSERT INTO alert_groups(room_id, group_key, open, outbox_id, digest, status, alerts, "
        "created_at, updated_at, in_digest, labels, silence, known) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (
            room_id,
            group_key,
            int(state.open),
            outbox_id,
            state.digest,
            state.status,
            state.alerts,
            created_at.timestamp(),
            updated_at.timestamp(),
            int(shared),
            labels,
            state.silence,
            state.known,
        ),
    )
    return cursor.new_id()


async def update_group(
    store: Store, group_id: int, state: GroupState, updated_at: datetime
) -> None:
    """Record what the group says now; its message stays the same."""
    await store.execute(
        "UPDATE alert_groups SET digest = ?, status = ?, alerts = ?, updated_at = ?, open = ?, "
        "silence = ?, known = ? WHERE id = ?",
        (
            state.digest,
            state.status,
            state.alerts,
            updated_at.timestamp(),
            int(state.open),
            state.silence,
            state.known,
            group_id,
        ),
    )


async def delete_group(store: Store, group_id: int) -> None:
    """Forget a row (the group moves to another message)."""
    await store.execute("DELETE FROM alert_groups WHERE id = ?", (group_id,))


async def mark_shared(store: Store, outbox_id: int) -> None:
    """Every group of the message now shares it with others."""
    await store.execute("UPDATE alert_groups SET in_digest = 1 WHERE outbox_id = ?", (outbox_id,))


async def groups_of_message(store: Store, outbox_id: int, room_id: str) -> list[GroupRow]:
    """The groups a message shows (open or closed), oldest first."""
    rows = (
        await store.execute(
            "SELECT * FROM alert_groups WHERE outbox_id = ? AND room_id = ? ORDER BY id",
            (outbox_id, room_id),
        )
    ).fetchall()
    return [GroupRow.of(row) for row in rows]


async def prune_closed(store: Store, before: datetime) -> int:
    """Delete closed groups last updated before `before`; returns how many."""
    cursor = await store.execute(
        "DELETE FROM alert_groups WHERE open = 0 AND updated_at < ?", (before.timestamp(),)
    )
    return cursor.rowcount
