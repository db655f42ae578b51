"""Alertmanager relay: webhooks become one room message per group, edited as it changes.

A webhook is answered 200 only after its message (or edit) is committed to the outbox, so an
accepted alert survives a homeserver outage or a bot restart. Two HA replicas sending the same
notification produce one message: a notification identical to the group's last one is dropped.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from prometheus_client import Counter as MetricCounter

from bot.args import arg, args, text
from bot.context import Context, ReactionContext, Runtime
from bot.errors import RemoteError, UserError
from bot.http import BodyTooLarge, read_body
from bot.matrix import IncomingReaction
from bot.messages import escape, human_duration, table
from bot.registry import Router
from commands.alerts.api import AlertmanagerAPI
from commands.alerts.config import AlertRoute, AlertsConfig, alerts_config
from commands.alerts.intake import Intake
from commands.alerts.matchers import Matcher, looks_like_matcher, parse_duration, parse_matchers
from commands.alerts.payload import Notification, WebhookError, parse_notification
from commands.alerts.silence_ops import InFlight, create_verified, mismatch_note
from commands.alerts.silencing import (
    could_be_silence_id,
    decode_plan,
    key_of,
    stored_key,
    stored_matchers,
)

log = logging.getLogger(__name__)
router = Router("alerts")


router.section("alertmanager", AlertsConfig)
router.migration(
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
)
router.migration(
    2,
    """
    ALTER TABLE alert_groups ADD COLUMN in_digest INTEGER NOT NULL DEFAULT 0
    """,
)
# A group's newest row, open or not (a resolved group's HA twin must find it), and the rows
# of one message (marked shared when a second group joins it).
router.migration(
    3,
    """
    CREATE INDEX alert_groups_newest ON alert_groups(room_id, group_key, id);
    CREATE INDEX alert_groups_message ON alert_groups(outbox_id)
    """,
)
# What silences a group from chat (🔕): its group labels, or its common ones.
router.migration(
    4,
    """
    ALTER TABLE alert_groups ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'
    """,
)
# The matchers a 🔕 uses, or why there are none (silencing.group_matchers); NULL: use labels.
router.migration(
    5,
    """
    ALTER TABLE alert_groups ADD COLUMN silence TEXT
    """,
)


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


def _intake(rt: Runtime) -> Intake:
    intake = rt.extras.get("alerts.intake")
    if not isinstance(intake, Intake):
        intake = rt.extras["alerts.intake"] = Intake(rt)
    return intake


def _webhook_counter(rt: Runtime) -> MetricCounter:
    counter = rt.extras.get("alerts.counter")
    if not isinstance(counter, MetricCounter):
        counter = MetricCounter(
            "infrabot_alert_notifications_total",
            "Alertmanager notifications by what was done (posted, coalesced, updated, resolved,"
            " reminded, duplicate, rejected).",
            ["result"],
            registry=rt.metrics.registry,
        )
        rt.extras["alerts.counter"] = counter
    return counter


def _reject(status: int, reason: str, request: web.Request, rt: Runtime) -> web.Response:
    _webhook_counter(rt).labels("rejected").inc()
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
    except BodyTooLarge as exc:
        return _reject(413, exc.reason, request, rt)
    try:
        n = parse_notification(body)
    except WebhookError as exc:
        return _reject(exc.status, exc.reason, request, rt)
    results = await _intake(rt).submit(rooms_for(rt, cfg, n, path), n)
    for result in results:
        _webhook_counter(rt).labels(result).inc()
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


def _api(rt: Runtime) -> AlertmanagerAPI:
    cfg = alerts_config(rt)
    if not cfg.url:
        raise UserError("Alertmanager's API is not configured (`alertmanager.url`).")
    return AlertmanagerAPI(cfg.url, cfg.api_timeout_s)


def _ago(iso: str) -> str:
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    return human_duration(max(0.0, (datetime.now(UTC) - moment).total_seconds()))


def _until(iso: str) -> str:
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    left = (moment - datetime.now(UTC)).total_seconds()
    return f"{moment:%Y-%m-%d %H:%M} UTC (in {human_duration(max(0.0, left))})"


def _ending(ends: datetime, duration: timedelta) -> str:
    """When a silence made now ends, and how long it lasts."""
    return f"{ends:%Y-%m-%d %H:%M} UTC ({human_duration(duration.total_seconds())})"


# More than this many active alerts are summarised by name rather than listed in full.
MAX_LISTED = 40
_SEVERITY_ORDER = {"critical": 0, "error": 1, "warning": 2, "info": 3}


@router.command("alerts", params=[args("matchers", text, required=False)])
async def alerts_cmd(ctx: Context) -> None:
    """List active alerts, optionally filtered by matchers (e.g. severity=warning)."""
    matchers = parse_matchers(",".join(ctx.args)) if ctx.args else []
    found = await _api(ctx.rt).alerts(matchers)
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
    rows = []
    for alert in ordered[:MAX_LISTED]:
        state = alert.get("status", {}).get("state", "?")
        rows.append(
            [
                labels(alert).get("alertname", "?"),
                labels(alert).get("instance") or labels(alert).get("host") or "",
                labels(alert).get("severity", ""),
                state,
                _ago(alert.get("startsAt", "")),
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


@router.command(
    "silence",
    params=[arg("matchers", text), arg("duration", text), args("comment", text, required=False)],
    role="operator",
)
async def silence_cmd(ctx: Context) -> None:
    """Silence matching alerts for a while, e.g. `!silence alertname=NotUp 2h reboot`."""
    args = list(ctx.args)
    matcher_args: list[str] = []
    while args and looks_like_matcher(args[0]):
        matcher_args.append(args.pop(0))
    if not matcher_args:
        raise UserError(
            "start with matchers, e.g. "
            f"`{ctx.rt.prefix}silence alertname=NotUp instance=pluto 2h why`"
        )
    if not args:
        raise UserError("say how long, e.g. 2h, 30m or 1d, after the matchers")
    matchers = parse_matchers(",".join(matcher_args))
    duration = parse_duration(args.pop(0))
    comment = " ".join(args) or f"silenced from Matrix by {ctx.sender}"
    starts = datetime.now(UTC)
    ends = starts + duration
    created = await create_verified(_api(ctx.rt), matchers, starts, ends, ctx.sender, comment)
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
    silences = [
        s for s in await _api(ctx.rt).silences() if s.get("status", {}).get("state") != "expired"
    ]
    if not silences:
        await ctx.reply("No active silences.")
        return
    rows = []
    for s in sorted(silences, key=lambda s: s.get("endsAt", "")):
        matchers = ", ".join(_matcher_text(m) for m in s.get("matchers", []))
        rows.append(
            [
                str(s.get("id", ""))[:8],
                matchers,
                _until(s.get("endsAt", "")),
                str(s.get("createdBy", "")),
                str(s.get("comment", ""))[:60],
            ]
        )
    text, html = table(["id", "matchers", "until", "by", "comment"], rows)
    await ctx.reply(text, html)


def _since(iso: str) -> str:
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    return f"{moment:%Y-%m-%d %H:%M} UTC, {_ago(iso)} ago"


@router.command("unsilence", params=[arg("id", text)], role="operator")
async def unsilence_cmd(ctx: Context) -> None:
    """Expire a silence now (a unique prefix of its id is enough)."""
    wanted = ctx.args[0].lower()
    listing = f"`{ctx.rt.prefix}silences` lists the active ones"
    if not could_be_silence_id(wanted):
        # Checked before any call: the id goes into Alertmanager's URL path.
        raise UserError(
            f"`{ctx.args[0][:80]}` cannot be a silence id: Alertmanager's ids are UUIDs "
            f"(like 3f2a9c1e-…); {listing}."
        )
    api = _api(ctx.rt)
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
        await ctx.reply(
            f"🔔 silence {gone['id']} is already expired (since {_since(str(gone.get('endsAt')))})."
        )
        return
    if len(live) > 1:
        raise UserError(f"`{wanted}` matches {len(live)} active silences; give more of the id.")
    silence_id = str(live[0]["id"])
    try:
        await api.expire_silence(silence_id)
    except RemoteError as exc:
        raise RemoteError(f"could not expire silence {silence_id}: {exc}") from None
    await ctx.reply(f"🔔 silence {silence_id} expired; its alerts notify again.")


def _inflight(rt: Runtime) -> InFlight:
    found = rt.extras.get("alerts.silencing")
    if not isinstance(found, InFlight):
        found = rt.extras["alerts.silencing"] = InFlight()
    return found


async def _groups_reacted_to(rt: Runtime, reaction: IncomingReaction) -> list[Any] | None:
    """The open alert groups shown by the message reacted to, or None if it shows none."""
    if alerts_config(rt).silence_on_reaction is None:
        return None
    outbox_id = rt.outbox.row_of(reaction.reacts_to)
    if outbox_id is None:
        return None  # not the bot's message
    rows = rt.store.execute(
        "SELECT labels, silence FROM alert_groups WHERE outbox_id = ? AND room_id = ? AND open = 1",
        (outbox_id, reaction.room_id),
    ).fetchall()
    return rows or None  # none: not the message of an open alert group, an ordinary reaction


@router.reaction("silence", ("🔕",), target=_groups_reacted_to, role="operator")
async def silence_by_reaction(rctx: ReactionContext, rows: list[Any]) -> None:
    """A 🔕 on a group's message silences the group(s) it shows."""
    rt, reaction = rctx.rt, rctx.reaction
    cfg = alerts_config(rt)
    assert cfg.silence_on_reaction is not None

    def answer(text: str, html: str | None = None) -> None:
        rctx.answer(text, html)

    try:
        api = _api(rt)
    except UserError as exc:
        answer(f"🔕 cannot silence: {exc}")
        return
    plans = [decode_plan(row["silence"], row["labels"]) for row in rows]
    refusals = [p for p in plans if isinstance(p, str)]
    wanted = [p for p in plans if not isinstance(p, str)]
    if refusals:
        answer(
            f"🔕 cannot silence this group exactly: {refusals[0]}. Silence it with matchers, "
            f"e.g. `{rt.prefix}silence alertname=… instance=… 2h`."
        )
    if not wanted:
        return
    # Claimed before the first await: a 🔕 handled in the same loop turn sees the claim.
    flights = _inflight(rt)
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
    starts = datetime.now(UTC)
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
                done.append((shown, str(same["id"]), _until(ends_at), True))
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
                answer("🔕 " + mismatch_note(matchers, created))
                continue
            flights.release(key, (created.silence_id, created.ends_at))
            shown = ", ".join(str(m) for m in created.stored)
            done.append((shown, created.silence_id, _ending(ends, duration), False))
    except RemoteError as exc:
        answer(f"🔕 could not silence: {exc}")
    finally:
        for matchers in owned:
            flights.release(key_of(matchers), None)
    for matchers, running in waiting:
        result = await running
        shown = ", ".join(str(m) for m in matchers)
        if result is None:
            answer(
                f"🔕 {shown}: another 🔕 on it at the same moment did not silence it (see above)."
            )
            continue
        done.append((shown, result[0], _until(result[1]), True))
    if not done:
        return

    def outcome(what: str, sid: str, until: str, already: bool) -> str:
        if already:
            return f"{what} was already silenced until {until} (id {sid})"
        return f"silenced {what} until {until} (id {sid})"

    undo = f"{rt.prefix}unsilence <id>"
    answer(
        "🔕 " + "; ".join(outcome(*d) for d in done) + f" — `{undo}` undoes it.",
        "🔕 "
        + "; ".join(
            outcome(f"<code>{escape(w)}</code>", f"<code>{escape(i)}</code>", escape(u), a)
            for w, i, u, a in done
        )
        + f" — <code>{escape(undo)}</code> undoes it.",
    )
