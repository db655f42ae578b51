"""Lost responses and rate limits between the bot and a real Synapse (a fault proxy, or
Synapse's own rate limiter)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from bot import messages
from devstack.client import RoomUser
from devstack.synapse import LocalSynapse
from tests.conftest import BotFactory


@dataclass
class FaultProxy:
    """Forwards everything to Synapse; the next `faults` message sends get the given fault."""

    upstream: str
    faults: list[str] = field(default_factory=list)
    sends: list[tuple[float, str]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
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
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fp.url = f"http://127.0.0.1:{port}"
    yield fp
    await runner.cleanup()


async def test_lost_response_is_retried_with_same_txn_and_posted_once(
    make_bot: BotFactory, people: dict[str, RoomUser], room: str, proxy: FaultProxy
) -> None:
    bot = make_bot(homeserver=proxy.url)
    await bot.start()
    alice = people["alice"]
    proxy.faults = ["lose_response", "lose_response"]
    ping = await alice.send(room, "!ping")
    await alice.reply_to(ping, bot.user_id, timeout=20)
    for _ in range(100):  # the bot retries until it hears an answer: the third attempt
        if len(proxy.sends) >= 3 and not proxy.faults:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    replies = [e for e in alice.seen if e.sender == bot.user_id and e.replies_to(ping)]
    assert len(replies) == 1, "a retried send must not post twice"
    paths = [p for _, p in proxy.sends]
    assert len(paths) >= 3 and paths[0] == paths[1] == paths[2], "same transaction id each time"


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
    synapse.limit_messages(admin, bot.user_id, per_second=1, burst=1)
    try:
        alice = people["alice"]
        mark = alice.mark()
        started = time.monotonic()
        for i in range(4):
            bot.rt.outbox.post(room, messages.notice(f"paced {i}"))
        for i in range(4):
            await alice.wait_for(
                lambda e, i=i: e.sender == bot.user_id and e.body == f"paced {i}",
                timeout=20,
                after=mark,
            )
        took = time.monotonic() - started
        order = [e.body for e in alice.seen[mark:] if e.body.startswith("paced ")]
        assert order == [f"paced {i}" for i in range(4)]
        _, metrics = await bot.http("/metrics")
        refused = [line for line in metrics.splitlines() if 'errors_total{where="outbox"}' in line]
        # Unpaced, every message after the first is refused once (and held 0.5 s by Synapse).
        assert refused == ['infrabot_errors_total{where="outbox"} 1.0'], refused
        assert 2.5 <= took < 6, took
    finally:
        synapse.limit_messages(admin, bot.user_id, per_second=0, burst=None)
