"""Cron jobs from config, in UTC, with each run stored so a restart neither repeats nor skips.

On start, a job whose next time after its last stored run has already passed was missed
while the bot was down: it runs once (not once per missed slot) and the schedule resumes.

A job runs once at a time: its run holds the claim `job:<name>` (see bot.claims), so of two
`!jobs run` in one sync batch one runs and the other is told who started it; a request sent
before a run of the job started is answered by that run rather than starting another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from bot import job_runs
from bot.backoff import Backoff
from bot.claims import Busy, Claim
from bot.context import CURRENT_MESSAGE, JobContext, Runtime, error_ref
from bot.cron import CronSchedule
from bot.errors import BotError, UserError
from bot.store import StoreUnavailable

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobStatus:
    """What `!jobs` shows for one job."""

    name: str
    cron: str
    job: str
    enabled: bool
    running: bool
    next_run: datetime | None
    last_started: datetime | None
    last_outcome: str | None
    last_detail: str | None


class Scheduler:
    """Runs the configured schedules; one asyncio task drives them all."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        # A job named in the config file overrides a feature's default of the same name.
        features = rt.registry.feature_schedules(rt.config)
        self.schedules = {s.name: s for s in [*features, *rt.config.core.schedules]}
        self.crons = {s.name: CronSchedule(s.cron) for s in self.schedules.values()}
        self.next_run: dict[str, datetime] = {}
        self._last_start: dict[str, Claim] = {}  # each job's latest run: who, since when
        self._last_outcome: dict[str, str] = {}
        self._wake = asyncio.Event()

    @property
    def running(self) -> set[str]:
        """The jobs running now."""
        return {n for n in self.schedules if self.rt.claims.holder(_key(n)) is not None}

    async def _last_scheduled(self, name: str) -> datetime | None:
        last = await job_runs.last_scheduled(self.rt.store, name)
        return None if last is None else datetime.fromtimestamp(last, UTC)

    async def run(self) -> None:
        """Drive every enabled schedule until cancelled."""
        await job_runs.interrupt_running(self.rt.store, now=self.rt.clock.time())
        now = self.rt.clock.now()
        for name, sched in self.schedules.items():
            if not sched.enabled:
                continue
            cron = self.crons[name]
            last = await self._last_scheduled(name)
            if last is not None and cron.next_after(last) <= now:
                missed = cron.prev_before(now)
                log.info("job %s missed its run at %s; running it once now", name, missed)
                self._start(name, missed, "missed")
            self.next_run[name] = cron.next_after(now)
        while True:
            now = self.rt.clock.now()
            for name, due in sorted(self.next_run.items(), key=lambda kv: kv[1]):
                if due <= now:
                    self._start(name, due, "schedule")
                    self.next_run[name] = self.crons[name].next_after(max(now, due))
            if not self.next_run:
                await asyncio.Event().wait()
            self._wake.clear()
            await self.rt.clock.sleep_until(min(self.next_run.values()), self._wake)

    def _claim(self, name: str, holder: str) -> Claim | None:
        """Claim the job for a run; None if it was free, else who runs it now."""
        held = self.rt.claims.try_claim(_key(name), holder, f"job {name}")
        mine = self.rt.claims.holder(_key(name))
        if held is None and mine is not None:
            self._last_start[name] = mine
        return held

    def _start(self, name: str, scheduled_for: datetime, trigger: str) -> None:
        if self._claim(name, "the schedule") is not None:
            log.warning("job %s is still running; skipping its %s run", name, trigger)
            self.rt.metrics.job_runs.labels(name, "skipped").inc()
            return
        self.rt.tasks.spawn(self._run_job(name, scheduled_for, trigger), name=f"job:{name}")

    async def run_now(self, name: str) -> str:
        """Run a job at once (from `!jobs run`); returns its outcome line.

        Raises UserError for an unknown job, Busy while it runs, and UserError when a run
        started after the request was sent (that run answered it).
        """
        if name not in self.schedules:
            raise UserError(f"No job named {name!r}; `{self.rt.prefix}jobs` lists them.")
        msg = CURRENT_MESSAGE.get()
        last = self._last_start.get(name)
        # No await from here to the claim: a second request cannot slip in between.
        if msg is not None and last is not None and last.since * 1000 >= msg.server_ts:
            held = self.rt.claims.holder(_key(name))
            if held is not None:
                raise Busy(held)
            when = datetime.fromtimestamp(last.since, UTC)
            raise UserError(
                f"Job {name} already ran after you asked: started by {last.holder} at "
                f"{when:%H:%M:%S} UTC ({self._last_outcome.get(name, 'done')})."
            )
        held = self._claim(name, msg.sender if msg is not None else "someone")
        if held is not None:
            raise Busy(held)
        return await self._run_job(name, self.rt.clock.now(), "manual")

    async def _run_job(self, name: str, scheduled_for: datetime, trigger: str) -> str:
        """Run a claimed job and release its claim, whatever happens."""
        try:
            return await self._run_claimed(name, scheduled_for, trigger)
        finally:
            self.rt.claims.release(_key(name))

    async def _until_stored(self, name: str, what: str, write: Callable[[], Awaitable[T]]) -> T:
        """Record a run's start or end, waiting out a store that is down (logged, counted):
        a run is never done unrecorded, so a restart neither repeats nor skips it."""
        backoff = Backoff(1.0, 60.0)
        while True:
            try:
                return await write()
            except StoreUnavailable as exc:
                wait = backoff.next()
                self.rt.metrics.errors.labels("scheduler").inc()
                log.warning(
                    "job %s: cannot record %s (%s); retrying in %.1f s", name, what, exc, wait
                )
                await asyncio.sleep(wait)

    async def _run_claimed(self, name: str, scheduled_for: datetime, trigger: str) -> str:
        sched = self.schedules[name]
        job_type = self.rt.registry.jobs[sched.job]
        room = self.rt.transport.resolve_room(sched.room) if sched.room else self.rt.default_room()
        stored_for = scheduled_for.timestamp()
        # Manual runs are stored with their trigger so they never move the schedule's last run.
        run_id = await self._until_stored(
            name,
            "its start",
            lambda: job_runs.start(
                self.rt.store,
                name,
                scheduled_for=stored_for,
                trigger=trigger,
                now=self.rt.clock.time(),
            ),
        )
        ctx = JobContext(self.rt, sched, room, stored_for, trigger)
        outcome, detail = "ok", ""
        try:
            detail = await job_type.func(ctx) or ""
        except BotError as exc:
            outcome, detail = "error", str(exc)
            await self.rt.post(room, f"⚠️ scheduled job {name} failed: {exc}")
        except Exception as exc:
            ref = error_ref()
            outcome, detail = "error", f"{type(exc).__name__} (ref {ref})"
            log.exception("job %s failed (ref %s)", name, ref)
            await self.rt.post(room, f"⚠️ scheduled job {name} failed unexpectedly (ref {ref})")
        finally:
            self._last_outcome[name] = outcome
            await self._until_stored(
                name,
                "its end",
                lambda: job_runs.end(
                    self.rt.store, run_id, outcome, detail, now=self.rt.clock.time()
                ),
            )
            self.rt.metrics.job_runs.labels(name, outcome).inc()
        return f"{outcome}: {detail}" if detail else outcome

    async def status(self) -> list[JobStatus]:
        """Every configured job with its last run and next run."""
        out = []
        for name, sched in self.schedules.items():
            last = await job_runs.latest(self.rt.store, name)
            out.append(
                JobStatus(
                    name=name,
                    cron=sched.cron,
                    job=sched.job,
                    enabled=sched.enabled,
                    running=name in self.running,
                    next_run=self.next_run.get(name),
                    last_started=None
                    if last is None
                    else datetime.fromtimestamp(last.started_at, UTC),
                    last_outcome=None if last is None else last.outcome,
                    last_detail=None if last is None else last.detail,
                )
            )
        return out


def _key(name: str) -> str:
    return f"job:{name}"
