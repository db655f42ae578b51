"""Alertmanager relay: webhooks become one room message per group, edited as it changes.

A webhook is answered 200 only after its message (or edit) is committed to the outbox, so an
accepted alert survives a homeserver outage or a bot restart. Two HA replicas sending the same
notification produce one message: a notification identical to the group's last one is dropped,
and so is a lagging replica's older copy (commands.alerts.rules: "Older copy").
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from prometheus_client import Counter as MetricCounter

from bot.args import arg, rest
from bot.context import Context, ReactionContext, Runtime
from bot.errors import RemoteError, UserError
from bot.http import BodyRefused, read_body
from bot.matrix import IncomingReaction
from bot.messages import escape, human_duration, table
from bot.registry import Router, StateKey
from bot.store import StoreUnavailable
from commands.alerts import db
from commands.alerts.api import AlertmanagerAPI
from commands.alerts.config import AlertRoute, AlertsConfig, alerts_config
from commands.alerts.intake import Intake
from commands.alerts.matchers import Matcher, matcher_run, silence_length
from commands.alerts.payload import Notification, WebhookError, parse_notification
from commands.alerts.silence_ops import InFlight, create_verified, mismatch_note
from commands.alerts.silencing import (
    decode_plan,
    key_of,
    silence_id,
    stored_key,
    stored_matchers,
)

log = logging.getLogger(__name__)
router = Router("alerts")


router.section("alertmanager", AlertsConfig)
for _version, _sql in db.MIGRATIONS:
    router.migration(_version, _sql)


@dataclass
class AlertsState:
    """The relay's state for one running bot, created and closed by `alerts_state`."""

    intake: Intake
    notifications: MetricCounter  # webhooks by what was done
    silencing: InFlight  # silences being created from chat now
    api: AlertmanagerAPI | None  # None without `alertmanager.url`

    def alertmanager(self) -> AlertmanagerAPI:
        """The API client; UserError when no URL is configured."""
        if self.api is None:
            raise UserError("Alertmanager's API is not configured (`alertmanager.url`).")
        return self.api


ALERTS = StateKey("alerts", AlertsState)


@router.lifespan(ALERTS)
@asynccontextmanager
async def alerts_state(rt: Runtime) -> AsyncIterator[AlertsState]:
    """The intake, the webhook counter and one Alertmanager API session, closed at shutdown."""
    cfg = alerts_config(rt)
    counter = MetricCounter(
        "infrabot_alert_notifications_total",
        "Alertmanager notifications by what was done (posted, coalesced, updated, resolved,"
        " reminded, duplicate, stale, rejected).",
        ["result"],
        registry=rt.metrics.registry,
    )
    api = AlertmanagerAPI(cfg.url, cfg.api_timeout_s) if cfg.url else None
    try:
        yield AlertsState(Intake(cfg, rt.store, rt.outbox, rt.clock), counter, InFlight(), api)
    finally:
        if api is not None:
            await api.close()


# --- webhook -------------------------------------------------------------------------------


def _authorised(cfg: AlertsConfig, request: web.Request) -> bool:
    auth = cfg.auth
    if auth is None:
        return True
    header = request.headers.get("Authorization", "")
    if auth.bearer_token is not None:
        expected = f"Bearer {auth.bearer_token.get_secret_value()}"
        if hmac.compare_digest(header.encode(), expected.encode()):
            return True
    if auth.username is not None and auth.password is not None:
        raw = f"{auth.username}:{auth.password.get_secret_value()}".encode()
        expected = "Basic " + base64.b64encode(raw).decode()
        if hmac.compare_digest(header.encode(), expected.encode()):
            return True
    return False


def _labels_match(route: AlertRoute, n: Notification) -> bool:
    labels = {**n.commonLabels, **n.groupLabels}
    for key, value in route.match.items():
        if labels.get(key) != value:
            return False
    for key, pattern in route.match_re.items():
        if re.fullmatch(pattern, labels.get(key, "")) is None:
            return False
    return True


def rooms_for(rt: Runtime, cfg: AlertsConfig, n: Notification, path: str | None) -> list[str]:
    """The rooms a notification goes to: matching routes in order, else the default room."""
    rooms: list[str] = []
    for route in cfg.routes:
        if route.path is not None and route.path != path:
            continue
        if route.receiver is not None and route.receiver != n.receiver:
            continue
        if not _labels_match(route, n):
            continue
        rooms.append(rt.transport.resolve_room(route.room))
        if not route.continue_:
            break
    if not rooms:
        rooms.append(rt.transport.resolve_room(cfg.room) if cfg.room else rt.default_room())
    return list(dict.fromkeys(rooms))


def _reject(status: int, reason: str, request: web.Request, rt: Runtime) -> web.Response:
    rt[ALERTS].notifications.labels("rejected").inc()
    log.warning("rejected webhook from %s: %d %s", request.remote, status, reason)
    return web.json_response({"status": "rejected", "reason": reason}, status=status)


async def _webhook(rt: Runtime, request: web.Request, path: str | None) -> web.Response:
    cfg = rt.config.section("alertmanager", AlertsConfig)
    if cfg is None:
        # Without the section nobody chose a room or credentials: accept nothing.
        return _reject(404, "the Alertmanager relay is not configured (alertmanager:)", request, rt)
    if not _authorised(cfg, request):
        resp = _reject(401, "missing or wrong credentials", request, rt)
        resp.headers["WWW-Authenticate"] = 'Bearer realm="infrabot", Basic realm="infrabot"'
        return resp
    try:
        body = await read_body(request, cfg.max_body_bytes)
    except BodyRefused as exc:
        return _reject(exc.status, exc.reason, request, rt)
    try:
        n = parse_notification(body)
    except WebhookError as exc:
        return _reject(exc.status, exc.reason, request, rt)
    state = rt[ALERTS]
    try:
        results = await state.intake.submit(rooms_for(rt, cfg, n, path), n)
    except StoreUnavailable as exc:
        # Not committed: Alertmanager retries a 5xx, so nothing is lost.
        return _reject(503, f"not stored, try again later ({exc})", request, rt)
    for result in results:
        state.notifications.labels(result).inc()
    log.info("webhook %s (%s, %d alerts): %s", n.groupKey[:60], n.status, len(n.alerts), results)
    return web.json_response({"status": "accepted", "results": results})


@router.route("POST", "/alertmanager")
async def webhook(rt: Runtime, request: web.Request) -> web.StreamResponse:
    """Alertmanager webhook receiver (payload version 4)."""
    return await _webhook(rt, request, None)


@router.route("POST", "/alertmanager/{route}")
async def webhook_routed(rt: Runtime, request: web.Request) -> web.StreamResponse:
    """The same, with a path segment that `routes[].path` can match."""
    return await _webhook(rt, request, request.match_info["route"])


# --- chat commands (Alertmanager API v2) ---------------------------------------------------


def _moment(iso: str) -> datetime | None:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None


def _ago(iso: str, now: datetime) -> str:
    moment = _moment(iso)
    if moment is None:
        return iso
    return human_duration(max(0.0, (now - moment).total_seconds()))


def _until(iso: str, now: datetime) -> str:
    moment = _moment(iso)
    if moment is None:
        return iso
    left = (moment - now).total_seconds()
    return f"{moment:%Y-%m-%d %H:%M} UTC (in {human_duration(max(0.0, left))})"


def _since(iso: str, now: datetime) -> str:
    moment = _moment(iso)
    if moment is None:
        return iso
    return f"{moment:%Y-%m-%d %H:%M} UTC, {_ago(iso, now)} ago"


def _ending(ends: datetime, duration: timedelta) -> str:
    """When a silence made now ends, and how long it lasts."""
    return f"{ends:%Y-%m-%d %H:%M} UTC ({human_duration(duration.total_seconds())})"


# More than this many active alerts are summarised by name rather than listed in full.
MAX_LISTED = 40
_SEVERITY_ORDER = {"critical": 0, "error": 1, "warning": 2, "info": 3}


FILTER = matcher_run("matchers", required=False)
MATCHERS = matcher_run("matchers", required=True)
LENGTH = arg("duration", silence_length)
COMMENT = rest("comment")
SILENCE_ID = arg("id", silence_id)


@router.command("alerts", params=[FILTER])
async def alerts_cmd(ctx: Context) -> None:
    """List active alerts, optionally filtered by matchers (e.g. severity=warning)."""
    matchers = ctx[FILTER]
    found = await ctx.rt[ALERTS].alertmanager().alerts(matchers)
    if not found:
        await ctx.reply("No active alerts" + (" match." if matchers else ". All quiet."))
        return

    def labels(alert: dict[str, Any]) -> dict[str, str]:
        return dict(alert.get("labels", {}))

    # The most severe first, then the oldest: what to look at during a storm.
    ordered = sorted(
        found,
        key=lambda a: (
            _SEVERITY_ORDER.get(labels(a).get("severity", "").lower(), 4),
            a.get("startsAt", ""),
        ),
    )
    now = ctx.rt.clock.now()
    rows = []
    for alert in ordered[:MAX_LISTED]:
        state = alert.get("status", {}).get("state", "?")
        rows.append(
            [
                labels(alert).get("alertname", "?"),
                labels(alert).get("instance") or labels(alert).get("host") or "",
                labels(alert).get("severity", ""),
                state,
                _ago(alert.get("startsAt", ""), now),
                alert.get("annotations", {}).get("summary", "")[:80],
            ]
        )
    head = f"{len(found)} active alert(s)"
    if len(found) > MAX_LISTED:
        names = Counter(labels(a).get("alertname", "?") for a in found).most_common()
        by_name = ", ".join(f"{name} ×{count}" for name, count in names[:10])
        more = f" and {len(names) - 10} more names" if len(names) > 10 else ""
        example = names[0][0]
        head += (
            f"; by name: {by_name}{more}. The {MAX_LISTED} most severe, oldest first — narrow"
            f" it down with matchers, e.g. `{ctx.rt.prefix}alerts alertname={example}`"
        )
    text, html = table(["alert", "instance", "severity", "state", "for", "summary"], rows)
    await ctx.reply(f"{head}:\n{text}", f"<p>{escape(head)}:</p>{html}")


@router.command("silence", params=[MATCHERS, LENGTH, COMMENT], role="operator")
async def silence_cmd(ctx: Context) -> None:
    """Silence matching alerts for a while, e.g. alertname=NotUp instance=pluto 2h reboot."""
    matchers, duration = ctx[MATCHERS], ctx[LENGTH]
    comment = ctx[COMMENT] or f"silenced from Matrix by {ctx.sender}"
    starts = ctx.rt.clock.now()
    ends = starts + duration
    api = ctx.rt[ALERTS].alertmanager()
    created = await create_verified(api, matchers, starts, ends, ctx.sender, comment)
    if not created.kept:
        await ctx.reply(mismatch_note(matchers, created))
        return
    # What Alertmanager stored, not what was typed: that is what will be silenced.
    shown = ", ".join(str(m) for m in created.stored)
    until = _ending(ends, duration)
    await ctx.reply(
        f"🔕 silenced {shown} until {until}; id {created.silence_id}",
        f"🔕 silenced <code>{escape(shown)}</code> until {until}; "
        f"id <code>{escape(created.silence_id)}</code>",
    )


def _matcher_text(m: dict[str, Any]) -> str:
    equal = m.get("isEqual", True)
    op = ("=~" if equal else "!~") if m.get("isRegex") else ("=" if equal else "!=")
    return f"{m.get('name')}{op}{m.get('value')}"


@router.command("silences")
async def silences_cmd(ctx: Context) -> None:
    """List active and pending silences."""
    api = ctx.rt[ALERTS].alertmanager()
    silences = [s for s in await api.silences() if s.get("status", {}).get("state") != "expired"]
    if not silences:
        await ctx.reply("No active silences.")
        return
    now = ctx.rt.clock.now()
    rows = []
    for s in sorted(silences, key=lambda s: s.get("endsAt", "")):
        matchers = ", ".join(_matcher_text(m) for m in s.get("matchers", []))
        rows.append(
            [
                str(s.get("id", ""))[:8],
                matchers,
                _until(s.get("endsAt", ""), now),
                str(s.get("createdBy", "")),
                str(s.get("comment", ""))[:60],
            ]
        )
    text, html = table(["id", "matchers", "until", "by", "comment"], rows)
    await ctx.reply(text, html)


@router.command("unsilence", params=[SILENCE_ID], role="operator")
async def unsilence_cmd(ctx: Context) -> None:
    """Expire a silence now (a unique prefix of its id is enough)."""
    wanted = ctx[SILENCE_ID]
    listing = f"`{ctx.rt.prefix}silences` lists the active ones"
    api = ctx.rt[ALERTS].alertmanager()
    matches = [s for s in await api.silences() if str(s.get("id", "")).startswith(wanted)]
    if not matches:
        raise UserError(f"No such silence: `{wanted}`; {listing}.")
    live = [s for s in matches if s.get("status", {}).get("state") != "expired"]
    if not live:
        if len(matches) > 1:
            raise UserError(
                f"The {len(matches)} silences starting with `{wanted}` are all expired."
            )
        gone = matches[0]
        since = _since(str(gone.get("endsAt")), ctx.rt.clock.now())
        await ctx.reply(f"🔔 silence {gone['id']} is already expired (since {since}).")
        return
    if len(live) > 1:
        raise UserError(f"`{wanted}` matches {len(live)} active silences; give more of the id.")
    found = str(live[0]["id"])
    try:
        await api.expire_silence(found)
    except RemoteError as exc:
        raise RemoteError(f"could not expire silence {found}: {exc}") from None
    await ctx.reply(f"🔔 silence {found} expired; its alerts notify again.")


async def _groups_reacted_to(rt: Runtime, reaction: IncomingReaction) -> list[db.GroupRow] | None:
    """The open alert groups shown by the message reacted to, or None if it shows none."""
    if alerts_config(rt).silence_on_reaction is None:
        return None
    outbox_id = await rt.outbox.row_of(reaction.reacts_to)
    if outbox_id is None:
        return None  # not the bot's message
    rows = [g for g in await db.groups_of_message(rt.store, outbox_id, reaction.room_id) if g.open]
    return rows or None  # none: not the message of an open alert group, an ordinary reaction


@router.reaction("silence", ("🔕",), target=_groups_reacted_to, role="operator")
async def silence_by_reaction(rctx: ReactionContext, rows: list[db.GroupRow]) -> None:
    """A 🔕 on a group's message silences the group(s) it shows."""
    rt, reaction = rctx.rt, rctx.reaction
    cfg = alerts_config(rt)
    assert cfg.silence_on_reaction is not None
    state = rt[ALERTS]

    async def answer(text: str, html: str | None = None) -> None:
        await rctx.answer(text, html)

    try:
        api = state.alertmanager()
    except UserError as exc:
        await answer(f"🔕 cannot silence: {exc}")
        return
    plans = [decode_plan(row.silence, row.labels) for row in rows]
    refusals = [p for p in plans if isinstance(p, str)]
    wanted = [p for p in plans if not isinstance(p, str)]
    if refusals:
        await answer(
            f"🔕 cannot silence this group exactly: {refusals[0]}. Silence it with matchers, "
            f"e.g. `{rt.prefix}silence alertname=… instance=… 2h`."
        )
    if not wanted:
        return
    # Claimed before the first await: a 🔕 handled in the same loop turn sees the claim.
    flights = state.silencing
    owned: list[list[Matcher]] = []
    waiting: list[tuple[list[Matcher], asyncio.Future[tuple[str, str] | None]]] = []
    for matchers in wanted:
        running = flights.running(key_of(matchers))
        if running is None:
            flights.claim(key_of(matchers))
            owned.append(matchers)
        else:
            waiting.append((matchers, running))
    duration = cfg.silence_on_reaction
    starts = rt.clock.now()
    ends = starts + duration
    done: list[tuple[str, str, str, bool]] = []  # matchers shown, silence id, until, already
    live: list[dict[str, Any]] = []
    try:
        if owned:
            live = [s for s in await api.silences() if s.get("status", {}).get("state") == "active"]
        for matchers in owned:
            key = key_of(matchers)
            # A second 🔕 (or a second operator's) points at the silence already there.
            same = next((s for s in live if stored_key(s) == key), None)
            if same is not None:
                shown = ", ".join(str(m) for m in stored_matchers(same))
                ends_at = str(same.get("endsAt", ""))
                done.append((shown, str(same["id"]), _until(ends_at, rt.clock.now()), True))
                flights.release(key, (str(same["id"]), ends_at))
                continue
            created = await create_verified(
                api,
                matchers,
                starts,
                ends,
                reaction.sender,
                f"🔕 reaction in Matrix by {reaction.sender}",
            )
            if not created.kept:
                flights.release(key, None)
                await answer("🔕 " + mismatch_note(matchers, created))
                continue
            flights.release(key, (created.silence_id, created.ends_at))
            shown = ", ".join(str(m) for m in created.stored)
            done.append((shown, created.silence_id, _ending(ends, duration), False))
    except RemoteError as exc:
        await answer(f"🔕 could not silence: {exc}")
    finally:
        for matchers in owned:
            flights.release(key_of(matchers), None)
    for matchers, running in waiting:
        result = await running
        shown = ", ".join(str(m) for m in matchers)
        if result is None:
            await answer(
                f"🔕 {shown}: another 🔕 on it at the same moment did not silence it (see above)."
            )
            continue
        done.append((shown, result[0], _until(result[1], rt.clock.now()), True))
    if not done:
        return

    def outcome(what: str, sid: str, until: str, already: bool) -> str:
        if already:
            return f"{what} was already silenced until {until} (id {sid})"
        return f"silenced {what} until {until} (id {sid})"

    undo = f"{rt.prefix}unsilence <id>"
    await answer(
        "🔕 " + "; ".join(outcome(*d) for d in done) + f" — `{undo}` undoes it.",
        "🔕 "
        + "; ".join(
            outcome(f"<code>{escape(w)}</code>", f"<code>{escape(i)}</code>", escape(u), a)
            for w, i, u, a in done
        )
        + f" — <code>{escape(undo)}</code> undoes it.",
    )
