"""A person in the room, for tests, the demo's self-check and benchmarks: send, then wait to see."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nio import AsyncClient, AsyncClientConfig, RoomSendResponse, SyncResponse


@dataclass(frozen=True)
class SeenEvent:
    """An event as a room member saw it."""

    room_id: str
    source: dict[str, Any]

    @property
    def sender(self) -> str:
        """Who sent it."""
        return str(self.source.get("sender", ""))

    @property
    def content(self) -> dict[str, Any]:
        """Its content."""
        content: dict[str, Any] = self.source.get("content", {})
        return content

    @property
    def body(self) -> str:
        """content.body, or ''."""
        return str(self.content.get("body", ""))

    @property
    def event_id(self) -> str:
        """Its event id."""
        return str(self.source.get("event_id", ""))

    def replies_to(self, event_id: str) -> bool:
        """Whether it is a reply (or threaded reply) to event_id."""
        rel = self.content.get("m.relates_to") or {}
        return bool((rel.get("m.in_reply_to") or {}).get("event_id") == event_id)


class RoomUser:
    """A logged-in user that long-polls in the background and records what it sees."""

    def __init__(self, homeserver: str, user_id: str, access_token: str) -> None:
        self.client = AsyncClient(
            homeserver, user_id, config=AsyncClientConfig(max_timeouts=0, request_timeout=30)
        )
        self.client.access_token = access_token
        self.client.user_id = user_id
        self.seen: list[SeenEvent] = []
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._since_ms = 0

    async def start(self) -> None:
        """Do an initial sync (history is not recorded), then keep syncing in the background."""
        # A unique filter: Synapse caches identical initial syncs for minutes, and a cached
        # answer would carry an old token that replays history.
        nonce = f"x.infrabot.nonce.{secrets.token_hex(4)}"
        sync_filter = {"room": {"timeline": {"limit": 1, "not_types": [nonce]}}}
        resp = await self.client.sync(timeout=0, sync_filter=sync_filter)
        if not isinstance(resp, SyncResponse):
            raise RuntimeError(f"initial sync failed: {resp}")
        self._since_ms = int(time.time() * 1000)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                # A member must see every event: the default limit of 10 would skip some
                # of a burst as a "limited" timeline.
                resp = await self.client.sync(
                    timeout=30000, sync_filter={"room": {"timeline": {"limit": 500}}}
                )
            except Exception:  # the homeserver may be restarted by a test
                await asyncio.sleep(0.2)
                continue
            if not isinstance(resp, SyncResponse):
                await asyncio.sleep(0.2)
                continue
            new = [
                SeenEvent(room_id, event.source)
                for room_id, info in resp.rooms.join.items()
                for event in info.timeline.events
                # Only what happens from now on; earlier history is not this user's to see.
                if event.server_timestamp >= self._since_ms
            ]
            if new:
                async with self._changed:
                    self.seen.extend(new)
                    self._changed.notify_all()

    async def close(self) -> None:
        """Stop syncing and close the session."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.close()

    async def send(self, room_id: str, body: str, content: dict[str, Any] | None = None) -> str:
        """Send an m.text message; returns its event id."""
        payload = content or {"msgtype": "m.text", "body": body}
        resp = await self.client.room_send(room_id, "m.room.message", payload)
        if not isinstance(resp, RoomSendResponse):
            raise RuntimeError(f"send failed: {resp}")
        return str(resp.event_id)

    def mark(self) -> int:
        """A position in what was seen; pass it to wait_for to look only at later events."""
        return len(self.seen)

    async def wait_for(
        self, pred: Callable[[SeenEvent], bool], timeout: float = 10, after: int = 0
    ) -> SeenEvent:
        """The first event seen (from position `after`) that matches, or TimeoutError."""
        async with asyncio.timeout(timeout), self._changed:
            while True:
                for event in self.seen[after:]:
                    if pred(event):
                        return event
                await self._changed.wait()

    async def reply_to(self, event_id: str, sender: str, timeout: float = 10) -> SeenEvent:
        """Wait for `sender`'s reply to event_id."""
        return await self.wait_for(
            lambda e: e.sender == sender and e.replies_to(event_id), timeout=timeout
        )

    async def ask(self, room_id: str, body: str, bot: str, timeout: float = 10) -> SeenEvent:
        """Send a command and wait for the bot's reply to it."""
        event_id = await self.send(room_id, body)
        return await self.reply_to(event_id, bot, timeout)
