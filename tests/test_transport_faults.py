"""Lost responses, rate limits, refusals and a homeserver that hangs, between the bot and a real
Synapse (a fault proxy, Synapse's own rate limiter, or a TCP server that never answers)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot import messages, outbox_db
from devstack.client import RoomUser
from devstack.synapse import LocalSynapse
from tests.conftest import BotFactory, BotHandle
from tests.local_server import serve


@dataclass
class FaultProxy:
    """Forwards everything to Synapse; the next `faults` message sends get the given fault.

    Requests whose path contains one of `hanging` are accepted and held unanswered until
    `release()`, like a homeserver that accepts connections but never answers.
    """

    upstream: str
    faults: list[str] = field(default_factory=list)
    sends: list[tuple[float, str]] = field(default_factory=list)
    url: str = ""
    hanging: set[str] = field(default_factory=set)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0

    def hang(self, path_part: str) -> None:
        self.released.clear()
        self.hanging.add(path_part)

    def release(self) -> None:
        self.hanging.clear()
        self.released.set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if any(part in request.path for part in self.hanging):
            self.held += 1
            await self.released.wait()
        is_send = request.method == "PUT" and "/send/m.room.message/" in request.path
        fault = self.faults.pop(0) if is_send and self.faults else None
        if is_send:
            self.sends.append((time.monotonic(), request.path))
        if fault == "rate_limit":
            return web.json_response(
                {"errcode": "M_LIMIT_EXCEEDED", "error": "slow down", "retry_after_ms": 400},
                status=429,
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, self.upstream + request.path_qs, data=body, headers=headers
            ) as upstream,
        ):
            payload = await upstream.read()
            status = upstream.status
        if fault == "lose_response":
            # Synapse did store the event; the bot just never hears so.
            return web.Response(status=502, text="bad gateway")
        return web.Response(body=payload, status=status, content_type="application/json")


@pytest.fixture
async def proxy(synapse: LocalSynapse) -> AsyncIterator[FaultProxy]:
    fp = FaultProxy(synapse.url)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fp.handle)
    async with serve(app) as url:
        fp.url = url
        yield fp


async def test_lost_response_is_retried_with_same_txn_and_posted_once(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, proxy: FaultProxy
) -> None:
    bot = make_bot(homeserver=proxy.url)
    await bot.start()
    alice = people["alice"]
    proxy.faults = ["lose_response", "lose_response"]
    ping = await alice.send(room, "!ping")
    await alice.reply_to(ping, bot.user_id, timeout=20)
    # Barrier: the room's messages go one at a time, in order, so the answer to a second
    # ping is sent only once the first answer's retries ended (with one heard answer).
    barrier = await alice.send(room, "!ping")
    await alice.reply_to(barrier, bot.user_id, timeout=20)
    replies = [e for e in alice.seen if e.sender == bot.user_id and e.replies_to(ping)]
    assert len(replies) == 1, "a retried send must not post twice"
    paths = [p for _, p in proxy.sends]
    assert len(paths) == 4 and paths[0] == paths[1] == paths[2], "same transaction id each time"
    assert paths[3] != paths[0], "the second answer is a new transaction"


async def test_rate_limit_is_honoured(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, proxy: FaultProxy
) -> None:
    bot = make_bot(homeserver=proxy.url)
    await bot.start()
    proxy.faults = ["rate_limit"]
    pong = await people["alice"].ask(room, "!ping", bot.user_id, timeout=20)
    assert pong.body.startswith("pong")
    (t1, p1), (t2, p2) = proxy.sends[:2]
    assert p1 == p2
    assert t2 - t1 >= 0.35, "waited for retry_after_ms before sending again"


async def test_a_rate_limited_backlog_goes_at_the_servers_pace(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, synapse: LocalSynapse
) -> None:
    """After one refusal the rest is sent at the allowed rate, not refused one by one."""
    admin = synapse.register("pace-admin", "pace-admin-password", admin=True)
    bot = make_bot()
    await bot.start()
    alice = people["alice"]
    # Synapse's limiter counts the bot's latest sends (its join, which on PostgreSQL may come
    # after start() returned, and this answer) at the new rate once it is set: let them age
    # out first, or the first paced message is refused for them.
    await bot.barrier(alice, room)
    await asyncio.sleep(2.5)
    synapse.limit_messages(admin, bot.user_id, per_second=1, burst=1)
    try:
        mark = alice.mark()
        ids = [await bot.rt.outbox.post(room, messages.notice(f"paced {i}")) for i in range(4)]
        for i in range(4):
            body = f"paced {i}"
            await alice.wait_for(
                lambda e: e.sender == bot.user_id and e.body == body,  # noqa: B023 - awaited here
                timeout=20,
                after=mark,
            )
        order = [e.body for e in alice.seen[mark:] if e.body.startswith("paced ")]
        assert order == [f"paced {i}" for i in range(4)]
        _, metrics = await bot.http("/metrics")
        refused = [line for line in metrics.splitlines() if 'errors_total{where="outbox"}' in line]
        # Unpaced, every message after the first is refused once (and held 0.5 s by Synapse).
        assert refused == ['infrabot_errors_total{where="outbox"} 1.0'], refused
        # The bot's own records: one refusal in all, and every later message went in one try.
        rows = [await outbox_db.get(bot.rt.store, i) for i in ids]
        attempts = [r.attempts for r in rows if r is not None]
        assert sum(attempts) == 5 and attempts.count(1) == 3, attempts
        # The server accepted them at its pace: 1 a second after the burst of 1.
        stamps = [
            e.source["origin_server_ts"] for e in alice.seen[mark:] if e.body.startswith("paced ")
        ]
        assert stamps[-1] - stamps[0] >= 2000, stamps
    finally:
        synapse.limit_messages(admin, bot.user_id, per_second=0, burst=None)


async def _health_until(bot: BotHandle, want: int, timeout: float = 60) -> str:
    """Poll /healthz until it answers `want`; returns the body."""
    async with asyncio.timeout(timeout):
        while True:
            if bot.bot is not None and bot.bot.runtime is not None and bot.rt.http_port:
                status, body = await bot.http("/healthz")
                if status == want:
                    return body
            await asyncio.sleep(0.1)


def _short_timeouts(raw: dict[str, Any]) -> None:
    raw["matrix"].update({"request_timeout_s": 2, "sync_timeout_s": 1, "max_backoff_s": 1})


async def test_a_homeserver_that_accepts_but_never_answers_is_reported(
    make_bot: BotFactory,
) -> None:
    """Issue 12 item 9: every request has a deadline, so /healthz says why instead of 'ok'."""
    held: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        held.append(writer)
        await reader.read()  # until the bot gives up and closes

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        bot = make_bot(homeserver=f"http://127.0.0.1:{port}", edit=_short_timeouts)
        await bot.start(wait=False)
        body = await _health_until(bot, 503)
        while "no answer within 2 s" not in body:
            body = await _health_until(bot, 503)
        assert "cannot connect to http://127.0.0.1:" in body and "whoami" in body
        assert held, "the bot did reach the server"
        await bot.stop()
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_first_sync_that_hangs_is_failed_and_syncing_resumes(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, proxy: FaultProxy
) -> None:
    """The first sync after start (nio: no timeout with full_state) hangs, then Synapse answers."""
    proxy.hang("/sync")
    bot = make_bot(homeserver=proxy.url, edit=_short_timeouts)
    await bot.start()  # login and join go through; the sync hangs
    body = await _health_until(bot, 503)
    while "no answer within" not in body:
        body = await _health_until(bot, 503)
    assert "sync with http://127.0.0.1:" in body and "failing" in body
    proxy.release()
    await _health_until(bot, 200)
    pong = await people["alice"].ask(room, "!ping", bot.user_id, timeout=20)
    assert pong.body.startswith("pong")


async def test_a_refused_reaction_never_blocks_the_room(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str
) -> None:
    """Issue 12 item 12: Synapse refuses a second identical reaction for good (400
    M_DUPLICATE_ANNOTATION); it counts as delivered and the room's next message follows."""
    bot = make_bot()
    await bot.start()
    alice = people["alice"]
    target = await alice.send(room, "something to react to")  # not a command: no answer queued
    box = bot.rt.outbox
    first = await box.send(room, messages.reaction(target, "👀"), "m.reaction")
    again = await box.post(room, messages.reaction(target, "👀"), "m.reaction")
    await box.post(room, messages.notice("after the duplicate"))
    await alice.wait_for(
        lambda e: e.sender == bot.user_id and e.body == "after the duplicate", timeout=20
    )
    assert await box.wait_sent(again) == first, "the reaction that is there"
    assert await box.pending() == 0
    reactions = [
        e for e in alice.seen if e.sender == bot.user_id and e.source["type"] == "m.reaction"
    ]
    assert len(reactions) == 1
    _, metrics = await bot.http("/metrics")
    assert (
        'infrabot_outbox_refused_total{errcode="M_DUPLICATE_ANNOTATION",'
        'outcome="already_delivered"} 1.0'
    ) in metrics


async def test_a_gappy_sync_loses_no_command(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """More events than the sync's timeline limit (50) arrive at once: the timeline comes back
    `limited`, and the command in the gap is read from /messages and answered (not skipped)."""

    def patient(raw: dict[str, Any]) -> None:
        # The held sync must outlast the sends below even on a busy machine: a sync that
        # times out is a gap the bot knows of, and then the command would rightly be late.
        raw["matrix"]["request_timeout_s"] = 120

    caplog.set_level(logging.INFO, logger="bot.matrix")
    bot = make_bot(homeserver=proxy.url, edit=patient)
    await bot.start()
    alice = people["alice"]
    assert (await alice.ask(room, "!ping", bot.user_id)).body.startswith("pong")
    proxy.hang("/sync")
    await alice.send(room, "wakes the long-poll in flight")
    while True:  # the bot's next sync is held: what follows arrives in one batch
        if proxy.held:
            break
        await asyncio.sleep(0.05)
    in_gap = await alice.send(room, "!ping")
    await asyncio.gather(*(alice.send(room, f"chatter {i}") for i in range(55)))
    proxy.release()
    pong = await alice.reply_to(in_gap, bot.user_id, timeout=30)
    assert pong.body.startswith("pong")
    gap = re.search(r"read (\d+) event\(s\) missing from a limited timeline", caplog.text)
    assert gap is not None and int(gap.group(1)) >= 1, "the ping came from the gap"
    assert not any(
        e.sender == bot.user_id and e.body.startswith("I skipped") for e in alice.seen
    ), "the bot was syncing all along: nothing was late"
