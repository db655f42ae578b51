"""A newcomer's feature written from the README's "Adding a feature" alone, tried with bad input.

`?note [--tag TAG] <text…>` (a flag and a greedy argument), a 👍 reaction that pins a message,
a `notes digest` job and typed state; then a flag given twice, `--tag=` with nothing after it,
a converter that raises something other than ValueError, and a 👍 with a skin tone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.args import flag, rest
from bot.clock import ManualClock
from bot.context import Context, JobContext, ReactionContext, Runtime
from bot.matrix import IncomingReaction
from bot.registry import Router, StateKey
from devstack.client import RoomUser
from tests.conftest import BotFactory

router = Router("notes")


@dataclass
class Notes:
    """Notes by tag; `pinned` holds event ids."""

    by_tag: dict[str, list[str]] = field(default_factory=dict)
    pinned: list[str] = field(default_factory=list)


NOTES = StateKey("notes", Notes)


@router.lifespan(NOTES)
@asynccontextmanager
async def notes_state(rt: Runtime) -> AsyncIterator[Notes]:
    """No clients to open: the state is all there is."""
    yield Notes()


def tag(word: str, rt: Runtime) -> str:
    """A tag from a fixed table; an unknown one raises KeyError (a newcomer's slip)."""
    return {"ops": "ops", "db": "db"}[word]


TAG = flag("--tag", tag, metavar="TAG", default="misc")
TEXT = rest("text", required=True)


@router.command("note", params=[TAG, TEXT], role="operator")
async def note(ctx: Context) -> None:
    """Write a note under a tag."""
    ctx.rt[NOTES].by_tag.setdefault(ctx[TAG], []).append(ctx[TEXT])
    await ctx.reply(f"📝 {ctx[TAG]}: {ctx[TEXT]}")


async def _any(rt: Runtime, reaction: IncomingReaction) -> str | None:
    return reaction.reacts_to


@router.reaction("note", ("👍",), target=_any, role="operator")
async def pin(ctx: ReactionContext, event_id: str) -> None:
    """A 👍 pins the message."""
    ctx.rt[NOTES].pinned.append(event_id)
    await ctx.answer("📌 pinned")


@router.job("notes digest")
async def digest(ctx: JobContext) -> str:
    """Post how many notes there are."""
    count = sum(len(v) for v in ctx.rt[NOTES].by_tag.values())
    await ctx.post(f"📝 {count} note(s)")
    return f"{count} notes"


def _config(raw: dict[str, Any]) -> None:
    raw["commands"] = {"prefix": "?"}
    raw["schedules"] = [{"name": "notes", "cron": "0 9 * * *", "job": "notes digest"}]


async def test_a_newcomers_feature_with_a_flag_a_greedy_text_a_reaction_and_a_job(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    clock = ManualClock(datetime(2026, 11, 30, 8, 0, tzinfo=UTC))
    bot = make_bot(extra_routers=(router,), edit=_config, clock=clock)
    await bot.start()
    alice = people["alice"]

    said = await alice.ask(room, "?note --tag ops rotate the  keys --soon", bot.user_id)
    # A greedy text after the flag: words starting with -- are the command's options.
    assert "unknown option `--soon`" in said.body
    said = await alice.ask(room, "?note rotate the keys --tag=db", bot.user_id)
    assert said.body == "📝 db: rotate the keys"

    twice = await alice.ask(room, "?note --tag ops x --tag=db", bot.user_id)
    assert "--tag given twice" in twice.body and "usage: `?note <text…> [--tag TAG]`" in twice.body
    # `--tag=` with nothing after it is a missing value, not an empty tag given to the converter.
    empty = await alice.ask(room, "?note --tag= x", bot.user_id)
    assert "--tag= has no value (TAG)" in empty.body and "usage: `?note" in empty.body
    # A converter raising KeyError is a bug in the feature: answered with a reference, audited.
    slip = await alice.ask(room, "?note --tag web x", bot.user_id)
    assert "failed unexpectedly (ref" in slip.body

    # 👍 with a skin tone (as a client with a default tone sends it) is the declared 👍.
    target = await alice.send(room, "the runbook")
    await alice.client.room_send(
        room,
        "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": "👍🏽"}},
    )
    await alice.wait_for(lambda e: e.sender == bot.user_id and e.body == "📌 pinned")
    assert bot.rt[NOTES].pinned == [target]

    mark = alice.mark()
    await clock.set(datetime(2026, 11, 30, 9, 0, 1, tzinfo=UTC))
    await alice.wait_for(lambda e: e.sender == bot.user_id and e.body == "📝 1 note(s)", after=mark)
    await bot.stop()


@pytest.mark.parametrize("key", ["👍", "👍🏻", "👍🏿", "👍\ufe0f"])
def test_reaction_keys_match_across_skin_tones_and_variation_selectors(key: str) -> None:
    from bot.registry import Registry

    found = Registry([router]).reactions_for(key)
    assert [r.name for r in found] == ["note"]
