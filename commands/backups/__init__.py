"""Backup freshness: `backups`, and state changes announced in the room without asking.

Every run stores each result — one per dataset, zrepl job, file glob or database a check
watches, so one fault never hides another; the room hears only of a change (OK→STALE, →ERROR,
back to OK) and, while a result stays bad, a reminder at `remind_every` — never every hour
(`commands.backups.transitions`). The last announced state is stored per result (`check` or
`check:item`, `commands.backups.db`), so a restart does not announce again what the room
already knows. Every time comes from the runtime's clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import Field

from bot import messages
from bot.args import arg
from bot.config import Config, ScheduleConfig, Section
from bot.context import Context, JobContext, Runtime
from bot.durations import Duration, format_duration
from bot.errors import UserError
from bot.mentions import NOBODY, MentionRule, mentions_for
from bot.messages import escape, human_duration, table
from bot.registry import Router, StateKey
from bot.services.ssh import SshClient, SshSettings
from commands.backups import db
from commands.backups.checks import BackupCheck, run_check
from commands.backups.result import CheckResult
from commands.backups.transitions import Announce, transition

router = Router("backups")
ICONS = {"OK": "✅", "STALE": "⚠️", "ERROR": "❌"}


class BackupsConfig(Section):
    cron: str = "0 * * * *"
    room: str | None = None
    remind_every: Duration = timedelta(hours=24)
    timeout_s: float = Field(default=30, gt=0)
    mentions: list[MentionRule] = Field(default_factory=list)
    ssh: SshSettings = SshSettings()
    checks: list[BackupCheck] = Field(default_factory=list)


router.section("backups", BackupsConfig)
for _version, _sql in db.MIGRATIONS:
    router.migration(_version, _sql)


@dataclass(frozen=True)
class Backups:
    """The feature's state: the SSH client its checks share (one connection per check run,
    each closed when the run ends, so none is left open at shutdown)."""

    ssh: SshClient


BACKUPS = StateKey("backups", Backups)


@router.lifespan(BACKUPS)
@asynccontextmanager
async def backups_state(rt: Runtime) -> AsyncIterator[Backups]:
    """The SSH client, configured once from `backups.ssh` (defaults when not configured)."""
    cfg = rt.config.section("backups", BackupsConfig) or BackupsConfig()
    yield Backups(SshClient.from_settings(cfg.ssh))


def _config(rt: Runtime) -> BackupsConfig:
    cfg = rt.config.section("backups", BackupsConfig)
    if cfg is None or not cfg.checks:
        raise UserError("No backup checks are configured (`backups.checks`).")
    return cfg


@router.schedules
def _hourly(config: Config) -> list[ScheduleConfig]:
    cfg = config.section("backups", BackupsConfig)
    if cfg is None or not cfg.checks:
        return []
    return [ScheduleConfig(name="backups", cron=cfg.cron, job="backups.check", room=cfg.room)]


@dataclass(frozen=True)
class Run:
    """One run of every check: when (the runtime's clock) and the results in config order."""

    at: datetime
    results: list[CheckResult]


async def run_all(rt: Runtime) -> Run:
    """Run every check concurrently, store the results, announce state changes.

    Results come in config order, each check's items together.
    """
    cfg = _config(rt)
    ssh = rt[BACKUPS].ssh
    now = rt.clock.now()
    per_check = await asyncio.gather(*(run_check(c, ssh, cfg.timeout_s, now) for c in cfg.checks))
    room = rt.transport.resolve_room(cfg.room) if cfg.room else rt.default_room()
    async with rt.store.transaction():
        for check, results in zip(cfg.checks, per_check, strict=True):
            for result in results:
                await db.add_result(rt.store, result, now)
                step = transition(
                    await db.state_of(rt.store, result.key),
                    result.key,
                    result.state,
                    now,
                    cfg.remind_every,
                )
                if step.save is not None:
                    await db.save_state(rt.store, step.save)
                if step.announce is not None:
                    await _announce(rt, cfg, room, check, result, step.announce, now - step.since)
            if results and all(r.item is not None for r in results):
                await _whole_check_recovered(rt, room, check, results, now)
    return Run(now, [r for results in per_check for r in results])


async def _whole_check_recovered(
    rt: Runtime,
    room: str,
    check: BackupCheck,
    results: list[CheckResult],
    now: datetime,
) -> None:
    """A check that failed as a whole (unreachable, odd output) works again: say so, once.

    Its items' own states are announced by their own results; this only closes the
    whole-check fault, which no later result would otherwise ever clear.
    """
    prev = await db.state_of(rt.store, check.name)
    if prev is None or prev.state == "OK":
        return
    await db.save_state(rt.store, db.StateRow(check.name, "OK", now, now))
    counts = ", ".join(f"{n} {s}" for s in ICONS if (n := sum(1 for r in results if r.state == s)))
    head = f"✅ backup {check.name} answers again"
    detail = f"it was {prev.state} as a whole; each of its items is judged on its own: {counts}"
    text = f"{head}: {detail} [{check.kind} {check.target()}]"
    html = (
        f"<b>{escape(head)}</b>: {escape(detail)} "
        f"<i>[{escape(check.kind)} {escape(check.target())}]</i>"
    )
    content = messages.notice(text, html)
    content["m.mentions"] = NOBODY.content()
    await rt.outbox.post(room, content)


async def _announce(
    rt: Runtime,
    cfg: BackupsConfig,
    room: str,
    check: BackupCheck,
    result: CheckResult,
    how: Announce,
    lasting: timedelta,
) -> None:
    icon = ICONS[result.state]
    if how == "recovered":
        head = f"{icon} backup {result.label} is OK again"
    elif how == "still":
        head = (
            f"{icon} backup {result.label} is still {result.state} "
            f"({human_duration(lasting.total_seconds())})"
        )
    else:
        head = f"{icon} backup {result.label} is {result.state}"
    pings = NOBODY if result.state == "OK" else mentions_for(cfg.mentions, check.severity)
    target = check.target(result.item)
    text = f"{pings.text()} {head}: {result.detail} [{check.kind} {target}]".lstrip()
    html = (
        f"{pings.html()} <b>{escape(head)}</b>: {escape(result.detail)} "
        f"<i>[{escape(check.kind)} {escape(target)}]</i>"
    ).lstrip()
    content = messages.notice(text, html)
    content["m.mentions"] = pings.content()
    await rt.outbox.post(room, content)


@router.job("backups.check")
async def backups_job(ctx: JobContext) -> str:
    """Run every backup check; announce what changed."""
    results = (await run_all(ctx.rt)).results
    counts = {s: sum(1 for r in results if r.state == s) for s in ICONS}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n)


def check_name(word: str, rt: Runtime) -> BackupCheck:
    """A configured backup check, by name; UserError naming the known ones otherwise."""
    cfg = _config(rt)
    found = next((c for c in cfg.checks if c.name == word), None)
    if found is None:
        known = ", ".join(c.name for c in cfg.checks)
        raise UserError(f"no backup check named {word!r}; known: {known}")
    return found


CHECK = arg("name", check_name, required=False)


def _age(result: CheckResult, now: datetime) -> str:
    age = result.age(now)
    return "—" if age is None else human_duration(age)


@router.command("backups", params=[CHECK])
async def backups_cmd(ctx: Context) -> None:
    """Check every backup now and show how fresh each is; with a check's name, its last runs."""
    cfg = _config(ctx.rt)
    if ctx.given(CHECK):
        await _details(ctx, ctx[CHECK])
        return
    await ctx.react("👀")
    run = await run_all(ctx.rt)
    checks = {c.name: c for c in cfg.checks}
    rows = []
    for r in run.results:
        check = checks[r.name]
        rows.append(
            [
                check.name,
                check.target(r.item),
                r.newest.strftime("%Y-%m-%d %H:%M") if r.newest else "—",
                _age(r, run.at),
                format_duration(check.max_age),
                f"{ICONS[r.state]} {r.state}",
            ]
        )
    text, html = table(["backup", "target", "newest (UTC)", "age", "max age", "state"], rows)
    bad = [r for r in run.results if r.state != "OK"]
    notes = "\n".join(f"{ICONS[r.state]} {r.label}: {r.detail}" for r in bad)
    notes_html = "".join(
        f"<li>{ICONS[r.state]} <b>{escape(r.label)}</b>: {escape(r.detail)}</li>" for r in bad
    )
    await ctx.reply(
        text + (f"\n{notes}" if notes else ""),
        html + (f"<ul>{notes_html}</ul>" if notes_html else ""),
    )


async def _details(ctx: Context, check: BackupCheck) -> None:
    # The last five runs, each with every item it judged.
    rows = await db.recent_runs(ctx.rt.store, check.name, 5)
    lines = [
        f"{check.name}: {check.kind} on {check.target()}, "
        f"max age {format_duration(check.max_age)}, severity {check.severity}"
    ]
    for row in rows:
        lines.append(
            f"{row.checked_at:%Y-%m-%d %H:%M} UTC  {ICONS[row.state]} {row.state}  {row.detail}"
        )
    if not rows:
        lines.append(f"not checked yet; `{ctx.rt.prefix}backups` checks everything now")
    await ctx.reply("\n".join(lines), "<br>".join(escape(line) for line in lines))
