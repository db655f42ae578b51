"""Core commands: ping, help, jobs, audit; and the `message` job type."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import Field

from bot import audit as audit_log
from bot.args import arg, args, integer, text
from bot.config import Section
from bot.context import Context, JobContext, Runtime
from bot.errors import UserError
from bot.messages import escape, human_duration, table
from bot.registry import Router

router = Router("core")


def job_name(word: str, rt: Runtime) -> str:
    """A configured job's name; the error names the jobs there are."""
    if word in rt.scheduler.schedules:
        return word
    known = ", ".join(sorted(rt.scheduler.schedules)) or "none are configured"
    raise UserError(f"no job named `{word}` (jobs: {known})")


COMMAND = args("command", text, required=False)
COUNT = arg("count", integer(1, 100), default=10)
JOB = arg("name", job_name)


@router.command("ping")
async def ping(ctx: Context) -> None:
    """Check that the bot is alive and how quickly it hears you."""
    # The server stamped the message with the real clock: compare it with the transport's.
    heard_ms = max(0, ctx.rt.transport.now_ms() - ctx.msg.server_ts)
    up = human_duration(ctx.rt.clock.time() - ctx.rt.started_at)
    await ctx.reply(f"pong — heard you {heard_ms} ms after you sent it; up {up}")


@router.command("help", params=[COMMAND])
async def help_(ctx: Context) -> None:
    """List the commands you may run, or show how to use one."""
    prefix = ctx.rt.prefix
    # `help !deploy` (with the prefix, as the list shows it) means `help deploy`.
    words = [w.removeprefix(prefix) for w in ctx[COMMAND]]
    if words:
        found = ctx.rt.registry.find([w.lower() for w in words])
        if found is None:
            raise UserError(f"No command `{' '.join(words)}`. Send `{prefix}help` for the list.")
        cmd, _ = found
        role = ctx.rt.permissions.required_role(cmd)
        if cmd.who is not None and role == cmd.role:
            role = cmd.who(ctx.rt)
        lines = [f"{cmd.usage(prefix)}", cmd.help_text(prefix)]
        if cmd.aliases:
            lines.append("aliases: " + ", ".join(cmd.aliases))
        lines.append(f"needs role: {role}")
        text = "\n".join(lines)
        html = (
            f"<code>{escape(cmd.usage(prefix))}</code><br>{escape(cmd.help_text(prefix))}"
            f"<br>needs role: {escape(role)}"
        )
        await ctx.reply(text, html)
        return
    mine = [
        c
        for c in ctx.rt.registry.unique_commands()
        if ctx.rt.permissions.may_run(ctx.sender, ctx.room_id, c)
        and (c.offered is None or c.offered(ctx.rt, ctx.sender, ctx.room_id))
    ]
    text = "Commands you may run:\n" + "\n".join(
        f"{c.usage(prefix)} — {c.help_text(prefix)}" for c in mine
    )
    items = "".join(
        f"<li><code>{escape(c.usage(prefix))}</code> — {escape(c.help_text(prefix))}</li>"
        for c in mine
    )
    hidden = len(ctx.rt.registry.unique_commands()) - len(mine)
    tail = f"\n({hidden} more need a role you do not have.)" if hidden else ""
    await ctx.reply(
        text + tail + f"\n`{prefix}help <command>` shows one in detail.",
        f"<p>Commands you may run:</p><ul>{items}</ul>"
        + (f"<p>({hidden} more need a role you do not have.)</p>" if hidden else "")
        + f"<p><code>{escape(prefix)}help &lt;command&gt;</code> shows one in detail.</p>",
    )


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "—"
    delta = (moment - now).total_seconds()
    rel = f"in {human_duration(delta)}" if delta >= 0 else f"{human_duration(-delta)} ago"
    return f"{moment:%Y-%m-%d %H:%M} UTC ({rel})"


@router.command("jobs")
async def jobs(ctx: Context) -> None:
    """List scheduled jobs with their last and next run."""
    status = await ctx.rt.scheduler.status()
    now = ctx.rt.clock.now()
    if not status:
        await ctx.reply("No scheduled jobs are configured (see `schedules:` in the config).")
        return
    rows = [
        [
            s.name,
            s.cron,
            "running" if s.running else (s.last_outcome or "never run"),
            _when(s.last_started, now),
            _when(s.next_run, now) if s.enabled else "disabled",
        ]
        for s in status
    ]
    text, html = table(["job", "cron (UTC)", "last result", "last run", "next run"], rows)
    await ctx.reply(text, html)


@router.command("jobs run", params=[JOB], role="operator")
async def jobs_run(ctx: Context) -> None:
    """Run a scheduled job now."""
    name = ctx[JOB]
    await ctx.react("👀")
    outcome = await ctx.rt.scheduler.run_now(name)
    await ctx.reply(f"job {name}: {outcome}")


@router.command("audit", params=[COUNT], role="admin")
async def audit(ctx: Context) -> None:
    """Show the newest entries of the command audit log (10 unless a count up to 100 is given)."""
    rows = [
        [
            datetime.fromtimestamp(r.started_at, UTC).strftime("%m-%d %H:%M:%S"),
            r.sender,
            " ".join([r.command, *r.args]),
            r.outcome + (f": {r.detail}" if r.detail and r.outcome == "ok" else ""),
        ]
        for r in await audit_log.recent(ctx.rt.store, ctx[COUNT])
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
