"""An example feature, as the README shows it: a command, a reaction, a job and typed state.

Bookmarks: `!bookmark <text…>` saves a line, `!bookmarks [count]` lists the newest, a 🔖 on
any message saves a link to it, and the `bookmarks digest` job posts how many there are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from bot.args import arg, integer, rest
from bot.context import Context, JobContext, ReactionContext, Runtime
from bot.matrix import IncomingReaction
from bot.registry import Router, StateKey

router = Router("bookmarks")


@dataclass
class Bookmarks:
    """The feature's state: created at start by its lifespan, closed at shutdown."""

    saved: list[str] = field(default_factory=list)
    closed: bool = False


BOOKMARKS = StateKey("bookmarks", Bookmarks)


@router.lifespan(BOOKMARKS)
@asynccontextmanager
async def bookmarks_state(rt: Runtime) -> AsyncIterator[Bookmarks]:
    """Open clients and run one-shot start-up work before the yield; close them after."""
    state = Bookmarks()
    try:
        yield state
    finally:
        state.closed = True


TEXT = rest("text", required=True)
COUNT = arg("count", integer(1, 20), default=5)


@router.command("bookmark", params=[TEXT], role="operator")
async def bookmark(ctx: Context) -> None:
    """Save a line for later."""
    ctx.rt[BOOKMARKS].saved.append(ctx[TEXT])
    await ctx.reply(f"🔖 saved; `{ctx.rt.prefix}bookmarks` lists them.")


@router.command("bookmarks", params=[COUNT])
async def bookmarks(ctx: Context) -> None:
    """List the newest bookmarks."""
    newest = ctx.rt[BOOKMARKS].saved[-ctx[COUNT] :]
    await ctx.reply("\n".join(newest) or "no bookmarks yet")


async def _any_message(rt: Runtime, reaction: IncomingReaction) -> str | None:
    """What the reaction is on, for this feature: any message (None would mean: not ours)."""
    return reaction.reacts_to


@router.reaction("bookmark", ("🔖",), target=_any_message, role="operator")
async def bookmark_by_reaction(ctx: ReactionContext, event_id: str) -> None:
    """A 🔖 on a message bookmarks a link to it."""
    ctx.rt[BOOKMARKS].saved.append(f"https://matrix.to/#/{ctx.room_id}/{event_id}")
    await ctx.answer("🔖 saved")


@router.job("bookmarks digest")
async def digest(ctx: JobContext) -> str:
    """Post how many bookmarks there are."""
    count = len(ctx.rt[BOOKMARKS].saved)
    await ctx.post(f"🔖 {count} bookmark(s) so far")
    return f"{count} bookmarks"
