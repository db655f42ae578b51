"""From a room message to a handler: parse, find, check the role, run, audit, answer."""

from __future__ import annotations

import difflib
import logging
import shlex
import time
from typing import Any

from bot.context import Context, ReactionContext, Runtime, answer_to, error_ref
from bot.errors import BotError, PermissionDenied, UserError
from bot.matrix import Incoming, IncomingMessage, IncomingReaction
from bot.messages import escape
from bot.registry import Reaction

log = logging.getLogger(__name__)


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

    def on_message(self, msg: Incoming) -> None:
        """Called by the sync loop for each new message; never blocks it."""
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
            audit_id = self.rt.store.audit_start(msg.sender, msg.room_id, msg.event_id, name, args)
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
        except PermissionDenied as exc:
            outcome, detail = "denied", str(exc)
            await self._answer(msg, str(exc))
        except UserError as exc:
            outcome, detail = "bad_input", str(exc)
            await self._answer(msg, str(exc))
        except BotError as exc:
            outcome, detail = "error", str(exc)
            await self._answer(msg, f"❌ {exc}")
        except Exception as exc:
            ref = error_ref()
            outcome, detail = "error", f"ref {ref}: {type(exc).__name__}"
            log.exception("command %r from %s failed (ref %s)", name, msg.sender, ref)
            await self._answer(
                msg, f"❌ `{name}` failed unexpectedly (ref {ref}; details are in the bot's log)."
            )
        finally:
            if audit_id is not None:
                self.rt.store.audit_end(audit_id, outcome, detail)
            known = name if name in self.rt.registry.commands else "(unknown)"
            self.rt.metrics.commands.labels(known, outcome).inc()
            self.rt.metrics.command_seconds.labels(known).observe(time.monotonic() - started)

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
        audit_id = self.rt.store.audit_start(
            event.sender, event.room_id, event.event_id, name, ["reaction", event.key]
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
        except PermissionDenied as exc:
            outcome, detail = "denied", str(exc)
            ctx.answer(str(exc))
        except UserError as exc:
            outcome, detail = "bad_input", str(exc)
            ctx.answer(str(exc), _inline_code(str(exc)))
        except BotError as exc:
            outcome, detail = "error", str(exc)
            ctx.answer(f"❌ {exc}", _inline_code(f"❌ {exc}"))
        except Exception as exc:
            ref = error_ref()
            outcome, detail = "error", f"ref {ref}: {type(exc).__name__}"
            log.exception("reaction %s from %s failed (ref %s)", name, event.sender, ref)
            ctx.answer(f"❌ {event.key} failed unexpectedly (ref {ref}; details in the bot's log).")
        finally:
            self.rt.store.audit_end(audit_id, outcome, detail)
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


def _inline_code(text: str) -> str:
    """Escape text, turning `backticked` spans into <code>."""
    parts = escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
