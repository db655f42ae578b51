"""The seam features plug into, end to end through a real Synapse, with the README's example."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.clock import ManualClock
from devstack.client import RoomUser
from tests import example_feature
from tests.conftest import BotFactory, both_stores


def _example_config(raw: dict[str, Any]) -> None:
    raw["commands"] = {"prefix": "?"}
    raw["schedules"] = [
        {"name": "digest", "cron": "0 9 * * *", "job": "bookmarks digest"},
    ]


@both_stores
async def test_example_feature_command_reaction_job_and_state(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    clock = ManualClock(datetime(2026, 11, 30, 8, 0, tzinfo=UTC))
    bot = make_bot(extra_routers=(example_feature.router,), edit=_example_config, clock=clock)
    await bot.start()
    alice, mallory = people["alice"], people["mallory"]
    state = bot.rt[example_feature.BOOKMARKS]

    saved = await alice.ask(room, "?bookmark read the zrepl runbook", bot.user_id)
    assert "saved; `?bookmarks` lists them" in saved.body
    listed = await alice.ask(room, "?bookmarks", bot.user_id)
    assert listed.body == "read the zrepl runbook"

    # A bad argument: what is wrong and the usage line, with the configured prefix.
    bad = await alice.ask(room, "?bookmarks 0", bot.user_id)
    assert "count: must be between 1 and 20, not 0" in bad.body
    assert "usage: `?bookmarks [count]`" in bad.body and "`?help bookmarks`" in bad.body
    helped = await alice.ask(room, "?help bookmark", bot.user_id)
    assert "?bookmark <text…>" in helped.body and "operator" in helped.body

    # The reaction goes through the same guard: mallory is refused, in the message's thread.
    target = await alice.send(room, "the postmortem draft")
    mark = mallory.mark()
    await mallory.client.room_send(
        room,
        "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": "🔖\ufe0f"}},
    )
    refused = await mallory.wait_for(
        lambda e: e.sender == bot.user_id and "needs the operator role" in e.body, after=mark
    )
    assert refused.content["m.relates_to"]["event_id"] == target
    # alice's reaction (without U+FE0F) is the same key and is allowed.
    await alice.client.room_send(
        room,
        "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": "🔖"}},
    )
    await alice.wait_for(lambda e: e.sender == bot.user_id and e.body == "🔖 saved")
    assert state.saved[-1].endswith(target)

    # Audited and counted like a command.
    rows = await bot.rt.store.execute(
        "SELECT sender, command, args, outcome FROM audit WHERE command = 'bookmark'"
    )
    outcomes = {(r["sender"], r["outcome"], json.loads(r["args"])[0]) for r in rows}
    assert (mallory.client.user_id, "denied", "reaction") in outcomes
    assert (alice.client.user_id, "ok", "reaction") in outcomes
    assert (alice.client.user_id, "ok", "read") in outcomes
    status, metrics = await bot.http("/metrics")
    assert status == 200
    assert 'infrabot_commands_total{command="bookmark",outcome="denied"} 1.0' in metrics

    # The job runs when the clock the test holds reaches its time, not by waiting.
    mark = alice.mark()
    await clock.set(datetime(2026, 11, 30, 9, 0, 1, tzinfo=UTC))
    await alice.wait_for(
        lambda e: e.sender == bot.user_id and e.body == "🔖 2 bookmark(s) so far", after=mark
    )

    await bot.stop()
    assert state.closed
    assert example_feature.BOOKMARKS not in bot.rt.states


async def test_a_permissions_override_covers_the_reaction_too(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    def edit(raw: dict[str, Any]) -> None:
        _example_config(raw)
        raw["permissions"]["commands"] = {"bookmark": "anyone"}

    clock = ManualClock(datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    bot = make_bot(extra_routers=(example_feature.router,), edit=edit, clock=clock)
    await bot.start()
    mallory = people["mallory"]
    target = await mallory.send(room, "worth keeping")
    await mallory.client.room_send(
        room,
        "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": "🔖"}},
    )
    await mallory.wait_for(lambda e: e.sender == bot.user_id and e.body == "🔖 saved")
    # Across the year's end, the job's next run is the next morning.
    (status,) = [s for s in await bot.rt.scheduler.status() if s.name == "digest"]
    assert status.next_run == datetime(2027, 1, 1, 9, 0, tzinfo=UTC)
    assert clock.now() + timedelta(hours=10) == status.next_run
