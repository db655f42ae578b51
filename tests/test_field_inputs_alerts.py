"""Field inputs for the alerts feature that the alerts tests do not cover.

An Alertmanager behind an auth proxy (oauth2-proxy, a corporate SSO gateway) answers the
bot's API calls with 200 and an HTML login page once the proxy's session or token lapses:
oauth2-proxy redirects to its sign-in page (`/oauth2/sign_in`, text/html) and aiohttp follows
the redirect. Every command that talks to the API must then say so, never fail unexpectedly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from devstack.client import RoomUser
from tests.conftest import BotFactory
from tests.local_server import serve

LOGIN_PAGE = (
    '<!DOCTYPE html><html lang="en"><head><title>Sign In</title></head>'
    '<body><form method="GET" action="/oauth2/start">'
    '<button type="submit">Sign in with OpenID Connect</button></form></body></html>'
)


@pytest.fixture
async def proxy_login_page() -> AsyncIterator[tuple[str, list[str]]]:
    """A server standing for an auth proxy whose session lapsed: 302 to an HTML sign-in page."""
    asked: list[str] = []

    async def api(request: web.Request) -> web.StreamResponse:
        asked.append(f"{request.method} {request.path}")
        raise web.HTTPFound("/oauth2/sign_in")

    async def sign_in(_: web.Request) -> web.Response:
        return web.Response(text=LOGIN_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/api/v2/{tail:.*}", api)
    app.router.add_get("/oauth2/sign_in", sign_in)
    async with serve(app) as url:
        yield url, asked


async def test_an_api_answering_html_is_a_clear_error_for_every_command(
    make_bot: BotFactory,
    people: dict[str, RoomUser],
    room: str,
    proxy_login_page: tuple[str, list[str]],
) -> None:
    url, asked = proxy_login_page

    def edit(raw: dict[str, Any]) -> None:
        raw["alertmanager"] = {"url": url}

    bot = make_bot(edit=edit)
    await bot.start()
    bob = people["bob"]
    for command in (
        "!alerts",
        "!silences",
        "!silence alertname=Watchdog 1h",
        "!unsilence 3f2a9c1e-2b1d-4c55-9a1e-0d5f6a7b8c9d",
    ):
        answer = await bob.ask(room, command, bot.user_id)
        assert "failed unexpectedly" not in answer.body, (command, answer.body)
        assert "not JSON" in answer.body and "Sign In" in answer.body, (command, answer.body)
    assert asked, "the commands did reach the proxy"
