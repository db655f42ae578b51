"""Matrix transport on matrix-nio: error responses become exceptions, the sync loop backs off.

nio's own retry loops are switched off (max_timeouts/max_limit_exceeded = 0) so that every
retry here is explicit, bounded, logged and reuses the same transaction id. Every request runs
under a client-side deadline: nio applies none to a sync with `timeout=0` or `full_state`, and a
homeserver that accepts connections but never answers must not stall the bot.

No command runs late. Each served room has a horizon (ms, the bot's clock): the moment from
which the bot could see it continuously — this process's start, the bot's (re)join, or the end
of a failed sync attempt. An event sent before its room's horizon is handed on marked `late`
(never to be acted on) unless the bot had already seen that part of the room's timeline
(`seen_until`, stored per room), so a re-join's replayed history is neither run nor reported
twice. A gappy (`limited`) timeline is filled from /messages first, so no event is skipped
unseen. Timestamps compare the server's `origin_server_ts` with the bot's clock: both machines
are assumed to keep NTP time.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    Event,
    JoinResponse,
    LoginResponse,
    ReactionEvent,
    RoomMessagesResponse,
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
from bot.store import Store, StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# A gap in a `limited` timeline is filled from /messages up to this many events per room.
GAP_FILL_MAX_EVENTS = 500

# Errors that retrying will not fix, for an answer without an HTTP status to judge by.
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
    """A homeserver request failed; `transient` says whether the same request may succeed.

    `status` is the HTTP status when the server answered at all (None: timeout, network).
    """

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        retry_after: float | None = None,
        errcode: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after
        self.errcode = errcode
        self.status = status


def is_transient(status: int | None, errcode: str | None) -> bool:
    """Whether the same request may succeed later (Matrix spec: "Standard error response").

    By HTTP status class first: 429 and 408 are waits, any other 4xx is a refusal of this
    request for good, 5xx a server in trouble. Without a status, by errcode.
    """
    if errcode == "M_LIMIT_EXCEEDED" or status in (408, 429):
        return True
    if status is not None:
        return not 400 <= status < 500
    return errcode not in PERMANENT_ERRCODES


@dataclass(frozen=True)
class IncomingMessage:
    """A text message in a served room from someone other than the bot."""

    room_id: str
    sender: str
    event_id: str
    body: str
    server_ts: int
    thread_root: str | None
    late: bool = False  # sent while the bot could not see the room: never acted on


@dataclass(frozen=True)
class IncomingReaction:
    """An m.reaction in a served room from someone other than the bot."""

    room_id: str
    sender: str
    event_id: str
    reacts_to: str
    key: str
    server_ts: int
    late: bool = False  # sent while the bot could not see the room: never acted on


Incoming = IncomingMessage | IncomingReaction


def new_txn_id() -> str:
    """A fresh transaction id; stored by callers that must survive a restart."""
    return f"ib-{int(time.time() * 1000)}-{secrets.token_hex(6)}"


def _raise_for(resp: Any, what: str) -> None:
    if isinstance(resp, ErrorResponse):
        errcode = resp.status_code if isinstance(resp.status_code, str) else None
        retry_after = (resp.retry_after_ms or 0) / 1000 or None
        transport = getattr(resp, "transport_response", None)
        status = getattr(transport, "status", None)
        status = status if isinstance(status, int) else None
        raise MatrixError(
            f"homeserver refused {what}: {errcode or status or 'error'} "
            f"{resp.message or ''}".strip(),
            transient=is_transient(status, errcode),
            retry_after=retry_after,
            errcode=errcode,
            status=status,
        )


class Transport:
    """The bot's one Matrix connection.

    `clock` gives the Unix seconds that the homeserver's `origin_server_ts` are compared
    with (horizons, lateness, lag). It is the machine's real clock, not the runtime's
    settable one: a test that sets the runtime's clock to another day still talks to a
    homeserver that stamps events with today, and its commands must not all count as late.
    """

    def __init__(
        self,
        cfg: MatrixConfig,
        store: Store,
        metrics: Metrics,
        health: Health,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.health = health
        self.clock = clock
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
        self.started_ms = self.now_ms()
        self.display_name: str | None = None
        # Per room: the moment (ms) from which the bot could see it, i.e. its (re)join.
        self._joined_ms: dict[str, int] = {}
        # The end of the last failed sync attempt: what was sent before it, the bot missed.
        self._blind_until_ms = self.started_ms
        self._seen_ms: dict[str, int] = {}
        self._since: str | None = None  # the newest sync token, stored or not
        # Served rooms the bot was invited to and has not joined yet (a join may fail for a while).
        self._invited: set[str] = set()

    def now_ms(self) -> int:
        """The bot's time in ms, as compared with the homeserver's event timestamps."""
        return int(self.clock() * 1000)

    async def close(self) -> None:
        """Close the HTTP session."""
        await self.client.close()

    async def _call(self, what: str, request: Awaitable[T], timeout: float | None = None) -> T:
        """Await one nio request under a deadline (default `request_timeout_s`).

        Raises a transient MatrixError when it times out or the network fails.
        """
        limit = self.cfg.request_timeout_s if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                return await request
        except TimeoutError as exc:
            raise MatrixError(f"{what}: no answer within {limit:g} s", transient=True) from exc
        except aiohttp.ClientError as exc:
            raise MatrixError(f"{what}: {_describe(exc)}", transient=True) from exc

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
        key = self._session_key()
        tried: str | None = None  # the stored token, if the homeserver turns it down
        if self.cfg.access_token is not None:
            self.client.access_token = self.cfg.access_token.get_secret_value()
        else:
            saved = await self.store.get_json(key)
            if saved:
                self.client.access_token = tried = saved["access_token"]
                self.client.device_id = saved["device_id"]
        if self.client.access_token:
            resp = await self._call("whoami", self.client.whoami())
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
        login = await self._call(
            "login",
            self.client.login(
                password=self.cfg.password.get_secret_value(), device_name=self.cfg.device_name
            ),
        )
        if not isinstance(login, LoginResponse):
            _raise_for(login, "the password login")
            raise MatrixError("login failed", transient=False)
        # Keep the device: its transaction ids deduplicate retries across restarts and, with
        # two instances, across a failover — but only if both use the same device. Another
        # instance that logged in at the same time and stored its session first wins.
        async with self.store.transaction() as tx:
            current = await tx.get_json(key)
            if current and current["access_token"] != tried:
                winner = current
            else:
                winner = {"access_token": login.access_token, "device_id": login.device_id}
                await tx.put_json(key, winner)
        if winner["access_token"] != login.access_token:
            # Our fresh device is not needed: log it out (best effort) and use the stored one.
            with contextlib.suppress(MatrixError):
                await self._call("logout", self.client.logout())
            self.client.access_token = winner["access_token"]
        self.client.user_id = login.user_id
        self.client.device_id = winner["device_id"]
        log.info("logged in as %s (device %s)", login.user_id, winner["device_id"])

    def _session_key(self) -> str:
        return f"matrix.session:{self.cfg.homeserver}:{self.cfg.user_id}"

    async def _join_rooms(self) -> None:
        for room in self.cfg.rooms:
            resp = await self._call(f"joining {room}", self.client.join(room))
            if isinstance(resp, JoinResponse):
                self._serve(resp.room_id)
                self.room_ids[room] = resp.room_id
            else:
                _raise_for(resp, f"joining {room}")

    def _serve(self, room_id: str) -> None:
        """The bot has just joined `room_id`: anything sent there before now is late."""
        self.served_rooms.add(room_id)
        self._joined_ms[room_id] = self.now_ms()

    def resume(self) -> None:
        """This instance (again) becomes the one that syncs, e.g. after a failover.

        What was sent before now is late unless the previous leader saw it (its `seen_until`,
        shared through the store and read afresh): as after a restart, nothing runs late.
        """
        self._blind_until_ms = self.now_ms()
        self._seen_ms.clear()

    def horizon(self, room_id: str) -> int:
        """The moment (ms) from which the bot has seen `room_id` without a gap."""
        return max(self.started_ms, self._joined_ms.get(room_id, 0), self._blind_until_ms)

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

    async def sync_forever(self, on_events: Callable[[list[Incoming]], Awaitable[None]]) -> None:
        """Long-poll the homeserver and hand each batch of messages and reactions on.

        Events the bot could not see when they were sent (before this start, before it
        (re)joined the room, or during a failed sync) are handed on with `late=True`; the
        sync token is stored after each batch.
        """
        # After a crash of this loop (e.g. the store down) go on from the token in memory: the
        # stored one may be older, and its batches were handed on already.
        since = self._since or await self.store.get("matrix.sync_token")
        caught_up = False
        delay = Backoff(1.0, self.cfg.max_backoff_s)
        sync_filter = self._sync_filter()
        while True:
            started = time.monotonic()
            long_poll = self.cfg.sync_timeout_s if caught_up else 0
            try:
                resp = await self._call(
                    "sync",
                    self.client.sync(
                        timeout=int(long_poll * 1000),
                        since=since,
                        sync_filter=sync_filter,
                        # The first sync after start needs the rooms' full state (power levels).
                        full_state=not caught_up and since is not None,
                    ),
                    # nio itself sets no deadline on a sync with timeout 0 or full_state; the
                    # first one (all rooms' state) may take longer than a plain request.
                    long_poll + self.cfg.request_timeout_s
                    if caught_up
                    else 3 * self.cfg.request_timeout_s,
                )
                if not isinstance(resp, SyncResponse):
                    _raise_for(resp, "sync")
                    raise MatrixError("unexpected sync response", transient=True)
                events = await self._incoming(resp, since)
            except (MatrixError, aiohttp.ClientError, TimeoutError) as exc:
                self._blind_until_ms = self.now_ms()
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
            except StoreUnavailable as exc:
                # The batch is fetched again from the same token once the store answers.
                wait = delay.next()
                self.health.set_failing(f"state store unavailable: {exc}")
                self.metrics.errors.labels("store").inc()
                log.warning("cannot record the sync batch (%s); retrying in %.1f s", exc, wait)
                await asyncio.sleep(wait)
                continue
            delay.reset()
            self.metrics.sync_seconds.observe(time.monotonic() - started)
            if events:
                await on_events(events)
            for room_id in resp.rooms.invite:
                if room_id in self.served_rooms or room_id in self.cfg.rooms:
                    log.info("invited to served room %s; joining", room_id)
                    self._invited.add(room_id)
            if self._invited and await self._join_invited():
                sync_filter = self._sync_filter()
            since = self._since = resp.next_batch
            stored = await self._store_token(since)
            if not caught_up:
                self._warn_encrypted()
            caught_up = True
            if stored:
                self.health.set_ok("syncing")

    async def _store_token(self, since: str) -> bool:
        """Store the sync token; False (logged, counted, health failing) if the store is down.

        The batch was handed on and the token stays in memory: the next sync goes on from it,
        and the next token stored covers this one.
        """
        try:
            await self.store.put("matrix.sync_token", since)
        except StoreUnavailable as exc:
            self.health.set_failing(f"cannot store the sync token: {exc}")
            self.metrics.errors.labels("sync").inc()
            log.warning("cannot store the sync token (%s); keeping it in memory", exc)
            return False
        return True

    async def _join_invited(self) -> bool:
        """Join the served rooms the bot was invited to; True if it joined any.

        A sync reports an invite once: a join that fails for a while (a homeserver hiccup) stays
        pending and is tried again after each sync, or the bot would stay out until a restart.
        A refusal for good (the invite withdrawn, the bot banned) is logged and dropped.
        """
        joined_any = False
        for room_id in sorted(self._invited):
            try:
                resp = await self._call(f"joining {room_id}", self.client.join(room_id))
                if not isinstance(resp, JoinResponse):
                    _raise_for(resp, f"joining {room_id}")
                    raise MatrixError(f"joining {room_id}: unexpected answer", transient=True)
            except MatrixError as exc:
                if exc.transient:
                    log.warning("could not join %s yet: %s; trying again", room_id, exc)
                else:
                    log.error("could not join %s: %s; giving up until invited again", room_id, exc)
                    self._invited.discard(room_id)
                continue
            self._invited.discard(room_id)
            self._serve(resp.room_id)
            joined_any = True
        return joined_any

    async def _relogin_or_wait(self, exc: MatrixError) -> None:
        reason = f"the homeserver rejected our token ({exc}); " + (
            "logging in again" if self.cfg.password else "fix matrix.access_token"
        )
        self.health.set_failing(reason)
        log.error("%s", reason)
        if self.cfg.password is not None and self.cfg.access_token is None:
            # Forget the stored session only if it is the one refused: another instance may
            # have logged in again already, and this one then takes that session.
            refused = self.client.access_token
            async with self.store.transaction() as tx:
                saved = await tx.get_json(self._session_key())
                if saved and saved["access_token"] == refused:
                    await tx.delete_prefix(self._session_key())
            self.client.access_token = ""
            await self.connect()
        else:
            await asyncio.sleep(self.cfg.max_backoff_s)

    async def _seen_until(self, room_id: str) -> int:
        if room_id not in self._seen_ms:
            self._seen_ms[room_id] = int(await self.store.get(f"matrix.seen_until:{room_id}") or 0)
        return self._seen_ms[room_id]

    async def _mark_seen(self, room_id: str, events: list[Event]) -> None:
        newest = max((e.server_timestamp for e in events), default=0)
        if newest > await self._seen_until(room_id):
            self._seen_ms[room_id] = newest
            await self.store.put(f"matrix.seen_until:{room_id}", str(newest))

    async def _incoming(self, resp: SyncResponse, since: str | None) -> list[Incoming]:
        """The batch's messages and reactions in served rooms, each marked late or not."""
        out: list[Incoming] = []
        now_ms = self.now_ms()
        for room_id, info in resp.rooms.join.items():
            if room_id not in self.served_rooms:
                continue
            events = list(info.timeline.events)
            if info.timeline.limited and since is not None and info.timeline.prev_batch:
                events = await self._fill_gap(room_id, info.timeline.prev_batch, since) + events
            horizon, seen = self.horizon(room_id), await self._seen_until(room_id)
            for event in events:
                late = event.server_timestamp < horizon
                if late and event.server_timestamp <= seen:
                    continue  # acted on or reported when the bot saw it the first time
                incoming = self._to_incoming(room_id, event, late)
                if incoming is None:
                    continue
                if isinstance(incoming, IncomingMessage) and not late:
                    self.metrics.sync_lag.set(max(0, now_ms - event.server_timestamp) / 1000)
                if late:
                    log.info(
                        "not acting on %s in %s: sent before the bot could see the room",
                        event.event_id,
                        room_id,
                    )
                out.append(incoming)
            await self._mark_seen(room_id, events)
        for room_id, left in resp.rooms.leave.items():
            if room_id in self.served_rooms:
                # What the bot saw up to losing the room (a kick) is not news on its return.
                await self._mark_seen(room_id, list(left.timeline.events))
        return out

    async def _fill_gap(self, room_id: str, prev_batch: str, since: str) -> list[Event]:
        """The events a `limited` timeline left out, oldest first (at most GAP_FILL_MAX_EVENTS).

        Read from /messages backwards from the timeline's `prev_batch` to the previous sync
        token; if it cannot be read, the gap is logged and skipped.
        """
        got: list[Event] = []
        start = prev_batch
        try:
            while len(got) < GAP_FILL_MAX_EVENTS:
                resp = await self._call(
                    f"reading the history of {room_id}",
                    self.client.room_messages(
                        room_id,
                        start=start,
                        end=since,
                        limit=100,
                        message_filter={"not_senders": [self.user_id]},
                    ),
                )
                if not isinstance(resp, RoomMessagesResponse):
                    _raise_for(resp, f"reading the history of {room_id}")
                    break
                got.extend(e for e in resp.chunk if isinstance(e, Event))
                if not resp.chunk or not resp.end or resp.end == start:
                    break
                start = resp.end
        except MatrixError as exc:
            log.warning("a gap in %s's timeline could not be read: %s", room_id, exc)
        log.info("read %d event(s) missing from a limited timeline of %s", len(got), room_id)
        return list(reversed(got))

    def _to_incoming(self, room_id: str, event: Event, late: bool) -> Incoming | None:
        if not isinstance(event, RoomMessageText | ReactionEvent):  # e.g. notices
            return None
        if event.sender == self.user_id:
            return None
        if isinstance(event, ReactionEvent):
            return IncomingReaction(
                room_id=room_id,
                sender=event.sender,
                event_id=event.event_id,
                reacts_to=event.reacts_to,
                key=event.key,
                server_ts=event.server_timestamp,
                late=late,
            )
        if _is_edit(event.source):
            return None
        return IncomingMessage(
            room_id=room_id,
            sender=event.sender,
            event_id=event.event_id,
            body=event.body,
            server_ts=event.server_timestamp,
            thread_root=_thread_root(event.source),
            late=late,
        )

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
        resp = await self._call(
            "sending to the homeserver",
            self.client.room_send(room_id, event_type, content, tx_id=txn_id),
        )
        if not isinstance(resp, RoomSendResponse):
            _raise_for(resp, "the message")
            raise MatrixError("unexpected send response", transient=True)
        self.metrics.messages_sent.inc()
        return str(resp.event_id)

    async def own_reaction(self, room_id: str, event_id: str, key: str) -> str | None:
        """The event id of the bot's `key` reaction to `event_id`, or None if there is none.

        From GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/m.annotation/m.reaction
        (Matrix client-server API v1.3+, "Relationships"); at most a few pages are read.
        """
        base = (
            f"/_matrix/client/v1/rooms/{urllib.parse.quote(room_id, safe='')}/relations/"
            f"{urllib.parse.quote(event_id, safe='')}/m.annotation/m.reaction?limit=100"
        )
        headers = {"Authorization": f"Bearer {self.client.access_token}"}
        token: str | None = None
        for _ in range(5):
            path = base + (f"&from={urllib.parse.quote(token)}" if token else "")
            body = await self._call("reading reactions", self._get_json(path, headers))
            for event in body.get("chunk", []):
                rel = event.get("content", {}).get("m.relates_to", {})
                if event.get("sender") == self.user_id and rel.get("key") == key:
                    return str(event["event_id"])
            token = body.get("next_batch")
            if not token:
                break
        return None

    async def _get_json(self, path: str, headers: dict[str, str]) -> dict[str, Any]:
        resp = await self.client.send("GET", path, headers=headers)
        async with resp:
            if resp.status != 200:
                raise MatrixError(
                    f"homeserver answered {resp.status} to {path.split('?')[0]}",
                    transient=is_transient(resp.status, None),
                    status=resp.status,
                )
            body: dict[str, Any] = await resp.json()
            return body

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
        resp, _keys = await self._call(
            "the upload",
            self.client.upload(
                io.BytesIO(data), content_type=content_type, filename=filename, filesize=len(data)
            ),
            self.cfg.request_timeout_s * 3,
        )
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
