"""Backup freshness: `backups`, heartbeats from backup jobs, and state changes announced in
the room without asking.

Every run stores each result — one per dataset, zrepl job, Prometheus series, pool, file
glob, database or heartbeat a check watches, so one fault never hides another; the room hears
only of a change (OK→STALE, →ERROR, back to OK) and, while a result stays bad, a reminder at
`remind_every` — never every hour (`commands.backups.transitions`). Each announcement tells the
state before and since when, and for a backup now merely stale the error seen since it was
last OK. The last announced state is stored per result (`check` or `check:item`,
`commands.backups.db`), so a restart does not announce again what the room already knows.
A heartbeat's failure is told when the job reports it, not at the next run. Every time comes
from the runtime's clock.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp
from aiohttp import web
from pydantic import Field, field_validator

from bot import messages
from bot.args import arg
from bot.config import Config, ScheduleConfig, Section
from bot.context import Context, JobContext, Runtime
from bot.durations import Duration, format_duration
from bot.errors import UserError
from bot.http import BodyRefused, read_body
from bot.mentions import NOBODY, MentionRule, mentions_for
from bot.messages import escape, human_duration, table
from bot.registry import Router, StateKey
from bot.services.ssh import SshClient, SshSettings
from commands.backups import db, heartbeat
from commands.backups.checks import BackupCheck, Services, check_heartbeat, run_check
from commands.backups.result import RANK, CheckResult, Verdicts, stamp
from commands.backups.transitions import Announce, transition

log = logging.getLogger(__name__)
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

    @field_validator("checks")
    @classmethod
    def _names_unique(cls, checks: list[BackupCheck]) -> list[BackupCheck]:
        # A name is the key of the check's stored state, announcements, `!backups <name>`
        # and its heartbeat URL: two checks of one name would silently share them.
        first: dict[str, int] = {}
        for i, check in enumerate(checks):
            if check.name in first:
                raise ValueError(
                    f"checks[{i}].name: {check.name!r} is already the name of "
                    f"checks[{first[check.name]}]; each check needs its own"
                )
            first[check.name] = i
        return checks


router.section("backups", BackupsConfig)
for _version, _sql in db.MIGRATIONS:
    router.migration(_version, _sql)


@dataclass(frozen=True)
class Backups:
    """The feature's state: the SSH client its checks share (one connection per check run,
    each closed when the run ends) and the HTTP session of its prometheus checks."""

    ssh: SshClient
    http: aiohttp.ClientSession


BACKUPS = StateKey("backups", Backups)


@router.lifespan(BACKUPS)
@asynccontextmanager
async def backups_state(rt: Runtime) -> AsyncIterator[Backups]:
    """The SSH client, configured once from `backups.ssh` (defaults when not configured), and
    one aiohttp session, closed at shutdown."""
    cfg = rt.config.section("backups", BackupsConfig) or BackupsConfig()
    session = aiohttp.ClientSession()
    try:
        yield Backups(SshClient.from_settings(cfg.ssh), session)
    finally:
        await session.close()


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
    state = rt[BACKUPS]
    services = Services(state.ssh, state.http, rt.store)
    now = rt.clock.now()
    per_check = list(
        await asyncio.gather(*(run_check(c, services, cfg.timeout_s, now) for c in cfg.checks))
    )
    async with rt.store.transaction():
        for i, check in enumerate(cfg.checks):
            when = now
            if check.kind == "heartbeat":
                # Judged again here, inside the write transaction (a signal's write waits for it):
                # a signal the job sent while the other checks ran is in the row by now, and the
                # verdict read before it would be recorded after it, announcing the opposite of
                # what the job just told.
                when = rt.clock.now()
                per_check[i] = await check_heartbeat(check, rt.store, _verdicts(check, when))
            await record(rt, cfg, check, per_check[i], when)
    return Run(now, [r for results in per_check for r in results])


def _verdicts(check: BackupCheck, now: datetime) -> Verdicts:
    return Verdicts(check.name, check.limit, format_duration(check.limit), now)


async def record(
    rt: Runtime,
    cfg: BackupsConfig,
    check: BackupCheck,
    results: list[CheckResult],
    now: datetime,
    force: bool = False,
) -> None:
    """Store one check's results and announce what changed (`force`: announce a bad result
    even when its state did not change — a new failure reported by the job itself)."""
    room = rt.transport.resolve_room(cfg.room) if cfg.room else rt.default_room()
    for result in results:
        prev = await db.state_of(rt.store, result.key)
        earlier_error = (
            await db.last_error(rt.store, result.name, result.item)
            if result.state != "ERROR"
            else None
        )
        await db.add_result(rt.store, result, now)
        step = transition(prev, result.key, result.state, now, cfg.remind_every)
        announce, save = step.announce, step.save
        if force and announce is None and result.state != "OK":
            announce = "now"
            save = db.StateRow(result.key, result.state, step.since, now)
        if save is not None:
            await db.save_state(rt.store, save)
        if announce is not None:
            story = Story(prev, step.since, earlier_error if result.state != "OK" else None)
            await _announce(rt, cfg, room, check, result, announce, now, story)
    if results and all(r.item is not None for r in results):
        await _whole_check_recovered(rt, room, check, results, now)


@dataclass(frozen=True)
class Story:
    """What an announcement tells besides the new result: the state before and since when,
    when the new state began, and the error behind a backup that is now merely stale."""

    before: db.StateRow | None
    since: datetime
    earlier_error: db.ResultRow | None


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
    now: datetime,
    story: Story,
) -> None:
    icon = ICONS[result.state]
    before = story.before
    if how == "recovered" and before is not None:
        lasting = human_duration((now - before.since).total_seconds())
        head = f"{icon} backup {result.label} is OK again (after {lasting} {before.state})"
    elif how == "still":
        lasting = human_duration((now - story.since).total_seconds())
        head = (
            f"{icon} backup {result.label} is still {result.state} "
            f"({lasting}, since {stamp(story.since)})"
        )
    elif before is not None and before.state == result.state:
        head = f"{icon} backup {result.label} is {result.state} again (since {stamp(before.since)})"
    elif before is not None:
        head = (
            f"{icon} backup {result.label} is {result.state} "
            f"(was {before.state} since {stamp(before.since)})"
        )
    else:
        head = f"{icon} backup {result.label} is {result.state}"
    detail = result.detail
    if story.earlier_error is not None:
        err = story.earlier_error
        detail += f"; last error ({stamp(err.checked_at)}): {err.detail}"
    pings = NOBODY if result.state == "OK" else mentions_for(cfg.mentions, check.severity)
    target = check.target(result.item)
    text = f"{pings.text()} {head}: {detail} [{check.kind} {target}]".lstrip()
    html = (
        f"{pings.html()} <b>{escape(head)}</b>: {escape(detail).replace(chr(10), '<br>')} "
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


def worst_first(results: list[CheckResult], checks: list[BackupCheck]) -> list[CheckResult]:
    """Results grouped by kind — the group with the worst result first (ties: the kind met
    first in config) — and within a group worst first, then in config order."""
    order = {c.name: i for i, c in enumerate(checks)}
    kind = {c.name: c.kind for c in checks}
    groups: dict[str, list[CheckResult]] = {}
    for r in results:
        groups.setdefault(kind[r.name], []).append(r)

    def group_key(k: str) -> tuple[int, int]:
        members = groups[k]
        return (-max(RANK[r.state] for r in members), min(order[r.name] for r in members))

    out: list[CheckResult] = []
    for k in sorted(groups, key=group_key):
        # sorted() is stable: equal states keep their config (and item) order.
        out += sorted(groups[k], key=lambda r: (-RANK[r.state], order[r.name]))
    return out


@router.command("backups", params=[CHECK])
async def backups_cmd(ctx: Context) -> None:
    """Check every backup now and show how fresh each is, by kind, worst first; with a check's
    name, its last runs."""
    cfg = _config(ctx.rt)
    if ctx.given(CHECK):
        await _details(ctx, ctx[CHECK])
        return
    await ctx.react("👀")
    run = await run_all(ctx.rt)
    checks = {c.name: c for c in cfg.checks}
    ordered = worst_first(run.results, cfg.checks)
    rows = []
    for r in ordered:
        check = checks[r.name]
        rows.append(
            [
                check.kind,
                check.name,
                check.target(r.item),
                r.newest.strftime("%Y-%m-%d %H:%M") if r.newest else "—",
                _age(r, run.at),
                format_duration(check.limit),
                f"{ICONS[r.state]} {r.state}",
            ]
        )
    text, html = table(
        ["kind", "backup", "target", "newest (UTC)", "age", "max age", "state"], rows
    )
    bad = [r for r in ordered if r.state != "OK"]
    notes = "\n".join(f"{ICONS[r.state]} {r.label}: {r.detail}" for r in bad)
    notes_html = "".join(
        f"<li>{ICONS[r.state]} <b>{escape(r.label)}</b>: "
        f"{escape(r.detail).replace(chr(10), '<br>')}</li>"
        for r in bad
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
        f"max age {format_duration(check.limit)}, severity {check.severity}"
    ]
    for row in rows:
        lines.append(
            f"{row.checked_at:%Y-%m-%d %H:%M} UTC  {ICONS[row.state]} {row.state}  {row.detail}"
        )
    if not rows:
        lines.append(f"not checked yet; `{ctx.rt.prefix}backups` checks everything now")
    await ctx.reply("\n".join(lines), "<br>".join(escape(line) for line in lines))


# --- heartbeats from backup jobs ------------------------------------------------------------


def _heartbeat_check(rt: Runtime, name: str) -> tuple[BackupsConfig, BackupCheck] | None:
    cfg = rt.config.section("backups", BackupsConfig)
    if cfg is None:
        return None
    found = next((c for c in cfg.checks if c.name == name and c.kind == "heartbeat"), None)
    return (cfg, found) if found is not None else None


def _token_ok(check: BackupCheck, request: web.Request) -> bool:
    # Compared in constant time; the token is never logged nor echoed.
    assert check.token is not None  # required for heartbeat checks
    header = request.headers.get("Authorization", "")
    expected = f"Bearer {check.token.get_secret_value()}"
    # aiohttp keeps undecodable header bytes as surrogates: they are a wrong token (401),
    # not a failure to compare (500).
    return hmac.compare_digest(header.encode("utf-8", "surrogateescape"), expected.encode())


async def _heartbeat(rt: Runtime, request: web.Request, signal: heartbeat.Signal) -> web.Response:
    name = request.match_info["name"]
    found = _heartbeat_check(rt, name)
    if found is None:
        log.warning("heartbeat for unknown check %r from %s", name[:80], request.remote)
        return web.json_response(
            {"status": "rejected", "reason": f"no heartbeat check named {name!r}"}, status=404
        )
    cfg, check = found
    if not _token_ok(check, request):
        log.warning("heartbeat %s/%s from %s: wrong or missing token", name, signal, request.remote)
        resp = web.json_response(
            {"status": "rejected", "reason": "missing or wrong token"}, status=401
        )
        resp.headers["WWW-Authenticate"] = 'Bearer realm="infrabot"'
        return resp
    # A body that cannot be read never costs the signal itself: a failure is still recorded
    # (and told), only without its lines, and the 4xx says so.
    refused: BodyRefused | None = None
    try:
        body = await read_body(request, heartbeat.MAX_BODY)
    except BodyRefused as exc:
        refused, body = exc, b""
    lines = heartbeat.last_lines(body) if signal == "fail" else None
    if refused is not None and signal == "fail":
        lines = f"(its output was not read: {refused.reason}; send only its last lines)"
    now = rt.clock.now()
    verdicts = _verdicts(check, now)
    # One transaction, no await inside: the signal, its verdict and its announcement together.
    async with rt.store.transaction():
        row = heartbeat.record(await db.heartbeat_of(rt.store, check.name), signal, now, lines)
        await db.save_heartbeat(rt.store, row)
        results = [heartbeat.judge(row, check.grace, check.max_run, verdicts)]
        # A failure is told at once with its lines, even right after another one.
        await record(rt, cfg, check, results, now, force=signal == "fail")
    log.info("heartbeat %s: %s, now %s", check.name, signal, results[0].state)
    if refused is not None:
        reason = f"{refused.reason}; the {signal} was recorded without the body"
        return web.json_response(
            {"status": "rejected", "reason": reason, "state": results[0].state},
            status=refused.status,
        )
    return web.json_response({"status": "accepted", "state": results[0].state})


@router.route("POST", "/heartbeat/{name}")
async def heartbeat_success(rt: Runtime, request: web.Request) -> web.StreamResponse:
    """The backup job succeeded (`Authorization: Bearer <token>`)."""
    return await _heartbeat(rt, request, "success")


@router.route("POST", "/heartbeat/{name}/{signal}")
async def heartbeat_signal(rt: Runtime, request: web.Request) -> web.StreamResponse:
    """`/start`: the job began; `/fail`: it failed, the body being its last lines."""
    signal = heartbeat.SIGNALS.get(request.match_info["signal"])
    if signal is None:
        return web.json_response(
            {"status": "rejected", "reason": "unknown signal; use /start, /fail or none"},
            status=404,
        )
    return await _heartbeat(rt, request, signal)
