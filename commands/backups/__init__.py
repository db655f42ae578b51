"""Backup freshness: `!backups`, and state changes announced in the room without asking.

Every run stores each result — one per dataset, zrepl job, file glob or database a check
watches, so one fault never hides another; the room hears only of a change (OK→STALE, →ERROR,
back to OK) and, while a result stays bad, a reminder at `remind_every` — never every hour.
The last announced state is stored per result (`check` or `check:item`), so a restart does not
announce again what the room already knows.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from pydantic import Field

from bot import messages
from bot.args import arg, text
from bot.config import Config, ScheduleConfig, Section
from bot.context import Context, JobContext, Runtime
from bot.durations import Duration, format_duration
from bot.errors import UserError
from bot.mentions import NOBODY, MentionRule, mentions_for
from bot.messages import escape, human_duration, table
from bot.registry import Router
from bot.services.ssh import SshClient, SshSettings
from commands.backups.checks import BackupCheck, run_check
from commands.backups.result import CheckResult

router = Router("backups")
# The wall clock of state changes and reminders (seconds since the epoch); tests set it.
clock: Callable[[], float] = time.time
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
router.migration(
    1,
    """
    CREATE TABLE backup_results (
        id INTEGER PRIMARY KEY,
        check_name TEXT NOT NULL,
        checked_at REAL NOT NULL,
        state TEXT NOT NULL,
        newest REAL,
        detail TEXT NOT NULL,
        facts TEXT NOT NULL
    );
    CREATE INDEX backup_results_check ON backup_results(check_name, checked_at);
    CREATE TABLE backup_state (
        check_name TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        since REAL NOT NULL,
        announced_at REAL
    )
    """,
)
# Results per item (dataset, zrepl job): backup_results.item names it (NULL for a result of
# the whole check); backup_state.check_name holds the result's key, `check` or `check:item`.
router.migration(2, "ALTER TABLE backup_results ADD COLUMN item TEXT")


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


async def run_all(rt: Runtime) -> list[CheckResult]:
    """Run every check concurrently, store the results, announce state changes.

    Results come in config order, each check's items together.
    """
    cfg = _config(rt)
    ssh = SshClient.from_settings(cfg.ssh)
    per_check = await asyncio.gather(*(run_check(c, ssh, cfg.timeout_s) for c in cfg.checks))
    room = rt.transport.resolve_room(cfg.room) if cfg.room else rt.default_room()
    remind_s = cfg.remind_every.total_seconds()
    now = clock()
    with rt.store.transaction() as db:
        for check, results in zip(cfg.checks, per_check, strict=True):
            for result in results:
                db.execute(
                    "INSERT INTO backup_results(check_name, item, checked_at, state, newest, "
                    "detail, facts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        result.name,
                        result.item,
                        now,
                        result.state,
                        result.newest.timestamp() if result.newest else None,
                        result.detail,
                        json.dumps(result.facts, default=str),
                    ),
                )
                how, since = _transition(db, result.key, result.state, now, remind_s)
                if how is not None:
                    _announce(rt, cfg, room, check, result, how, since)
            if results and all(r.item is not None for r in results):
                _whole_check_recovered(rt, db, room, check, results, now)
    return [r for results in per_check for r in results]


def _transition(
    db: sqlite3.Connection, key: str, state: str, now: float, remind_s: float
) -> tuple[str | None, float]:
    """Store the new state of one result; what to announce ("now", "recovered", "still")."""
    prev = db.execute("SELECT * FROM backup_state WHERE check_name = ?", (key,)).fetchone()
    if prev is None:
        announce = "now" if state != "OK" else None
        db.execute(
            "INSERT INTO backup_state(check_name, state, since, announced_at) VALUES (?, ?, ?, ?)",
            (key, state, now, now if announce else None),
        )
        return announce, now
    if prev["state"] != state:
        db.execute(
            "UPDATE backup_state SET state = ?, since = ?, announced_at = ? WHERE check_name = ?",
            (state, now, now, key),
        )
        return ("recovered" if state == "OK" else "now"), now
    if state != "OK" and now - (prev["announced_at"] or prev["since"]) >= remind_s:
        db.execute("UPDATE backup_state SET announced_at = ? WHERE check_name = ?", (now, key))
        return "still", prev["since"]
    return None, now


def _whole_check_recovered(
    rt: Runtime,
    db: sqlite3.Connection,
    room: str,
    check: BackupCheck,
    results: list[CheckResult],
    now: float,
) -> None:
    """A check that failed as a whole (unreachable, odd output) works again: say so, once.

    Its items' own states are announced by their own results; this only closes the
    whole-check fault, which no later result would otherwise ever clear.
    """
    prev = db.execute(
        "SELECT state FROM backup_state WHERE check_name = ?", (check.name,)
    ).fetchone()
    if prev is None or prev["state"] == "OK":
        return
    db.execute(
        "UPDATE backup_state SET state = 'OK', since = ?, announced_at = ? WHERE check_name = ?",
        (now, now, check.name),
    )
    counts = ", ".join(f"{n} {s}" for s in ICONS if (n := sum(1 for r in results if r.state == s)))
    head = f"✅ backup {check.name} answers again"
    detail = f"it was {prev['state']} as a whole; each of its items is judged on its own: {counts}"
    text = f"{head}: {detail} [{check.kind} {check.target()}]"
    html = (
        f"<b>{escape(head)}</b>: {escape(detail)} "
        f"<i>[{escape(check.kind)} {escape(check.target())}]</i>"
    )
    content = messages.notice(text, html)
    content["m.mentions"] = NOBODY.content()
    rt.outbox.post(room, content)


def _announce(
    rt: Runtime,
    cfg: BackupsConfig,
    room: str,
    check: BackupCheck,
    result: CheckResult,
    how: str,
    since: float,
) -> None:
    icon = ICONS[result.state]
    if how == "recovered":
        head = f"{icon} backup {result.label} is OK again"
    elif how == "still":
        lasting = human_duration(clock() - since)
        head = f"{icon} backup {result.label} is still {result.state} ({lasting})"
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
    rt.outbox.post(room, content)


@router.job("backups.check")
async def backups_job(ctx: JobContext) -> str:
    """Run every backup check; announce what changed."""
    results = await run_all(ctx.rt)
    counts = {s: sum(1 for r in results if r.state == s) for s in ICONS}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n)


def _age(result: CheckResult) -> str:
    age = result.age()
    return "—" if age is None else human_duration(age)


@router.command("backups", params=[arg("name", text, required=False)])
async def backups_cmd(ctx: Context) -> None:
    """Check every backup now and show how fresh each is; `!backups NAME` for details."""
    cfg = _config(ctx.rt)
    if ctx.args:
        await _details(ctx, cfg, ctx.args[0])
        return
    await ctx.react("👀")
    results = await run_all(ctx.rt)
    checks = {c.name: c for c in cfg.checks}
    rows = []
    for r in results:
        check = checks[r.name]
        rows.append(
            [
                check.name,
                check.target(r.item),
                r.newest.strftime("%Y-%m-%d %H:%M") if r.newest else "—",
                _age(r),
                format_duration(check.max_age),
                f"{ICONS[r.state]} {r.state}",
            ]
        )
    text, html = table(["backup", "target", "newest (UTC)", "age", "max age", "state"], rows)
    bad = [r for r in results if r.state != "OK"]
    notes = "\n".join(f"{ICONS[r.state]} {r.label}: {r.detail}" for r in bad)
    notes_html = "".join(
        f"<li>{ICONS[r.state]} <b>{escape(r.label)}</b>: {escape(r.detail)}</li>" for r in bad
    )
    await ctx.reply(
        text + (f"\n{notes}" if notes else ""),
        html + (f"<ul>{notes_html}</ul>" if notes_html else ""),
    )


async def _details(ctx: Context, cfg: BackupsConfig, name: str) -> None:
    check = next((c for c in cfg.checks if c.name == name), None)
    if check is None:
        known = ", ".join(c.name for c in cfg.checks)
        raise UserError(f"No backup check named {name!r}; known: {known}.")
    # The last five runs, each with every item it judged.
    rows = ctx.rt.store.execute(
        "SELECT * FROM backup_results WHERE check_name = ? AND checked_at IN ("
        " SELECT DISTINCT checked_at FROM backup_results WHERE check_name = ?"
        " ORDER BY checked_at DESC LIMIT 5) ORDER BY checked_at DESC, item",
        (name, name),
    ).fetchall()
    lines = [
        f"{check.name}: {check.kind} on {check.target()}, "
        f"max age {format_duration(check.max_age)}, severity {check.severity}"
    ]
    for row in rows:
        when = datetime.fromtimestamp(row["checked_at"], UTC)
        lines.append(
            f"{when:%Y-%m-%d %H:%M} UTC  {ICONS[row['state']]} {row['state']}  {row['detail']}"
        )
    if not rows:
        lines.append("not checked yet; `!backups` checks everything now")
    await ctx.reply("\n".join(lines), "<br>".join(escape(line) for line in lines))
