"""The outbox's rows: the `outbox` table's one owner (bot.outbox is the only caller).

A row is `pending` until delivered (`sent`, with its `event_id`) or given up (`failed`, with
`last_error`). `content` is the event content as JSON text; `txn_id` is the transaction id
every attempt reuses. Times are Unix seconds from the bot's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.store import Row, Store

PENDING, SENT, FAILED = "pending", "sent", "failed"


@dataclass(frozen=True)
class OutboxRow:
    """One event to send (or sent, or given up)."""

    id: int
    room_id: str
    event_type: str
    content: str  # JSON text; '{}' once pruned
    txn_id: str
    created_at: float
    attempts: int
    last_error: str | None
    state: str  # PENDING, SENT or FAILED
    event_id: str | None
    sent_at: float | None
    coalesce_key: str | None

    @classmethod
    def of(cls, row: Row) -> OutboxRow:
        """The dataclass for a row of `SELECT * FROM outbox`."""
        return cls(
            id=int(row["id"]),
            room_id=str(row["room_id"]),
            event_type=str(row["event_type"]),
            content=str(row["content"]),
            txn_id=str(row["txn_id"]),
            created_at=float(row["created_at"]),
            attempts=int(row["attempts"]),
            last_error=None if row["last_error"] is None else str(row["last_error"]),
            state=str(row["state"]),
            event_id=None if row["event_id"] is None else str(row["event_id"]),
            sent_at=None if row["sent_at"] is None else float(row["sent_at"]),
            coalesce_key=None if row["coalesce_key"] is None else str(row["coalesce_key"]),
        )


async def insert(
    store: Store,
    *,
    room_id: str,
    event_type: str,
    content: str,
    txn_id: str,
    now: float,
    coalesce_key: str | None = None,
) -> int:
    """Add a pending row; returns its id (ids are never reused)."""
    cur = await store.execute(
        "INSERT INTO outbox(room_id, event_type, content, txn_id, created_at, coalesce_key) "
        "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (room_id, event_type, content, txn_id, now, coalesce_key),
    )
    return cur.new_id()


async def pending_with_key(store: Store, coalesce_key: str) -> list[int]:
    """The ids of pending rows posted with `coalesce_key`."""
    rows = (
        await store.execute(
            "SELECT id FROM outbox WHERE coalesce_key = ? AND state = ?", (coalesce_key, PENDING)
        )
    ).fetchall()
    return [int(r["id"]) for r in rows]


async def delete(store: Store, outbox_id: int) -> None:
    """Remove a row (one replaced by a newer version before it was sent)."""
    await store.execute("DELETE FROM outbox WHERE id = ?", (outbox_id,))


async def get(store: Store, outbox_id: int) -> OutboxRow | None:
    """The row `outbox_id`, or None."""
    row = (await store.execute("SELECT * FROM outbox WHERE id = ?", (outbox_id,))).fetchone()
    return None if row is None else OutboxRow.of(row)


async def id_of_event(store: Store, event_id: str) -> int | None:
    """The id of the row delivered as `event_id`, or None."""
    row = (await store.execute("SELECT id FROM outbox WHERE event_id = ?", (event_id,))).fetchone()
    return None if row is None else int(row["id"])


async def amend_untried(store: Store, outbox_id: int, content: str) -> bool:
    """Replace the content of a pending row never tried; False if there is no such row."""
    cur = await store.execute(
        "UPDATE outbox SET content = ? WHERE id = ? AND state = ? AND attempts = 0",
        (content, outbox_id, PENDING),
    )
    return cur.rowcount == 1


async def claim(store: Store, outbox_id: int) -> OutboxRow | None:
    """Count an attempt on a pending row before it is sent; returns the row as counted, or
    None if it is no longer pending.

    Under the store's write lock, so it orders against a transaction that found the row
    untried and amends it (an alert batch on either instance, commands.alerts.packing):
    that one commits first and this reads its content, or this counts first and the other
    finds the row tried.
    """
    async with store.transaction():
        row = (
            await store.execute(
                "UPDATE outbox SET attempts = attempts + 1 WHERE id = ? AND state = ? RETURNING *",
                (outbox_id, PENDING),
            )
        ).fetchone()
    return None if row is None else OutboxRow.of(row)


async def unclaim(store: Store, outbox_id: int) -> None:
    """Take back `claim`'s count of an attempt that sent nothing."""
    await store.execute(
        "UPDATE outbox SET attempts = attempts - 1 WHERE id = ? AND state = ? AND attempts > 0",
        (outbox_id, PENDING),
    )


async def untried(store: Store, outbox_id: int) -> bool:
    """Whether the row is pending and was never tried."""
    row = (
        await store.execute(
            "SELECT 1 FROM outbox WHERE id = ? AND state = ? AND attempts = 0", (outbox_id, PENDING)
        )
    ).fetchone()
    return row is not None


async def count(store: Store, state: str) -> int:
    """How many rows are in `state`."""
    row = (
        await store.execute("SELECT COUNT(*) AS n FROM outbox WHERE state = ?", (state,))
    ).fetchone()
    return int(row["n"])


async def room_heads(store: Store) -> list[OutboxRow]:
    """Each room's oldest pending row."""
    rows = (
        await store.execute(
            "SELECT * FROM outbox WHERE id IN "
            "(SELECT MIN(id) FROM outbox WHERE state = ? GROUP BY room_id)",
            (PENDING,),
        )
    ).fetchall()
    return [OutboxRow.of(r) for r in rows]


async def oldest_pending(store: Store, room_id: str) -> OutboxRow | None:
    """The room's oldest pending row, or None."""
    row = (
        await store.execute(
            "SELECT * FROM outbox WHERE state = ? AND room_id = ? ORDER BY id LIMIT 1",
            (PENDING, room_id),
        )
    ).fetchone()
    return None if row is None else OutboxRow.of(row)


async def record_refusal(
    store: Store, outbox_id: int, attempts: int, error: str, *, give_up: bool
) -> None:
    """Count a refused attempt; the row is `failed` when given up, else stays pending."""
    await store.execute(
        "UPDATE outbox SET attempts = ?, last_error = ?, state = ? WHERE id = ?",
        (attempts, error, FAILED if give_up else PENDING, outbox_id),
    )


async def mark_sent(
    store: Store, outbox_id: int, event_id: str | None, *, now: float, note: str | None = None
) -> None:
    """Record delivery as `event_id` (None: delivered, id unknown) at `now`; the attempt
    was counted by `claim` (a row never claimed counts one).

    `note` goes to `last_error` (why a refusal still counts as delivered); without one it is
    left as it was.
    """
    await store.execute(
        "UPDATE outbox SET state = ?, event_id = ?, sent_at = ?, "
        "attempts = CASE WHEN attempts = 0 THEN 1 ELSE attempts END, "
        "last_error = COALESCE(?, last_error) WHERE id = ?",
        (SENT, event_id, now, note, outbox_id),
    )


async def prune_content(store: Store, *, before: float) -> int:
    """Empty the content of finished rows created before `before`; returns how many."""
    cur = await store.execute(
        "UPDATE outbox SET content = '{}' WHERE state <> ? AND created_at < ? AND content <> '{}'",
        (PENDING, before),
    )
    return cur.rowcount
