"""The costs feature's table; no other module reads or writes it.

`cost_anomalies` keeps every (grouping, key, day) the daily anomaly check found, so that an
anomaly is posted once: a second run for the same day (a manual run, a restart, a missed run
caught up) finds it there, and a spike that lasts several days is one anomaly (a row for the
day before means the room already knows). Days are ISO dates (UTC days, as Cost Explorer
counts them); `posted_at` is Unix seconds, NULL for a day that continued a known anomaly.
Plain SQL with `?` parameters, so that another store can run it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from bot.store import Store

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE cost_anomalies (
            grouping TEXT NOT NULL,
            key TEXT NOT NULL,
            day TEXT NOT NULL,
            amount REAL NOT NULL,
            usual REAL NOT NULL,
            posted_at REAL,
            PRIMARY KEY (grouping, key, day)
        )
        """,
    ),
)


@dataclass(frozen=True)
class AnomalyRow:
    """One key's unusual spend on one day, under one grouping ("service", "tag Name")."""

    grouping: str
    key: str
    day: date
    amount: float
    usual: float


async def record(store: Store, row: AnomalyRow, now: datetime) -> bool:
    """Keep the row; True when the room must be told: it is new, and the key was not already
    anomalous the day before. Run it inside the transaction that queues the post."""
    before = (
        await store.execute(
            "SELECT 1 FROM cost_anomalies WHERE grouping = ? AND key = ? AND day = ?",
            (row.grouping, row.key, (row.day - timedelta(days=1)).isoformat()),
        )
    ).fetchone()
    inserted = (
        await store.execute(
            "INSERT INTO cost_anomalies(grouping, key, day, amount, usual, posted_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(grouping, key, day) DO NOTHING",
            (
                row.grouping,
                row.key,
                row.day.isoformat(),
                row.amount,
                row.usual,
                None if before else now.timestamp(),
            ),
        )
    ).rowcount
    return bool(inserted) and before is None
