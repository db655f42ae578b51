"""The scheduler's record of job runs: the `job_runs` table's one owner.

A run is stored when it starts (outcome `running`) and completed when it ends (`ok`, `error`),
or marked `interrupted` by the next start when the bot stopped during it. `scheduled_for` is
the schedule slot the run stands for (for a manual run, when it was asked); `trigger` is
`schedule`, `missed` or `manual`. Times are Unix seconds from the bot's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.store import Row, Store


@dataclass(frozen=True)
class JobRunRow:
    """One run of a scheduled job."""

    id: int
    job: str
    scheduled_for: float
    trigger: str
    started_at: float
    ended_at: float | None
    outcome: str
    detail: str | None

    @classmethod
    def of(cls, row: Row) -> JobRunRow:
        """The dataclass for a row of `SELECT * FROM job_runs`."""
        return cls(
            id=int(row["id"]),
            job=str(row["job"]),
            scheduled_for=float(row["scheduled_for"]),
            trigger=str(row["trigger"]),
            started_at=float(row["started_at"]),
            ended_at=None if row["ended_at"] is None else float(row["ended_at"]),
            outcome=str(row["outcome"]),
            detail=None if row["detail"] is None else str(row["detail"]),
        )


async def interrupt_running(store: Store, *, now: float) -> int:
    """Mark runs left `running` by a stop as `interrupted`; returns how many."""
    cur = await store.execute(
        "UPDATE job_runs SET outcome = 'interrupted', ended_at = ? WHERE outcome = 'running'",
        (now,),
    )
    return cur.rowcount


async def last_scheduled(store: Store, job: str) -> float | None:
    """The latest slot the schedule (not a manual run) ran `job` for, or None."""
    row = (
        await store.execute(
            "SELECT MAX(scheduled_for) AS t FROM job_runs WHERE job = ? AND trigger <> 'manual'",
            (job,),
        )
    ).fetchone()
    return None if row["t"] is None else float(row["t"])


async def start(store: Store, job: str, *, scheduled_for: float, trigger: str, now: float) -> int:
    """Record that a run of `job` started at `now`; returns the row id for `end`."""
    cur = await store.execute(
        "INSERT INTO job_runs(job, scheduled_for, trigger, started_at) VALUES (?, ?, ?, ?) "
        "RETURNING id",
        (job, scheduled_for, trigger, now),
    )
    return cur.new_id()


async def end(store: Store, run_id: int, outcome: str, detail: str, *, now: float) -> None:
    """Record how the run `run_id` ended (`detail` is cut to 500 characters)."""
    await store.execute(
        "UPDATE job_runs SET ended_at = ?, outcome = ?, detail = ? WHERE id = ?",
        (now, outcome, detail[:500], run_id),
    )


async def latest(store: Store, job: str) -> JobRunRow | None:
    """The run of `job` that started last, or None."""
    row = (
        await store.execute(
            "SELECT * FROM job_runs WHERE job = ? ORDER BY started_at DESC, id DESC LIMIT 1",
            (job,),
        )
    ).fetchone()
    return None if row is None else JobRunRow.of(row)


async def of_job(store: Store, job: str) -> list[JobRunRow]:
    """Every run of `job`, oldest first."""
    rows = (
        await store.execute("SELECT * FROM job_runs WHERE job = ? ORDER BY id", (job,))
    ).fetchall()
    return [JobRunRow.of(r) for r in rows]
