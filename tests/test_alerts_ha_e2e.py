"""Two real Alertmanager replicas (Debian's 0.25) in front of the bot: clustered, and not.

Prometheus posts every alert to every replica; both have the bot as receiver. A clustered pair
gossips its notification log and mostly sends once; a pair that is not clustered (a partition)
sends every notification twice. Either way each alert group must reach the room once: one
message, edited as it changes and resolves.

The clustered pair's stale "firing" after "resolved" (Alertmanager issues #4008, #2447) is made
by the real replicas, not posted by the test: Prometheus' resolve reaches one replica only
(as when its post to the other is late); that one sends "resolved", and the other, which still
holds the alert as firing, finds in the gossiped notification log a firing set it does not
cover and sends "firing" (notify/notify.go DedupStage.needsUpdate, 0.25).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devstack.alertmanager import LocalAlertmanager, alert
from devstack.client import RoomUser, SeenEvent
from devstack.synapse import free_port
from tests.conftest import BotFactory, BotHandle

TOKEN = "webhook-token-ha-123456"
ORG = {"alertname": "DomainExpiry", "domain": "nixos.org", "severity": "warning"}
ORG_CRITICAL = ORG | {"severity": "critical"}
DEV = {"alertname": "DomainExpiry", "domain": "nixos.dev", "severity": "warning"}
SUMMARY = {"summary": "the domain expires soon"}


def _replicas(tmp_path: Path, webhook: str, clustered: bool) -> list[LocalAlertmanager]:
    if not clustered:
        return [LocalAlertmanager(tmp_path / f"am{i}", webhook, bearer_token=TOKEN) for i in (0, 1)]
    ports = [free_port(), free_port()]
    return [
        LocalAlertmanager(
            tmp_path / f"am{i}",
            webhook,
            bearer_token=TOKEN,
            cluster_port=ports[i],
            peers=[f"127.0.0.1:{ports[1 - i]}"],
        )
        for i in (0, 1)
    ]


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 90) -> None:
    try:
        async with asyncio.timeout(timeout):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"never: {what}") from None


async def _handled(bot: BotHandle) -> dict[str, float]:
    """The bot's webhook counter by result."""
    _, text = await bot.http("/metrics")
    found = re.finditer(
        r'^infrabot_alert_notifications_total\{result="([a-z]+)"\} (\S+)$', text, re.M
    )
    return {m.group(1): float(m.group(2)) for m in found}


async def _sent(replicas: list[LocalAlertmanager]) -> list[float]:
    return [await asyncio.to_thread(am.notifications_sent) for am in replicas]


class Pair:
    """The two replicas and the bot, with the barriers the steps need."""

    def __init__(
        self, bot: BotHandle, replicas: list[LocalAlertmanager], user: RoomUser, room: str
    ) -> None:
        self.bot = bot
        self.replicas = replicas
        self.user = user
        self.room_id = room

    def ours(self, event: SeenEvent) -> bool:
        return event.sender == self.bot.user_id and "DomainExpiry" in _text(event)

    async def settled(self, before: list[float], senders: list[int]) -> None:
        """Barrier: each replica in `senders` has sent since `before`, and the bot has
        answered every webhook any replica sent (Alertmanager counts a notification before
        sending it: notify.go RetryStage)."""

        async def check() -> bool:
            sent = await _sent(self.replicas)
            grew = all(sent[i] > before[i] for i in senders)
            return grew and sum((await _handled(self.bot)).values()) >= sum(sent)

        await _until(check, f"replicas {senders} sent and the bot answered all")

    async def step(
        self,
        alerts: list[dict[str, Any]],
        shows: Callable[[SeenEvent], bool],
        to: list[int],
        senders: list[int],
    ) -> SeenEvent:
        """Post `alerts` to the replicas `to`; returns the first later event that `shows`."""
        mark = self.user.mark()
        before = await _sent(self.replicas)
        for i in to:
            await asyncio.to_thread(self.replicas[i].post, alerts)
        event = await self.user.wait_for(shows, timeout=90, after=mark)
        await self.settled(before, senders)
        return event

    async def room(self) -> tuple[list[SeenEvent], list[SeenEvent], list[SeenEvent]]:
        """After a barrier: the group's posts, edits and "resolved" replies in the room."""
        await self.bot.barrier(self.user, self.room_id)
        seen = [e for e in self.user.seen if self.ours(e)]
        replies = [e for e in seen if e.body.startswith("✅ resolved: DomainExpiry")]
        edits = [e for e in seen if _edit(e)]
        posts = [e for e in seen if e not in replies and e not in edits]
        return posts, edits, replies


def _edit(event: SeenEvent) -> bool:
    return (event.content.get("m.relates_to") or {}).get("rel_type") == "m.replace"


def _text(event: SeenEvent) -> str:
    return str(event.content.get("m.new_content", event.content).get("body", ""))


def _edit_of(event_id: str, *words: str) -> Callable[[SeenEvent], bool]:
    def shows(event: SeenEvent) -> bool:
        rel = event.content.get("m.relates_to") or {}
        return (
            rel.get("event_id") == event_id
            and _edit(event)
            and all(w in _text(event) for w in words)
        )

    return shows


@pytest.mark.parametrize("clustered", [True, False], ids=["clustered", "partitioned"])
async def test_each_alert_group_reaches_the_room_once(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    tmp_path: Path,
    clustered: bool,
) -> None:
    """Fire, an alert joins, a label changes, resolve, fire anew: one message per firing."""
    port = free_port()
    replicas = _replicas(tmp_path, f"http://127.0.0.1:{port}/alertmanager", clustered)
    for am in replicas:
        am.start()
    try:
        if clustered:
            members = sorted(am.cluster_address for am in replicas)

            async def joined() -> bool:
                states = [await asyncio.to_thread(am.cluster_status) for am in replicas]
                return all(state == ("ready", members) for state in states)

            await _until(joined, "the replicas formed a settled cluster")

        def edit(raw: dict[str, Any]) -> None:
            raw["http"]["port"] = port
            raw["alertmanager"] = {"auth": {"bearer_token": TOKEN}, "dedupe_window_s": 600}

        bot = make_bot(edit=edit)
        await bot.start()
        pair = Pair(bot, replicas, people["alice"], room)
        both = [0, 1]
        # A clustered pair sends once (either replica); a partitioned one, each replica.
        senders: list[int] = [] if clustered else both
        # Prometheus keeps an alert's activeAt as its startsAt, the same for both replicas.
        started = datetime.now(UTC) - timedelta(minutes=3)

        def is_post(event: SeenEvent) -> bool:
            return pair.ours(event) and not _edit(event)

        first = await pair.step([alert(ORG, SUMMARY, starts_at=started)], is_post, both, senders)
        assert "FIRING (1)" in first.body and "nixos.org" in first.body, first.body

        # An alert joins the group (Prometheus resends every active alert each evaluation).
        group = [alert(ORG, SUMMARY, starts_at=started), alert(DEV, SUMMARY, starts_at=started)]
        await pair.step(group, _edit_of(first.event_id, "FIRING (2)", "nixos.dev"), both, senders)

        # A label of one alert changes: that series resolves and a new one fires.
        changed = [
            alert(ORG, SUMMARY, resolved=True, starts_at=started),
            alert(ORG_CRITICAL, SUMMARY, starts_at=started),
            alert(DEV, SUMMARY, starts_at=started),
        ]
        await pair.step(changed, _edit_of(first.event_id, "CRITICAL"), both, senders)

        resolve = [
            alert(ORG_CRITICAL, SUMMARY, resolved=True, starts_at=started),
            alert(DEV, SUMMARY, resolved=True, starts_at=started),
        ]
        if clustered:
            # The same race can already have happened in a step above (one replica flushed
            # just before the post reached it): count from here.
            counts = await _handled(bot)
            earlier = counts.get("stale", 0) + counts.get("posted", 0)
            # The resolve reaches replica 0 first; replica 1 still holds both alerts firing.
            await pair.step(resolve, _edit_of(first.event_id, "RESOLVED"), [0], [0])

            # Replica 1's stale "firing" (same alerts, same startsAt) reaches the bot: dropped
            # as stale, or (wrongly) posted as a new firing. The room says which below.
            async def stale_arrived() -> bool:
                counts = await _handled(bot)
                return counts.get("stale", 0) + counts.get("posted", 0) > earlier

            await _until(stale_arrived, "replica 1's stale firing reached the bot")
            before = await _sent(replicas)
            await asyncio.to_thread(replicas[1].post, resolve)
            await pair.settled(before, [1])  # its own resolve: a twin, dropped
        else:
            await pair.step(resolve, _edit_of(first.event_id, "RESOLVED"), both, both)

        posts, edits, replies = await pair.room()
        assert posts == [first], [e.body for e in posts]
        assert len(replies) == 1, [e.body for e in replies]
        assert all(_edit_of(first.event_id)(e) for e in edits)
        assert "RESOLVED" in _text(edits[-1]), "a stale copy edited the message back"
        counts = await _handled(bot)
        if clustered:
            assert counts.get("stale", 0) >= 1, counts
        else:
            # Each replica's own notification log covers what it sent: it sends no stale copy.
            assert counts.get("stale", 0) == 0, counts
        if not clustered:
            # Each replica sent each of the 4 steps itself (the barriers saw it); the twins
            # were answered and dropped.
            assert sum(await _sent(replicas)) >= 8 and counts["duplicate"] >= 1, counts

        # A genuinely new firing (a new startsAt) opens the group again: a new message.
        again = await pair.step(
            [alert(ORG_CRITICAL, SUMMARY, starts_at=datetime.now(UTC))],
            lambda e: is_post(e) and e.event_id != first.event_id,
            both,
            senders,
        )
        assert "FIRING (1)" in again.body and "CRITICAL" in again.body, again.body
        posts, edits, replies = await pair.room()
        assert posts == [first, again], [e.body for e in posts]
        assert len(replies) == 1
    finally:
        for am in replicas:
            am.stop()
