"""From accepted notification to committed room message: group commit and decisions applied.

Webhooks that arrive together (in one loop turn, or during the previous batch's commit) are
committed in one transaction (each in its own savepoint), so a storm costs one commit per batch
rather than per webhook, and every webhook is still answered only after its message is in the
outbox. What each notification does is decided by
`commands.alerts.rules.decide`; where a new message goes, by `commands.alerts.packing`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot import messages
from bot.clock import Clock
from bot.mentions import NOBODY, Mentions
from bot.messages import human_duration
from bot.outbox import Outbox, ref
from bot.store import Store
from commands.alerts import db
from commands.alerts.config import AlertsConfig
from commands.alerts.packing import Packer, group_content
from commands.alerts.payload import Notification
from commands.alerts.render import Renderer, group_title, with_reminder
from commands.alerts.rules import Drop, Edit, Post, Previous, Result, decide, learn
from commands.alerts.silencing import encode_plan, group_matchers

log = logging.getLogger(__name__)
# A resolved group's row is kept this long: its HA twin's copy must find it to be dropped.
KEEP_CLOSED = timedelta(days=7)
PRUNE_EVERY = timedelta(hours=1)


@dataclass
class _Pending:
    rooms: list[str]
    notification: Notification
    done: asyncio.Future[list[str]]


class Intake:
    """Records notifications in batches; `submit` returns once its batch is committed."""

    def __init__(
        self,
        cfg: AlertsConfig,
        store: Store,
        outbox: Outbox,
        clock: Clock,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.outbox = outbox
        self.clock = clock
        self.packer = Packer(outbox, self._render)
        self._queue: list[_Pending] = []
        # One batch at a time, in order: a store that really awaits (PostgreSQL) lets the
        # next webhooks arrive during a commit; they wait here and form the next batch.
        self._flush_lock = asyncio.Lock()
        self._flushes: set[asyncio.Task[None]] = set()
        self._next_prune: datetime | None = None

    @functools.cached_property
    def renderer(self) -> Renderer:
        """The configured templates, compiled on the first notification (not at start-up)."""
        return Renderer(self.cfg.templates.text, self.cfg.templates.html)

    async def submit(self, rooms: list[str], n: Notification) -> list[str]:
        """Queue the notification for its rooms; returns what was done in each."""
        loop = asyncio.get_running_loop()
        item = _Pending(rooms, n, loop.create_future())
        self._queue.append(item)
        if len(self._queue) == 1:
            # Handlers made ready by the same loop iteration join this batch.
            task = loop.create_task(self._flush())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        return await item.done

    async def _flush(self) -> None:
        async with self._flush_lock:
            await self._flush_batch()

    async def _flush_batch(self) -> None:
        batch, self._queue = self._queue, []
        outcomes: list[list[str] | BaseException] = []
        try:
            async with self.store.transaction():
                for item in batch:
                    try:
                        async with self.store.savepoint():
                            outcomes.append(
                                [await self.record(room, item.notification) for room in item.rooms]
                            )
                    except Exception as exc:
                        log.exception("could not record %s", item.notification.groupKey[:80])
                        outcomes.append(exc)
                await self.packer.flush()
                now = self.clock.now()
                if self._next_prune is None or now >= self._next_prune:
                    self._next_prune = now + PRUNE_EVERY
                    await db.prune_closed(self.store, now - KEEP_CLOSED)
        except Exception as exc:
            log.exception("could not commit %d alert notification(s)", len(batch))
            outcomes = [exc] * len(batch)
            # Rolled back: what the drafts say in memory may no longer be in the store.
            self.packer.forget()
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.done.done():
                continue
            if isinstance(outcome, BaseException):
                item.done.set_exception(outcome)
            else:
                item.done.set_result(outcome)

    async def _previous(self, row: db.GroupRow | None) -> Previous | None:
        if row is None:
            return None
        waiting = await self.packer.waiting(row.room_id, row.outbox_id, row.group_key)
        return Previous(
            open=row.open,
            digest=row.digest,
            created_at=row.created_at,
            updated_at=row.updated_at,
            shared=row.in_digest,
            unsent=waiting is not None,
            pings=waiting.pings if waiting is not None else NOBODY,
            known=_known(row.known),
        )

    async def record(self, room_id: str, n: Notification) -> str:
        """Apply the rules' decision for the notification in one room; returns what was done."""
        now = self.clock.now()
        row = await db.newest_group(self.store, room_id, n.groupKey)
        decision = decide(await self._previous(row), n, self.cfg, now)
        if isinstance(decision, Drop):
            return decision.result
        # Carried across messages and across a re-firing: an older copy may follow either.
        known = learn(
            _known(row.known) if row else {}, n, timedelta(seconds=self.cfg.dedupe_window_s), now
        )
        state = db.GroupState(
            digest=n.state_digest(),
            status=n.status,
            alerts=len(n.alerts),
            open=decision.open,
            silence=encode_plan(group_matchers(n)),
            known=json.dumps(known, sort_keys=True),
        )
        if isinstance(decision, Post):
            return await self._post(room_id, n, decision, state, row, now)
        assert isinstance(decision, Edit) and row is not None  # an edit needs a message
        target = ref(row.outbox_id)
        text, html = self._render(n, NOBODY, False)
        await self.outbox.post(
            room_id,
            messages.edit(group_content(text, html, NOBODY), target),
            coalesce_key=f"alerts:edit:{row.id}",
        )
        if decision.lasted is not None:
            lasted = human_duration(decision.lasted.total_seconds())
            reply = f"✅ resolved: {group_title(n)} ({len(n.alerts)} alert(s), open for {lasted})"
            await self.outbox.post(room_id, messages.in_thread(messages.notice(reply), target))
        await db.update_group(self.store, row.id, state, now)
        return decision.result

    async def _post(
        self,
        room_id: str,
        n: Notification,
        decision: Post,
        state: db.GroupState,
        row: db.GroupRow | None,
        now: datetime,
    ) -> Result | str:
        placed = await self.packer.place(
            room_id, n, decision.pings, decision.reminder, self.cfg.digest_max_groups
        )
        if placed.became_shared:
            # Its first group gets its own message when it next changes, as every later one.
            await db.mark_shared(self.store, placed.outbox_id)
        if row is not None and decision.replaces:
            await db.delete_group(self.store, row.id)
        await db.open_group(
            self.store,
            room_id,
            n.groupKey,
            placed.outbox_id,
            state,
            created_at=decision.opened_at,
            updated_at=now,
            shared=placed.shared,
            labels=json.dumps(n.groupLabels or n.commonLabels),
        )
        if decision.result == "posted" and placed.joined:
            return "coalesced"
        return decision.result

    def _render(self, n: Notification, pings: Mentions, repeat: bool) -> tuple[str, str]:
        text, html = self.renderer.render(n, pings, self.clock.now())
        return with_reminder(text, html) if repeat else (text, html)


def _known(raw: str) -> dict[str, float | None]:
    """A row's `known` column (written by `Intake.record` from rules.learn)."""
    data = json.loads(raw)
    return {str(k): None if v is None else float(v) for k, v in data.items()}
