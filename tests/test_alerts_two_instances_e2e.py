"""Issue 17: two bot instances on one PostgreSQL both take Alertmanager webhooks.

Real parts: the harness's Synapse and PostgreSQL (as the `postgres` user); two Bot runtimes
in this process share one database, so only one holds the lease and sends the outbox while
both commit webhooks to it. Waits end on what the room shows; "nothing else came" is checked
behind a later `!ping`'s answer (BotHandle.barrier).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from devstack.client import RoomUser
from devstack.synapse import free_port
from tests.conftest import BotFactory, BotHandle
from tests.test_alerts_e2e import _alerting, _count, _payload, _post

on_postgres = pytest.mark.parametrize("state_store", ["postgres"], indirect=True)


async def _pair(make_bot: BotFactory) -> tuple[BotHandle, BotHandle]:
    """Two instances, the same config but their HTTP port; the first one started leads."""
    first = make_bot(edit=_alerting(free_port()))
    await first.start()
    await _until(lambda: _role(first, "leader"), "the first instance leads")
    second = make_bot(edit=_alerting(free_port()))
    await second.start(lead=False)
    await _until(lambda: _role(second, "standby"), "the second instance stands by")
    return first, second


async def _role(bot: BotHandle, role: str) -> bool:
    status, body = await bot.http("/healthz")
    return status == 200 and json.loads(body)["role"] == role


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    try:
        async with asyncio.timeout(timeout):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"never: {what}") from None


async def _seen_all(user: RoomUser, leader: BotHandle, room: str, names: list[str]) -> None:
    async def arrived() -> bool:
        return all(_count(user, leader.user_id, names).values())

    await _until(arrived, "every group reached the room", timeout=120)
    await leader.barrier(user, room)  # a duplicate would have been queued before its answer


@on_postgres
async def test_two_instances_packing_into_one_room_lose_and_repeat_nothing(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    """New groups posted to both instances while the leader sends: every webhook is a 200,
    every group is shown in exactly one message (packed or alone), none is lost."""
    leader, standby = await _pair(make_bot)
    names = [f"Packed{i:02d}" for i in range(40)]
    bots = (leader, standby)
    results: list[tuple[int, str]] = []
    # Waves of webhooks to both instances at once: the leader sends the room's waiting
    # message while the other instance's next batch wants to pack into it.
    for wave in range(0, len(names), 4):
        results += await asyncio.gather(
            *(_post(bots[i % 2], _payload(name)) for i, name in enumerate(names[wave : wave + 4]))
        )
    assert [status for status, _ in results] == [200] * len(names), results
    await _seen_all(people["alice"], leader, room, names)
    counts = _count(people["alice"], leader.user_id, names)
    assert counts == dict.fromkeys(names, 1), counts


@on_postgres
async def test_one_notification_to_both_instances_posts_one_message(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    """An HA Alertmanager pair posts the same notification to both instances at once: one
    instance posts it, the other finds it recorded (a duplicate); the room shows it once."""
    leader, standby = await _pair(make_bot)
    names = [f"Twice{i:02d}" for i in range(6)]
    for name in names:
        body = _payload(name)
        answers = await asyncio.gather(_post(leader, body), _post(standby, body))
        assert [status for status, _ in answers] == [200, 200], answers
    await _seen_all(people["alice"], leader, room, names)
    counts = _count(people["alice"], leader.user_id, names)
    assert counts == dict.fromkeys(names, 1), counts
