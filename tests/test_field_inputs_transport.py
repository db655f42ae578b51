"""Field sequences for the Matrix transport that the core tests do not cover.

A sync reports an invite once (Matrix client-server spec, `/sync` `rooms.invite`: only what
changed since `since`). A re-invited bot whose join then fails for a moment (a 502 from the
reverse proxy in front of Synapse during a deploy of it) must try again, not stay out of its
room until someone restarts it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from devstack.client import RoomUser
from devstack.synapse import LocalSynapse
from tests.conftest import Accounts, BotFactory
from tests.local_server import serve


@dataclass
class JoinFailingProxy:
    """Forwards to Synapse; the next `failures` joins get a 502 from the 'reverse proxy'."""

    upstream: str
    failures: int = 0
    refused: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.method == "POST" and "/join/" in request.path and self.failures > 0:
            self.failures -= 1
            self.refused.append(request.path)
            return web.Response(status=502, text="<html><h1>502 Bad Gateway</h1></html>")
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, self.upstream + request.path_qs, data=body, headers=headers
            ) as upstream,
        ):
            payload = await upstream.read()
            return web.Response(
                body=payload, status=upstream.status, content_type="application/json"
            )


@pytest.fixture
async def join_proxy(synapse: LocalSynapse) -> AsyncIterator[JoinFailingProxy]:
    proxy = JoinFailingProxy(synapse.url)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    async with serve(app) as url:
        proxy.url = url
        yield proxy


async def test_a_reinvited_bot_whose_join_fails_once_joins_again(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    synapse: LocalSynapse,
    accounts: Accounts,
    join_proxy: JoinFailingProxy,
) -> None:
    alice = people["alice"]
    bot = make_bot(homeserver=join_proxy.url)
    await bot.start()
    assert (await alice.ask(room, "!ping", bot.user_id)).body.startswith("pong")

    synapse.kick(accounts.admin, room, bot.user_id, "testing")
    join_proxy.failures = 2
    mark = alice.mark()
    synapse.invite(accounts.admin, room, bot.user_id)
    await alice.wait_for(
        lambda e: (
            e.source.get("type") == "m.room.member"
            and e.source.get("state_key") == bot.user_id
            and e.content.get("membership") == "join"
        ),
        timeout=40,
        after=mark,
    )
    assert len(join_proxy.refused) == 2, "it joined after two refused joins"
    assert (await alice.ask(room, "!ping", bot.user_id)).body.startswith("pong")
