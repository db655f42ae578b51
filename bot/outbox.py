"""The one durable send path: a row is committed first, then delivered with its stored txn id.

Delivery is in order per room; a retry or a restart reuses the transaction id, which the
homeserver deduplicates, so nothing is posted twice and nothing is dropped.

A content value "outbox:N" stands for the event id of row N, filled in at delivery, so an edit
or a threaded reply can be queued before the message it refers to has reached the server.
Rows posted with the same coalesce key replace each other while still pending: under a slow or
rate-limited homeserver only the newest version of an edited message is sent.

One send per room is in flight at a time. Synapse persists a room's events one after another,
so parallel sends to one room only queue inside it (bench/alert_storm.py measured 2 in flight
slower than 1); a burst is better folded into fewer messages by the feature (see `amend`).

A refusal for good never blocks a room: a 4xx other than 429/408 (see `matrix.is_transient`)
gives the row up at once, logged and counted in `infrabot_outbox_refused_total`, and the
room's next rows go on. Only refusals an operator or a new login can fix (M_FORBIDDEN while the
bot is not in the room, a lost token) are tried a few more times first. A reaction the server
already holds (400 M_DUPLICATE_ANNOTATION, e.g. a 👀 sent again after a re-invite) counts as
delivered, with the event id of the reaction that is there.

After a rate-limit refusal, the room's backlog is sent at the pace the server asked for instead
of as fast as answers come: Synapse holds every refusal for half a second, a refused row can no
longer be amended, and a row that waits untried can still take in more of a burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from typing import Any

from bot import outbox_db as db
from bot.backoff import Backoff
from bot.clock import Clock, SystemClock
from bot.matrix import MatrixError, Transport, new_txn_id
from bot.messages import MAX_CONTENT_BYTES, fit
from bot.metrics import Metrics
from bot.outbox_db import FAILED, SENT, OutboxRow
from bot.store import Store, StoreUnavailable
from bot.tasks import TaskOwner

log = logging.getLogger(__name__)

# Refusals for good that an operator inviting the bot back, or a new login, may fix: tried
# this many times (with backoff) before the row is given up; any other is given up at once.
MAX_PERMANENT_ATTEMPTS = 5
WAIT_ON = frozenset({"M_FORBIDDEN", "M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"})
# A reference to a row that will never have an event id.
REF_GONE = "IB_REFERENCE_GONE"
DUPLICATE = "M_DUPLICATE_ANNOTATION"
KEEP_SENT_S = 7 * 86400  # sent rows keep their content a week, then only id → event id
# A pace learnt from one long retry_after must not slow every later message as much: beyond
# this, the next send is simply tried and the server says again.
PACE_MAX_S = 30.0
_REF = re.compile(r"^outbox:(\d+)$")


def _encode(content: dict[str, Any]) -> str:
    """The content as stored, cut to fit one event if it must be."""
    raw = json.dumps(content)
    # ASCII-escaped JSON is never shorter than the UTF-8 the server measures: only then look.
    return raw if len(raw) <= MAX_CONTENT_BYTES else json.dumps(fit(content))


def ref(outbox_id: int) -> str:
    """A placeholder for the event id of outbox row `outbox_id`."""
    return f"outbox:{outbox_id}"


class _NotYetSent(Exception):
    """A referenced row has no event id yet."""


class Outbox:
    """Queue of events to send, backed by the `outbox` table (through bot.outbox_db).

    `clock` dates the rows (and so their pruning); waits between attempts are measured on
    `time.monotonic`, as the homeserver's rate limiter counts real seconds.
    """

    def __init__(
        self, store: Store, transport: Transport, metrics: Metrics, clock: Clock | None = None
    ) -> None:
        self.store = store
        self.transport = transport
        self.metrics = metrics
        self.clock: Clock = clock or SystemClock()
        self._wake = asyncio.Event()
        self._waiters: dict[int, asyncio.Future[str]] = {}
        self._retry_at: dict[str, float] = {}
        self._backoff: dict[str, Backoff] = {}
        self._pace: dict[str, float] = {}  # seconds between sends, learnt from a rate limit
        self._in_flight: set[int] = set()  # being sent, or held (not to be sent yet)
        self._held: set[int] = set()

    async def post(
        self,
        room_id: str,
        content: dict[str, Any],
        event_type: str = "m.room.message",
        coalesce_key: str | None = None,
    ) -> int:
        """Commit an event for delivery; returns its outbox id."""
        async with self.store.transaction():
            if coalesce_key is not None:
                for stale in await db.pending_with_key(self.store, coalesce_key):
                    if stale not in self._in_flight:
                        await db.delete(self.store, stale)
            outbox_id = await db.insert(
                self.store,
                room_id=room_id,
                event_type=event_type,
                content=_encode(content),
                txn_id=new_txn_id(),
                now=self.clock.time(),
                coalesce_key=coalesce_key,
            )
        # Inside a caller's transaction the sender can see the row only once it is committed.
        self.store.after_transaction(self._wake.set)
        return outbox_id

    def wake(self) -> None:
        """Look for rows at once: another instance committed some (bot.leader)."""
        self._wake.set()

    async def amend(self, outbox_id: int, content: dict[str, Any]) -> bool:
        """Replace the content of a row never tried yet; False if too late.

        A row already tried may have reached the server with only its answer lost: its retry
        reuses the transaction id, the server answers with the first event, and an amended
        content would silently never be seen.
        """
        if self._sending(outbox_id):
            return False
        if outbox_id in self._held:
            return await db.amend_untried(self.store, outbox_id, _encode(content))
        # Held until the new content is committed: a store that awaits (PostgreSQL) must not
        # let the sender read the old content in between.
        self.hold(outbox_id)
        try:
            return await db.amend_untried(self.store, outbox_id, _encode(content))
        finally:
            self.store.after_transaction(lambda: self.release(outbox_id))

    async def waiting(self, outbox_id: int) -> bool:
        """Whether the row is queued and was never tried (so `amend` would succeed)."""
        if self._sending(outbox_id):
            return False
        return await db.untried(self.store, outbox_id)

    def hold(self, outbox_id: int) -> bool:
        """Keep a queued row from being sent until `release`; False if it is being sent.

        For a caller that checks `waiting` and later `amend`s across awaits (a batch of
        alerts committed to PostgreSQL): in between, the row must not start sending.
        """
        if self._sending(outbox_id):
            return False
        self._held.add(outbox_id)
        self._in_flight.add(outbox_id)
        return True

    def release(self, outbox_id: int) -> None:
        """Let a held row be sent again (nothing happens if it is not held)."""
        if outbox_id in self._held:
            self._held.discard(outbox_id)
            self._in_flight.discard(outbox_id)
            self._wake.set()

    def _sending(self, outbox_id: int) -> bool:
        return outbox_id in self._in_flight and outbox_id not in self._held

    async def event_id(self, outbox_id: int) -> str | None:
        """The event id of a delivered row, or None."""
        row = await db.get(self.store, outbox_id)
        return None if row is None else row.event_id

    async def row_of(self, event_id: str) -> int | None:
        """The row that was delivered as `event_id`, or None (e.g. not the bot's event)."""
        return await db.id_of_event(self.store, event_id)

    async def _fill_refs(self, value: Any) -> Any:
        if isinstance(value, str):
            match = _REF.match(value)
            if match is None:
                return value
            target = await db.get(self.store, int(match.group(1)))
            if (
                target is None
                or target.state == FAILED
                or (target.state == SENT and target.event_id is None)
            ):
                # What it refers to will never exist (given up, or coalesced away).
                raise MatrixError(
                    f"refers to {value}, which was not delivered",
                    transient=False,
                    errcode=REF_GONE,
                )
            if target.event_id is None:
                raise _NotYetSent(value)
            return target.event_id
        if isinstance(value, dict):
            return {k: await self._fill_refs(v) for k, v in value.items()}
        if isinstance(value, list):
            return [await self._fill_refs(v) for v in value]
        return value

    async def wait_sent(self, outbox_id: int) -> str:
        """Wait until the row is delivered; returns its event id (raises if it was given up)."""
        row = await db.get(self.store, outbox_id)
        if row is not None and row.state == SENT:
            return row.event_id or ""
        if row is not None and row.state == FAILED:
            raise MatrixError(f"message not delivered: {row.last_error}", transient=False)
        fut = self._waiters.get(outbox_id)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._waiters[outbox_id] = fut
        return await asyncio.shield(fut)

    async def send(
        self, room_id: str, content: dict[str, Any], event_type: str = "m.room.message"
    ) -> str:
        """Post and wait for delivery; returns the event id."""
        return await self.wait_sent(await self.post(room_id, content, event_type))

    async def pending(self) -> int:
        """How many rows wait for delivery."""
        return await db.count(self.store, db.PENDING)

    async def failed(self) -> int:
        """How many rows were given up."""
        return await db.count(self.store, FAILED)

    async def _ready(self) -> tuple[list[OutboxRow], list[str]]:
        """Each room's oldest pending row unless it is being sent, and rooms waiting a retry."""
        now = time.monotonic()
        ready, waiting = [], []
        heads = await db.room_heads(self.store)
        for room_id in set(self._pace) - {row.room_id for row in heads}:
            # The backlog is gone, and so is the hurry.
            del self._pace[room_id]
            self._retry_at.pop(room_id, None)
        for row in heads:
            if self._retry_at.get(row.room_id, 0) > now:
                waiting.append(row.room_id)
            elif row.id not in self._in_flight:
                ready.append(row)
        return ready, waiting

    async def prune(self) -> int:
        """Drop the content of rows finished over a week ago; returns how many.

        The rows themselves stay: a later edit (an alert group open for weeks) still needs
        the event id its `outbox:N` placeholder stands for.
        """
        return await db.prune_content(self.store, before=self.clock.time() - KEEP_SENT_S)

    async def run(self) -> None:
        """Deliver forever: per room in order, rooms in parallel, with backoff."""
        next_prune = 0.0
        sending = TaskOwner()
        spawned: set[int] = set()
        store_down = Backoff(0.5, 30)
        try:
            while True:
                # Cleared before looking, so a post or a finished send from here on wakes us.
                self._wake.clear()
                try:
                    if time.monotonic() >= next_prune:
                        await self.prune()
                        next_prune = time.monotonic() + 3600
                    ready, waiting = await self._ready()
                except StoreUnavailable as exc:
                    pause = store_down.next()
                    self.metrics.errors.labels("outbox").inc()
                    log.warning("outbox: %s; looking again in %.1f s", exc, pause)
                    await asyncio.sleep(pause)
                    continue
                store_down.reset()
                for row in ready:
                    # Marked before the first await: from here on nobody may amend or drop it.
                    self._in_flight.add(row.id)
                    spawned.add(row.id)
                    task = sending.spawn(self._deliver(row), f"outbox:{row.id}")
                    task.add_done_callback(lambda _: self._wake.set())
                    task.add_done_callback(
                        lambda t, i=row.id: None if t.cancelled() else spawned.discard(i)  # type: ignore[misc]
                    )
                with contextlib.suppress(StoreUnavailable):  # the gauge waits a turn
                    self.metrics.outbox_pending.set(
                        await self.pending() if ready or waiting or sending else 0
                    )
                wait = min((self._retry_at[r] for r in waiting), default=None)
                try:
                    timeout = None if wait is None else max(0.0, wait - time.monotonic())
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass
        finally:
            await sending.shutdown()
            # A send cancelled before it started (a leader stepping down, bot.leader) never ran
            # its own `finally`: its row would stay "in flight" for the next run and block
            # its room.
            self._in_flight -= spawned

    async def _deliver(self, row: OutboxRow | None) -> None:
        """Send the row, then the room's next ones while they keep succeeding."""
        while row is not None:
            delivered = False
            try:
                delivered = await self._deliver_one(row)
            except Exception:
                # A bug, not the homeserver: keep the row, back off the room, and say so.
                log.exception("outbox message %d: unexpected error; will retry", row.id)
                self.metrics.errors.labels("outbox").inc()
                self._retry_at[row.room_id] = (
                    time.monotonic() + self._backoff_for(row.room_id).next()
                )
            finally:
                self._in_flight.discard(row.id)
            if not delivered or row.room_id in self._pace:
                break  # a paced room's next row is `run`'s, when its time comes
            # Straight on to the next, without a turn through `run`: under load each loop
            # turn costs milliseconds that a burst would otherwise pay per message.
            row = await self._next_in_room(row.room_id)

    async def _next_in_room(self, room_id: str) -> OutboxRow | None:
        """The room's oldest pending row, marked in flight, unless it is being sent already."""
        row = await db.oldest_pending(self.store, room_id)
        if row is None or row.id in self._in_flight:
            return None
        self._in_flight.add(row.id)
        return row

    def _backoff_for(self, room_id: str) -> Backoff:
        return self._backoff.setdefault(room_id, Backoff(0.5, 60))

    async def _deliver_one(self, listed: OutboxRow) -> bool:
        # Counted as tried in the store before it is read for sending: an amend by either
        # instance then commits before (and is sent) or finds it tried (bot.outbox_db.claim).
        row = await db.claim(self.store, listed.id)
        if row is None:
            return True  # coalesced away, or done: the room's next row goes on
        room_id = row.room_id
        started = time.monotonic()
        try:
            content = await self._fill_refs(json.loads(row.content))
            event_id = await self.transport.send_event(room_id, row.event_type, content, row.txn_id)
        except _NotYetSent as missing:
            # The referenced message is still queued (e.g. in flight, or in another room).
            self._retry_at[room_id] = time.monotonic() + 1
            await db.unclaim(self.store, row.id)  # nothing left: it may still be amended
            log.info("outbox message %d waits for %s", row.id, missing)
            return False
        except MatrixError as exc:
            if exc.errcode == DUPLICATE and row.event_type == "m.reaction":
                return await self._already_there(row, content)
            attempts = row.attempts  # this one included (claimed)
            give_up = not exc.transient and (
                exc.errcode not in WAIT_ON or attempts >= MAX_PERMANENT_ATTEMPTS
            )
            await db.record_refusal(self.store, row.id, attempts, str(exc), give_up=give_up)
            self.metrics.errors.labels("outbox").inc()
            if give_up:
                log.error(
                    "giving up outbox message %d to %s after %d attempt(s): %s",
                    row.id,
                    room_id,
                    attempts,
                    exc,
                )
                self.metrics.outbox_refused.labels(exc.errcode or str(exc.status), "given_up").inc()
                self._resolve(row.id, error=exc)
                # The refusal was about this row alone: the room's next one goes now.
                self._retry_at.pop(room_id, None)
                return True
            wait = exc.retry_after or self._backoff_for(room_id).next()
            if exc.retry_after:
                # From this try to the allowed one: the server may hold a refusal (Synapse
                # for 0.5 s) and count that time out of its retry_after.
                pace = time.monotonic() - started + exc.retry_after
                self._pace[room_id] = min(pace, PACE_MAX_S)
            self._retry_at[room_id] = time.monotonic() + wait
            log.warning("outbox message %d to %s: %s; retry in %.1f s", row.id, room_id, exc, wait)
            return False
        await db.mark_sent(self.store, row.id, event_id, now=self.clock.time())
        if room_id in self._pace:
            # Set before anything else may run: a `run` turn in between (a post, a NOTIFY from
            # the store) would otherwise find the room due and send its next row at once.
            self._retry_at[room_id] = time.monotonic() + self._pace[room_id]
        else:
            self._retry_at.pop(room_id, None)
        if room_id in self._backoff:
            self._backoff[room_id].reset()
        self._resolve(row.id, event_id=event_id)
        return True

    async def _already_there(self, row: OutboxRow, content: dict[str, Any]) -> bool:
        """A reaction the server already holds: delivered, as the reaction that is there."""
        rel = content.get("m.relates_to") or {}
        event_id: str | None = None
        try:
            event_id = await self.transport.own_reaction(
                row.room_id, str(rel.get("event_id", "")), str(rel.get("key", ""))
            )
        except MatrixError as exc:
            log.warning("could not look up the reaction already sent: %s", exc)
        log.warning(
            "outbox message %d to %s: the same reaction %s is already there (%s); delivered",
            row.id,
            row.room_id,
            rel.get("key"),
            event_id or "event id unknown",
        )
        self.metrics.outbox_refused.labels(DUPLICATE, "already_delivered").inc()
        await db.mark_sent(self.store, row.id, event_id, now=self.clock.time(), note=DUPLICATE)
        self._retry_at.pop(row.room_id, None)
        self._resolve(row.id, event_id=event_id or "")
        return True

    def _resolve(
        self, outbox_id: int, *, event_id: str | None = None, error: Exception | None = None
    ) -> None:
        fut = self._waiters.pop(outbox_id, None)
        if fut is None or fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(event_id or "")
