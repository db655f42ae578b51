"""The bot's HTTP server: /healthz, /metrics, and the routes features add."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.context import Runtime
from bot.registry import HttpHandler

log = logging.getLogger(__name__)

RUNTIME = web.AppKey("runtime", Runtime)


async def healthz(request: web.Request) -> web.Response:
    """200 while the bot syncs with its homeserver, 503 with the reason otherwise."""
    rt = request.app[RUNTIME]
    stale_after = rt.config.core.matrix.sync_timeout_s * 2 + 30
    ok, reason = rt.health.check(stale_after)
    body = {
        "status": "ok" if ok else "failing",
        "reason": reason,
        "since": rt.health.since,
        "outbox_pending": rt.outbox.pending(),
    }
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition format."""
    rt = request.app[RUNTIME]
    return web.Response(body=rt.metrics.render(), content_type="text/plain", charset="utf-8")


def _bind(handler: HttpHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        return await handler(request.app[RUNTIME], request)

    return wrapped


def make_app(rt: Runtime) -> web.Application:
    """The aiohttp application with core and feature routes."""
    app = web.Application(client_max_size=2 * 1024 * 1024)
    app[RUNTIME] = rt
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    for route in rt.registry.routes:
        app.router.add_route(route.method, route.path, _bind(route.handler))
    return app


async def start_http(rt: Runtime) -> web.AppRunner:
    """Start listening on the configured address; records the bound port in rt.http_port."""
    cfg = rt.config.core.http
    runner = web.AppRunner(make_app(rt), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port)
    await site.start()
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None) or []
    rt.http_port = sockets[0].getsockname()[1] if sockets else cfg.port
    log.info("HTTP server on http://%s:%s", cfg.host, rt.http_port)
    return runner
