"""Core commands: ping, help, jobs, audit; and the `message` job type."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from pydantic import Field

from bot.args import arg, args, text
from bot.config import Section
from bot.context import Context, JobContext
from bot.errors import UserError
from bot.messages import escape, human_duration, table
from bot.registry import Router

router = Router("core")


@router.command("ping")
async def ping(ctx: Context) -> None:
    """Check that the bot is alive and how quickly it hears you."""
    heard_ms = max(0, int(time.time() * 1000) - ctx.msg.server_ts)
    up = human_duration(time.time() - ctx.rt.started_at)
    await ctx.reply(f"pong — heard you {heard_ms} ms after you sent it; up {up}")


@router.command("help", params=[args("command", text, required=False)])
async def help_(ctx: Context) -> None:
    """List the commands you may run, or show how to use one."""
    prefix = ctx.rt.prefix
    if ctx.args:
        found = ctx.rt.registry.find([a.lower() for a in ctx.args])
        if found is None:
            raise UserError(f"No command `{' '.join(ctx.args)}`. Send `{prefix}help` for the list.")
        cmd, _ = found
        role = ctx.rt.permissions.required_role(cmd)
        lines = [f"{cmd.usage(prefix)}", cmd.help]
        if cmd.aliases:
            lines.append("aliases: " + ", ".join(cmd.aliases))
        lines.append(f"needs role: {role}")
        text = "\n".join(lines)
        html = (
            f"<code>{escape(cmd.usage(prefix))}</code><br>{escape(cmd.help)}"
            f"<br>needs role: {escape(role)}"
        )
        await ctx.reply(text, html)
        return
    mine = [
        c
        for c in ctx.rt.registry.unique_commands()
        if ctx.rt.permissions.may_run(ctx.sender, ctx.room_id, c)
    ]
    text = "Commands you may run:\n" + "\n".join(f"{c.usage(prefix)} — {c.help}" for c in mine)
    items = "".join(
        f"<li><code>{escape(c.usage(prefix))}</code> — {escape(c.help)}</li>" for c in mine
    )
    hidden = len(ctx.rt.registry.unique_commands()) - len(mine)
    tail = f"\n({hidden} more need a role you do not have.)" if hidden else ""
    await ctx.reply(
        text + tail + f"\n`{prefix}help <command>` shows one in detail.",
        f"<p>Commands you may run:</p><ul>{items}</ul>"
        + (f"<p>({hidden} more need a role you do not have.)</p>" if hidden else "")
        + f"<p><code>{escape(prefix)}help &lt;command&gt;</code> shows one in detail.</p>",
    )


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    delta = (moment - datetime.now(UTC)).total_seconds()
    rel = f"in {human_duration(delta)}" if delta >= 0 else f"{human_duration(-delta)} ago"
    return f"{moment:%Y-%m-%d %H:%M} UTC ({rel})"


@router.command("jobs")
async def jobs(ctx: Context) -> None:
    """List scheduled jobs with their last and next run."""
    assert ctx.rt.scheduler is not None
    status = ctx.rt.scheduler.status()
    if not status:
        await ctx.reply("No scheduled jobs are configured (see `schedules:` in the config).")
        return
    rows = [
        [
            s.name,
            s.cron,
            "running" if s.running else (s.last_outcome or "never run"),
            _when(s.last_started),
            _when(s.next_run) if s.enabled else "disabled",
        ]
        for s in status
    ]
    text, html = table(["job", "cron (UTC)", "last result", "last run", "next run"], rows)
    await ctx.reply(text, html)


@router.command("jobs run", params=[arg("name", text)], role="operator")
async def jobs_run(ctx: Context) -> None:
    """Run a scheduled job now."""
    assert ctx.rt.scheduler is not None
    name = ctx.args[0]
    await ctx.react("👀")
    outcome = await ctx.rt.scheduler.run_now(name)
    await ctx.reply(f"job {name}: {outcome}")


@router.command("audit", params=[arg("count", text, required=False)], role="admin")
async def audit(ctx: Context) -> None:
    """Show the newest entries of the command audit log."""
    try:
        count = int(ctx.args[0]) if ctx.args else 10
    except ValueError:
        raise UserError("count must be a whole number, e.g. `!audit 20`") from None
    if not 1 <= count <= 100:
        raise UserError("count must be between 1 and 100")
    rows = [
        [
            datetime.fromtimestamp(r["started_at"], UTC).strftime("%m-%d %H:%M:%S"),
            r["sender"],
            " ".join([r["command"], *json.loads(r["args"])]),
            r["outcome"],
        ]
        for r in ctx.rt.store.audit_recent(count)
    ]
    text, html = table(["when (UTC)", "who", "command", "outcome"], rows)
    await ctx.reply(text, html)


class MessageParams(Section):
    text: str = Field(min_length=1)
    html: str | None = None


@router.job("message", params=MessageParams)
async def message_job(ctx: JobContext) -> str:
    """Post `params.text` (and optional `params.html`) into the job's room."""
    params = MessageParams.model_validate(ctx.params)
    await ctx.post(params.text, params.html)
    return "posted"
