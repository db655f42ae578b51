"""From a room message to a handler: parse, find, check the role, run, audit, answer."""

from __future__ import annotations

import difflib
import logging
import shlex
import time
from datetime import UTC, datetime
from typing import Any

from bot import audit
from bot.context import CURRENT_MESSAGE, Context, ReactionContext, Runtime, answer_to, error_ref
from bot.errors import BotError, PermissionDenied, UserError
from bot.matrix import Incoming, IncomingMessage, IncomingReaction
from bot.messages import escape
from bot.registry import Reaction
from bot.store import StoreUnavailable

log = logging.getLogger(__name__)

# A skipped command older than this is only logged: its sender knows by now it was not run.
LATE_NOTICE_WINDOW_MS = 24 * 3600 * 1000
LATE_NOTICE_MAX_LISTED = 8


def split_args(text: str) -> list[str]:
    """Shell-like splitting; unbalanced quotes become a UserError that says how to fix them."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise UserError(
            f"I could not read that command: {exc} — close each quote you open "
            "('like this' or \"like this\")."
        ) from None


class Dispatcher:
    """Turns addressed messages into command runs, one task each."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.prefix = rt.config.core.commands.prefix
        user_id = rt.config.core.matrix.user_id
        self._mentions = {user_id.lower(), user_id.split(":")[0].lstrip("@").lower()}

    def addressed(self, body: str) -> str | None:
        """The command text if the message is for the bot (`!cmd …` or `bot: cmd …`)."""
        text = body.strip()
        if text.startswith(self.prefix):
            rest = text[len(self.prefix) :]
            return rest if rest and not rest[0].isspace() else None
        head, sep, rest = text.partition(":")
        names = set(self._mentions)
        if self.rt.transport.display_name:
            names.add(self.rt.transport.display_name.lower())
        if sep and head.strip().lower() in names:
            return rest.strip() or None
        # A full user id itself contains ':', so match it as a whole prefix too.
        for name in self._mentions:
            if text.lower().startswith(name + ":"):
                return text[len(name) + 1 :].strip() or None
        return None

    async def on_events(self, events: list[Incoming]) -> None:
        """Called by the sync loop for each batch; never blocks it.

        A late event (sent while the bot could not see the room) is never acted on; the
        commands among them are named in one notice per room, so their senders know to send
        them again.
        """
        skipped: dict[str, list[Incoming]] = {}
        for event in events:
            if not event.late:
                self.on_message(event)
            elif self._is_command(event):
                skipped.setdefault(event.room_id, []).append(event)
        now_ms = self.rt.transport.now_ms()  # compared with the server's timestamps
        for room_id, late in skipped.items():
            recent = [e for e in late if now_ms - e.server_ts <= LATE_NOTICE_WINDOW_MS]
            if recent:
                text, html = self._skipped_notice(recent)
                try:
                    await self.rt.post(room_id, text, html)
                except StoreUnavailable as exc:
                    log.warning("could not queue the notice of skipped commands: %s", exc)

    def _is_command(self, event: Incoming) -> bool:
        if isinstance(event, IncomingReaction):
            return bool(self.rt.registry.reactions_for(event.key))
        return self.addressed(event.body) is not None

    def _skipped_notice(self, late: list[Incoming]) -> tuple[str, str]:
        """'I skipped 2 commands sent while I could not see this room: …' as text and HTML."""
        shown = late[:LATE_NOTICE_MAX_LISTED]
        plain, rich = [], []
        for event in shown:
            when = datetime.fromtimestamp(event.server_ts / 1000, UTC).strftime("%H:%M UTC")
            if isinstance(event, IncomingReaction):
                what = f"a {event.key} reaction"
                what_html = escape(what)
            else:
                body = " ".join(event.body.split())
                body = body if len(body) <= 60 else body[:59] + "…"
                what, what_html = f"`{body}`", f"<code>{escape(body)}</code>"
            plain.append(f"{what} by {event.sender} ({when})")
            rich.append(f"{what_html} by {escape(event.sender)} ({when})")
        more = len(late) - len(shown)
        if more:
            plain.append(f"and {more} more")
            rich.append(f"and {more} more")
        count = f"{len(late)} command" + ("s" if len(late) != 1 else "")
        them = "them" if len(late) != 1 else "it"
        head = f"I skipped {count} sent while I could not see this room: "
        tail = f" — send {them} again if still wanted."
        return head + "; ".join(plain) + tail, escape(head) + "; ".join(rich) + escape(tail)

    def on_message(self, msg: Incoming) -> None:
        """Act on one message or reaction that the bot saw in time; never blocks."""
        if isinstance(msg, IncomingReaction):
            for reaction in self.rt.registry.reactions_for(msg.key):
                self.rt.tasks.spawn(
                    self.handle_reaction(reaction, msg), name=f"reaction:{msg.event_id}"
                )
            return
        text = self.addressed(msg.body)
        if text is None:
            return
        self.rt.tasks.spawn(self.handle(msg, text), name=f"cmd:{msg.event_id}")

    async def handle(self, msg: IncomingMessage, text: str) -> None:
        """Run one command end to end; every outcome is answered and audited."""
        CURRENT_MESSAGE.set(msg)  # this task's own context: who asked, for `Claims`
        started = time.monotonic()
        name = text.split(maxsplit=1)[0].lower() if text.split() else ""
        audit_id: int | None = None
        outcome, detail = "ok", None
        ctx: Context | None = None
        try:
            tokens = split_args(text)
            if not tokens:
                raise UserError(f"Say a command after the prefix; try `{self.prefix}help`.")
            found = self.rt.registry.find(tokens)
            if found is None:
                raise UserError(self._unknown(tokens[0]))
            cmd, args = found
            name = cmd.name
            audit_id = await audit.start(
                self.rt.store,
                sender=msg.sender,
                room_id=msg.room_id,
                event_id=msg.event_id,
                command=name,
                args=args,
                now=self.rt.clock.time(),
            )
            if not self.rt.permissions.may_run(msg.sender, msg.room_id, cmd):
                role = self.rt.permissions.required_role(cmd)
                log.warning(
                    "refused %s to %s in %s: needs role %s", name, msg.sender, msg.room_id, role
                )
                raise PermissionDenied(
                    f"Sorry, `{self.prefix}{name}` needs the {role} role, which you do not have. "
                    "This refusal is recorded."
                )
            ctx = Context(self.rt, msg, cmd, args, cmd.bind(args, self.rt))
            await cmd.handler(ctx)
            detail = ctx.audit_note
        except Exception as exc:
            outcome, detail, text = _outcome(exc, f"`{name}`", msg.sender)
            await self._answer(msg, text)
        finally:
            if audit_id is not None:
                await audit.end(self.rt.store, audit_id, outcome, detail, now=self.rt.clock.time())
            known = name if name in self.rt.registry.commands else "(unknown)"
            self._count(known, outcome, started)

    async def handle_reaction(self, reaction: Reaction[Any], event: IncomingReaction) -> None:
        """A reaction that acts like a command: same guard, audit and metrics as a command.

        Reactions on anything the feature does not recognise (its `target` is None) are
        ordinary reactions and pass without a word.
        """
        started = time.monotonic()
        ctx = ReactionContext(self.rt, event)
        try:
            target = await reaction.target(self.rt, event)
        except Exception:
            log.exception("reaction %s: looking up %s failed", reaction.name, event.reacts_to)
            self.rt.metrics.errors.labels("reaction").inc()
            return
        if target is None:
            return
        name = reaction.name
        audit_id = await audit.start(
            self.rt.store,
            sender=event.sender,
            room_id=event.room_id,
            event_id=event.event_id,
            command=name,
            args=["reaction", event.key],
            now=self.rt.clock.time(),
        )
        outcome, detail = "ok", None
        try:
            role = self.rt.permissions.role_for(name, reaction.role)
            if not self.rt.permissions.has_role(event.sender, event.room_id, role):
                log.warning("refused %s reaction to %s: needs role %s", name, event.sender, role)
                raise PermissionDenied(
                    f"{event.key} from {event.sender} ignored: it needs the {role} role, "
                    "which you do not have. This refusal is recorded."
                )
            await reaction.handler(ctx, target)
            detail = ctx.audit_note
        except Exception as exc:
            outcome, detail, text = _outcome(exc, event.key, event.sender)
            await ctx.answer(text, _inline_code(text))
        finally:
            await audit.end(self.rt.store, audit_id, outcome, detail, now=self.rt.clock.time())
            self._count(name, outcome, started)

    def _count(self, name: str, outcome: str, started: float) -> None:
        self.rt.metrics.commands.labels(name, outcome).inc()
        self.rt.metrics.command_seconds.labels(name).observe(time.monotonic() - started)

    def _unknown(self, word: str) -> str:
        names = sorted({c.name.split()[0] for c in self.rt.registry.unique_commands()})
        close = difflib.get_close_matches(word.lower(), names, n=2, cutoff=0.6)
        hint = (
            " Did you mean " + " or ".join(f"`{self.prefix}{c}`" for c in close) + "?"
            if close
            else ""
        )
        return f"Unknown command `{word}`.{hint} Send `{self.prefix}help` for the list."

    async def _answer(self, msg: IncomingMessage, text: str) -> None:
        try:
            await self.rt.outbox.send(msg.room_id, answer_to(msg, text, _inline_code(text)))
        except BotError as exc:
            log.error("could not answer %s: %s", msg.event_id, exc)


def _outcome(exc: Exception, what: str, sender: str) -> tuple[str, str, str]:
    """(audit outcome, audit detail, answer) for what a command or reaction raised.

    BotErrors carry a message fit for the room; anything else is a bug, logged with its
    traceback under a short reference that the answer repeats.
    """
    if isinstance(exc, PermissionDenied):
        return "denied", str(exc), str(exc)
    if isinstance(exc, UserError):
        return "bad_input", str(exc), str(exc)
    if isinstance(exc, BotError):
        return "error", str(exc), f"❌ {exc}"
    ref = error_ref()
    log.error("%s from %s failed (ref %s)", what, sender, ref, exc_info=exc)
    answer = f"❌ {what} failed unexpectedly (ref {ref}; details are in the bot's log)."
    return "error", f"ref {ref}: {type(exc).__name__}", answer


def _inline_code(text: str) -> str:
    """Escape text, turning `backticked` spans into <code>."""
    parts = escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
