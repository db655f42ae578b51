"""Matrix transport on matrix-nio: error responses become exceptions, the sync loop backs off.

nio's own retry loops are switched off (max_timeouts/max_limit_exceeded = 0) so that every
retry here is explicit, bounded, logged and reuses the same transaction id.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    JoinResponse,
    LoginResponse,
    ReactionEvent,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
    UploadResponse,
    WhoamiResponse,
)

from bot.backoff import Backoff
from bot.config import MatrixConfig
from bot.errors import RemoteError
from bot.health import Health
from bot.metrics import Metrics
from bot.store import Store

log = logging.getLogger(__name__)

# Errors that retrying will not fix: the request itself or our credentials are wrong.
PERMANENT_ERRCODES = frozenset(
    {
        "M_FORBIDDEN",
        "M_UNKNOWN_TOKEN",
        "M_MISSING_TOKEN",
        "M_BAD_JSON",
        "M_NOT_JSON",
        "M_TOO_LARGE",
        "M_INVALID_PARAM",
        "M_NOT_FOUND",
        "M_USER_DEACTIVATED",
        "M_UNRECOGNIZED",
    }
)


class MatrixError(RemoteError):
    """A homeserver request failed; `transient` says whether the same request may succeed."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        retry_after: float | None = None,
        errcode: str | None = None,
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after
        self.errcode = errcode


@dataclass(frozen=True)
class IncomingMessage:
    """A text message in a served room from someone other than the bot."""

    room_id: str
    sender: str
    event_id: str
    body: str
    server_ts: int
    thread_root: str | None


@dataclass(frozen=True)
class IncomingReaction:
    """An m.reaction in a served room from someone other than the bot."""

    room_id: str
    sender: str
    event_id: str
    reacts_to: str
    key: str
    server_ts: int


Incoming = IncomingMessage | IncomingReaction


def new_txn_id() -> str:
    """A fresh transaction id; stored by callers that must survive a restart."""
    return f"ib-{int(time.time() * 1000)}-{secrets.token_hex(6)}"


def _raise_for(resp: Any, what: str) -> None:
    if isinstance(resp, ErrorResponse):
        errcode = resp.status_code if isinstance(resp.status_code, str) else None
        retry_after = (resp.retry_after_ms or 0) / 1000 or None
        transient = errcode not in PERMANENT_ERRCODES
        raise MatrixError(
            f"homeserver refused {what}: {errcode or 'error'} {resp.message or ''}".strip(),
            transient=transient,
            retry_after=retry_after,
            errcode=errcode,
        )


class Transport:
    """The bot's one Matrix connection."""

    def __init__(self, cfg: MatrixConfig, store: Store, metrics: Metrics, health: Health) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.health = health
        self.user_id = cfg.user_id
        self.served_rooms: set[str] = set()
        self.room_ids: dict[str, str] = {}  # configured id or alias -> room id
        self.client = AsyncClient(
            cfg.homeserver,
            cfg.user_id,
            config=AsyncClientConfig(
                max_limit_exceeded=0,
                max_timeouts=0,
                request_timeout=cfg.request_timeout_s,
                store_sync_tokens=False,
                encryption_enabled=False,
            ),
        )
        self.started_ms = int(time.time() * 1000)
        self.display_name: str | None = None

    async def close(self) -> None:
        """Close the HTTP session."""
        await self.client.close()

    # --- connecting ------------------------------------------------------------------------
    async def connect(self) -> None:
        """Log in and join the configured rooms, retrying with backoff while the server is down."""
        delay = Backoff(1.0, self.cfg.max_backoff_s)
        while True:
            try:
                await self._login()
                await self._join_rooms()
                self.health.set_ok("connected")
                return
            except (MatrixError, aiohttp.ClientError, TimeoutError) as exc:
                wait = delay.next()
                reason = f"cannot connect to {self.cfg.homeserver}: {_describe(exc)}"
                self.health.set_failing(reason)
                self.metrics.errors.labels("connect").inc()
                log.warning("%s; retrying in %.1f s", reason, wait)
                await asyncio.sleep(wait)

    async def _login(self) -> None:
        key = f"matrix.session:{self.cfg.homeserver}:{self.cfg.user_id}"
        if self.cfg.access_token is not None:
            self.client.access_token = self.cfg.access_token.get_secret_value()
        else:
            saved = self.store.get_json(key)
            if saved:
                self.client.access_token = saved["access_token"]
                self.client.device_id = saved["device_id"]
        if self.client.access_token:
            resp = await self.client.whoami()
            if isinstance(resp, WhoamiResponse):
                if resp.user_id != self.cfg.user_id:
                    raise MatrixError(
                        f"the access token belongs to {resp.user_id}, not {self.cfg.user_id}",
                        transient=False,
                    )
                self.client.user_id = resp.user_id
                self.client.device_id = resp.device_id or self.client.device_id
                return
            if self.cfg.password is None or getattr(resp, "status_code", "") != "M_UNKNOWN_TOKEN":
                _raise_for(resp, "the access token")
        assert self.cfg.password is not None
        login = await self.client.login(
            password=self.cfg.password.get_secret_value(), device_name=self.cfg.device_name
        )
        if not isinstance(login, LoginResponse):
            _raise_for(login, "the password login")
            raise MatrixError("login failed", transient=False)
        # Keep the device: its transaction ids deduplicate retries across restarts.
        self.store.put_json(key, {"access_token": login.access_token, "device_id": login.device_id})
        log.info("logged in as %s (device %s)", login.user_id, login.device_id)

    async def _join_rooms(self) -> None:
        for room in self.cfg.rooms:
            resp = await self.client.join(room)
            if isinstance(resp, JoinResponse):
                self.served_rooms.add(resp.room_id)
                self.room_ids[room] = resp.room_id
            else:
                _raise_for(resp, f"joining {room}")

    # --- syncing ---------------------------------------------------------------------------
    def _sync_filter(self) -> dict[str, Any]:
        return {
            "presence": {"not_types": ["*"]},
            "account_data": {"not_types": ["*"]},
            "room": {
                "rooms": sorted(self.served_rooms),
                # Our own events are never commands; not receiving them spares parsing our own
                # output (an alert storm or a deploy log) a second time.
                "timeline": {"limit": 50, "not_senders": [self.user_id]},
                "state": {"lazy_load_members": True},
                "ephemeral": {"not_types": ["*"]},
                "account_data": {"not_types": ["*"]},
            },
        }

    async def sync_forever(self, on_message: Callable[[Incoming], None]) -> None:
        """Long-poll the homeserver and hand each new command-like message to `on_message`.

        Events sent before this process started are never handed on, so a restart does not
        replay commands; the sync token is stored after each batch.
        """
        since = self.store.get("matrix.sync_token")
        caught_up = False
        delay = Backoff(1.0, self.cfg.max_backoff_s)
        sync_filter = self._sync_filter()
        while True:
            started = time.monotonic()
            try:
                resp = await self.client.sync(
                    timeout=int(self.cfg.sync_timeout_s * 1000) if caught_up else 0,
                    since=since,
                    sync_filter=sync_filter,
                    # The first sync after start needs the rooms' full state (power levels).
                    full_state=not caught_up and since is not None,
                )
                if not isinstance(resp, SyncResponse):
                    _raise_for(resp, "sync")
                    raise MatrixError("unexpected sync response", transient=True)
            except (MatrixError, aiohttp.ClientError, TimeoutError) as exc:
                if isinstance(exc, MatrixError) and exc.errcode == "M_UNKNOWN_TOKEN":
                    await self._relogin_or_wait(exc)
                    continue
                retry_after = exc.retry_after if isinstance(exc, MatrixError) else None
                wait = retry_after or delay.next()
                reason = f"sync with {self.cfg.homeserver} failing: {_describe(exc)}"
                self.health.set_failing(reason)
                self.metrics.errors.labels("sync").inc()
                log.warning("%s; retrying in %.1f s", reason, wait)
                await asyncio.sleep(wait)
                continue
            delay.reset()
            self.metrics.sync_seconds.observe(time.monotonic() - started)
            for room_id in self._handle_sync(resp, on_message, caught_up):
                log.info("invited to served room %s; joining", room_id)
                joined = await self.client.join(room_id)
                if isinstance(joined, JoinResponse):
                    self.served_rooms.add(joined.room_id)
                    sync_filter = self._sync_filter()
            since = resp.next_batch
            self.store.put("matrix.sync_token", since)
            if not caught_up:
                self._warn_encrypted()
            caught_up = True
            self.health.set_ok("syncing")

    async def _relogin_or_wait(self, exc: MatrixError) -> None:
        reason = f"the homeserver rejected our token ({exc}); " + (
            "logging in again" if self.cfg.password else "fix matrix.access_token"
        )
        self.health.set_failing(reason)
        log.error("%s", reason)
        if self.cfg.password is not None and self.cfg.access_token is None:
            self.client.access_token = ""
            self.store.execute("DELETE FROM kv WHERE key LIKE 'matrix.session:%'")
            await self.connect()
        else:
            await asyncio.sleep(self.cfg.max_backoff_s)

    def _handle_sync(
        self, resp: SyncResponse, on_message: Callable[[Incoming], None], caught_up: bool
    ) -> list[str]:
        """Hand on new messages; returns the served rooms we were invited back into."""
        invites = [r for r in resp.rooms.invite if r in self.served_rooms or r in self.cfg.rooms]
        now_ms = int(time.time() * 1000)
        for room_id, info in resp.rooms.join.items():
            if room_id not in self.served_rooms:
                continue
            for event in info.timeline.events:
                if not isinstance(event, RoomMessageText | ReactionEvent):  # e.g. notices
                    continue
                if event.sender == self.user_id:
                    continue
                if event.server_timestamp < self.started_ms and not caught_up:
                    log.debug("skipping %s: sent before this start", event.event_id)
                    continue
                if isinstance(event, ReactionEvent):
                    on_message(
                        IncomingReaction(
                            room_id=room_id,
                            sender=event.sender,
                            event_id=event.event_id,
                            reacts_to=event.reacts_to,
                            key=event.key,
                            server_ts=event.server_timestamp,
                        )
                    )
                    continue
                if _is_edit(event.source):
                    continue
                self.metrics.sync_lag.set(max(0, now_ms - event.server_timestamp) / 1000)
                on_message(
                    IncomingMessage(
                        room_id=room_id,
                        sender=event.sender,
                        event_id=event.event_id,
                        body=event.body,
                        server_ts=event.server_timestamp,
                        thread_root=_thread_root(event.source),
                    )
                )
        return invites

    def _warn_encrypted(self) -> None:
        for room_id in sorted(self.served_rooms):
            room = self.client.rooms.get(room_id)
            if room is not None and room.encrypted:
                # nio here runs without olm: commands in such a room arrive as unreadable
                # m.room.encrypted events, and our notices would go out unencrypted.
                log.error(
                    "room %s is end-to-end encrypted; infrabot does not support E2EE, so it "
                    "cannot read commands there; use an unencrypted room",
                    room_id,
                )

    def resolve_room(self, room: str) -> str:
        """The room id for a configured room id or alias (after `connect`)."""
        return self.room_ids.get(room, room)

    def power_level(self, room_id: str, user_id: str) -> int:
        """The user's power level in a served room, from the state the sync keeps."""
        room = self.client.rooms.get(room_id)
        if room is None:
            return 0
        return int(room.power_levels.get_user_level(user_id))

    # --- sending ---------------------------------------------------------------------------
    async def send_event(
        self, room_id: str, event_type: str, content: dict[str, Any], txn_id: str
    ) -> str:
        """One attempt to send an event; returns its event id or raises MatrixError."""
        try:
            resp = await self.client.room_send(room_id, event_type, content, tx_id=txn_id)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MatrixError(
                f"cannot reach the homeserver: {_describe(exc)}", transient=True
            ) from exc
        if not isinstance(resp, RoomSendResponse):
            _raise_for(resp, "the message")
            raise MatrixError("unexpected send response", transient=True)
        self.metrics.messages_sent.inc()
        return str(resp.event_id)

    async def send(
        self,
        room_id: str,
        content: dict[str, Any],
        *,
        event_type: str = "m.room.message",
        txn_id: str | None = None,
        attempts: int = 6,
    ) -> str:
        """Send with bounded retries of transient failures, always with the same txn id."""
        txn_id = txn_id or new_txn_id()
        delay = Backoff(0.5, 30)
        for attempt in range(1, attempts + 1):
            try:
                return await self.send_event(room_id, event_type, content, txn_id)
            except MatrixError as exc:
                if not exc.transient or attempt == attempts:
                    raise
                wait = exc.retry_after or delay.next()
                log.warning(
                    "send to %s failed (%s); retry %d in %.1f s", room_id, exc, attempt, wait
                )
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def upload(self, data: bytes, content_type: str, filename: str) -> str:
        """Upload media; returns its mxc:// URI."""
        try:
            async with asyncio.timeout(self.cfg.request_timeout_s * 3):
                resp, _keys = await self.client.upload(
                    io.BytesIO(data),
                    content_type=content_type,
                    filename=filename,
                    filesize=len(data),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MatrixError(f"upload failed: {_describe(exc)}", transient=True) from exc
        if not isinstance(resp, UploadResponse):
            _raise_for(resp, "the upload")
            raise MatrixError("unexpected upload response", transient=True)
        return str(resp.content_uri)


def _is_edit(source: dict[str, Any]) -> bool:
    rel = source.get("content", {}).get("m.relates_to") or {}
    return bool(rel.get("rel_type") == "m.replace")


def _thread_root(source: dict[str, Any]) -> str | None:
    rel = source.get("content", {}).get("m.relates_to") or {}
    if rel.get("rel_type") == "m.thread":
        root = rel.get("event_id")
        return str(root) if root else None
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text
