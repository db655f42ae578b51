"""The bot's HTTP server: /healthz, /metrics, and the routes features add.

A route that takes a request body reads it with `read_body`: the whole body, however many TCP
segments or chunks it arrives in, up to a limit (413 beyond it, also for chunked bodies that
announce no length) and within a deadline (408 for a client that stops sending, e.g. one whose
Content-Length promised more than it sent). `request.content.read(n)` would return only what
has arrived so far.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.context import Runtime
from bot.registry import HttpHandler
from bot.store import StoreUnavailable

log = logging.getLogger(__name__)

RUNTIME = web.AppKey("runtime", Runtime)
# How long /healthz waits for the state store before it reports it unavailable.
HEALTH_STORE_TIMEOUT_S = 2.0
# Store queries /healthz gave up on, kept referenced until they end by themselves.
_abandoned: set[asyncio.Future[int]] = set()
# The body limit of a route that does not choose its own.
DEFAULT_MAX_BODY = 1_048_576
# How long a whole body may take to arrive: far beyond any real webhook on a working network.
DEFAULT_BODY_TIMEOUT_S = 30.0


class BodyRefused(Exception):
    """A request body that will not be read; `status` is the 4xx every route answers."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BodyTooLarge(BodyRefused):
    """A request body beyond `limit` bytes: 413."""

    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"body larger than {limit} bytes")
        self.limit = limit


class BodyTimeout(BodyRefused):
    """A body that did not arrive whole within the deadline: 408."""

    status = 408

    def __init__(self, timeout_s: float, received: int) -> None:
        super().__init__(
            f"body incomplete after {timeout_s:g} s ({received} bytes received); "
            "did the client send less than its Content-Length?"
        )


async def read_body(
    request: web.Request,
    limit: int = DEFAULT_MAX_BODY,
    timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
) -> bytes:
    """The whole request body (bytes), read to its end, at most `limit` bytes.

    Raises BodyTooLarge as soon as the announced Content-Length or the bytes received exceed
    `limit`, without reading further (a chunked body is counted as it arrives), and
    BodyTimeout when the body has not arrived whole within `timeout_s` seconds.
    """
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            # readany() waits for the next piece and returns b"" only at the end of the body.
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(limit)
                parts.append(chunk)
    except TimeoutError:
        raise BodyTimeout(timeout_s, size) from None
    return b"".join(parts)


def refused(exc: BodyRefused) -> web.Response:
    """The 4xx answer to a body a route will not read (too large, too slow)."""
    return web.json_response({"status": "rejected", "reason": exc.reason}, status=exc.status)


async def healthz(request: web.Request) -> web.Response:
    """200 while the bot does its part (bot.health), 503 with the reason otherwise.

    `role` is `leader` or `standby` (bot.leader).
    """
    rt = request.app[RUNTIME]
    stale_after = rt.config.core.matrix.sync_timeout_s * 2 + 30
    ok, reason = rt.health.check(stale_after)
    pending: int | None = None
    # Awaited beside, not cancelled into: psycopg answers a cancellation by asking the server
    # to cancel, which a network split holds up, and /healthz must answer (bot.leader).
    query = asyncio.ensure_future(rt.outbox.pending())
    done, _ = await asyncio.wait({query}, timeout=HEALTH_STORE_TIMEOUT_S)
    if not done:
        query.cancel()
        _abandoned.add(query)
        query.add_done_callback(_abandoned.discard)
        ok, reason = False, f"state store unavailable: no answer in {HEALTH_STORE_TIMEOUT_S:g} s"
    else:
        try:
            pending = query.result()
        except StoreUnavailable as exc:
            ok, reason = False, f"state store unavailable: {exc}"
    body = {
        "status": "ok" if ok else "failing",
        "role": rt.health.role,
        "reason": reason,
        "since": rt.health.since,
        "outbox_pending": pending,
    }
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition format."""
    rt = request.app[RUNTIME]
    return web.Response(body=rt.metrics.render(), content_type="text/plain", charset="utf-8")


def _bind(handler: HttpHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request.app[RUNTIME], request)
        except BodyRefused as exc:
            log.warning("%s %s from %s: %s", request.method, request.path, request.remote, exc)
            return refused(exc)

    return wrapped


def make_app(rt: Runtime) -> web.Application:
    """The aiohttp application with core and feature routes."""
    # Bodies are read by read_body with each route's limit; aiohttp's own cap (request.read())
    # only applies to code that bypasses it.
    app = web.Application(client_max_size=DEFAULT_MAX_BODY)
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
