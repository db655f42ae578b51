"""From accepted notification to committed room message: group commit and coalescing.

Webhooks that arrive together are committed in one transaction (each in its own savepoint), so
a storm costs one commit per batch rather than per webhook, and every webhook is still answered
only after its message is in the outbox.

A new group becomes its own message. While that message still waits to be sent (the room is
busy sending, or the homeserver is away), further new groups join it instead of queueing behind
it, so the room gets one message per round trip whatever the arrival rate. A waiting message
that holds several groups shows each in full when that fits, else one line per group.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from bot import messages
from bot.context import Runtime
from bot.mentions import NOBODY, Mentions, mentions_for
from bot.messages import human_duration
from bot.outbox import ref
from commands.alerts.config import AlertsConfig, alerts_config, renderer
from commands.alerts.payload import Notification
from commands.alerts.render import (
    MAX_RENDERED_BYTES,
    digest_line,
    group_title,
    render_batch,
    severity_of,
    with_reminder,
)
from commands.alerts.silencing import encode_plan, group_matchers

log = logging.getLogger(__name__)
# Beyond this many groups in one message, each is shown as one line rather than in full.
FULL_BATCH_GROUPS = 5
# The one-line forms a shared message may hold, leaving room for its heading and mentions.
DIGEST_BYTES = MAX_RENDERED_BYTES - 2_000
# A resolved group's row is kept this long: its HA twin's copy must find it to be dropped.
KEEP_CLOSED_S = 7 * 86_400
PRUNE_EVERY_S = 3_600


@dataclass(frozen=True)
class Member:
    """A group in a shared message: its notification, who it pings, its one-line form."""

    n: Notification
    pings: Mentions
    line: tuple[str, str]
    repeat: bool = False  # Alertmanager's reminder of a group that has not changed

    @property
    def size(self) -> int:
        """Bytes of its one-line form."""
        return len(self.line[0].encode()) + len(self.line[1].encode())


@dataclass
class Draft:
    """A room's newest group message that has not started sending, and the groups it holds."""

    outbox_id: int
    groups: dict[str, Member] = field(default_factory=dict)  # by group key, in arrival order
    size: int = 0  # bytes of the one-line forms

    def add(self, member: Member) -> None:
        """Add a group; one that changed again before the message went out replaces itself."""
        old = self.groups.pop(member.n.groupKey, None)
        self.size += member.size - (old.size if old else 0)
        self.groups[member.n.groupKey] = member


@dataclass
class _Pending:
    rooms: list[str]
    notification: Notification
    done: asyncio.Future[list[str]]


class Intake:
    """Records notifications in batches; `submit` returns once its batch is committed."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.drafts: dict[str, Draft] = {}
        self._changed: dict[int, Draft] = {}  # by outbox id: a full draft is no longer in drafts
        self._queue: list[_Pending] = []
        self._next_prune = 0.0

    async def submit(self, rooms: list[str], n: Notification) -> list[str]:
        """Queue the notification for its rooms; returns what was done in each."""
        loop = asyncio.get_running_loop()
        item = _Pending(rooms, n, loop.create_future())
        self._queue.append(item)
        if len(self._queue) == 1:
            # Handlers made ready by the same loop iteration join this batch.
            loop.call_soon(self._flush)
        return await item.done

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        cfg = alerts_config(self.rt)
        outcomes: list[list[str] | BaseException] = []
        try:
            with self.rt.store.transaction():
                for item in batch:
                    try:
                        with self.rt.store.savepoint():
                            outcomes.append(
                                [self.record(cfg, room, item.notification) for room in item.rooms]
                            )
                    except Exception as exc:
                        log.exception("could not record %s", item.notification.groupKey[:80])
                        outcomes.append(exc)
                self._render_drafts(cfg)
                if time.monotonic() >= self._next_prune:
                    self._next_prune = time.monotonic() + PRUNE_EVERY_S
                    self.rt.store.execute(
                        "DELETE FROM alert_groups WHERE open = 0 AND updated_at < ?",
                        (time.time() - KEEP_CLOSED_S,),
                    )
        except Exception as exc:
            log.exception("could not commit %d alert notification(s)", len(batch))
            outcomes = [exc] * len(batch)
            # Rolled back: what the drafts say in memory may no longer be in the store.
            self.drafts.clear()
            self._changed.clear()
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.done.done():
                continue
            if isinstance(outcome, BaseException):
                item.done.set_exception(outcome)
            else:
                item.done.set_result(outcome)

    def record(self, cfg: AlertsConfig, room_id: str, n: Notification) -> str:
        """Queue the group's message (new, edited or resolved); returns what was done."""
        db = self.rt.store.db
        digest = n.state_digest()
        now = time.time()
        row = db.execute(
            "SELECT * FROM alert_groups WHERE room_id = ? AND group_key = ? "
            "ORDER BY id DESC LIMIT 1",
            (room_id, n.groupKey),
        ).fetchone()
        if row is not None and not row["open"]:
            if n.status == "resolved":
                # Its message already says so: this is the HA twin's (or a late) copy.
                return "duplicate"
            row = None  # it fires again: a new message
        same = row is not None and row["digest"] == digest
        if same and (now - row["updated_at"] < cfg.dedupe_window_s or not cfg.reminders):
            return "duplicate"
        still_open = 0 if n.all_resolved else 1
        draft = self.drafts.get(room_id)
        # A group whose message has not gone out yet is changed in that message, not edited.
        unsent = (
            row is not None
            and draft is not None
            and draft.outbox_id == row["outbox_id"]
            and self.rt.outbox.waiting(draft.outbox_id)
        )
        # Unchanged after the window: Alertmanager's repeat_interval reminding that it still
        # fires. An edit would be silent on a message long scrolled away, so the group is
        # posted again (without pings), and that is its message from now on.
        repeat = same and not unsent
        if row is None or row["in_digest"] or unsent or repeat:
            # Only a group that starts firing pings; an update must not ping everybody again,
            # but one still waiting keeps the ping it was going to send.
            pings = NOBODY
            if row is None and n.status == "firing":
                pings = mentions_for(cfg.mentions, severity_of(n))
            elif unsent and draft is not None and n.groupKey in draft.groups:
                pings = draft.groups[n.groupKey].pings
            outbox_id, joined = self._place(cfg, room_id, n, pings, repeat)
            if row is not None:
                db.execute("DELETE FROM alert_groups WHERE id = ?", (row["id"],))
            db.execute(
                "INSERT INTO alert_groups(room_id, group_key, open, outbox_id, digest, status, "
                "alerts, created_at, updated_at, in_digest, labels, silence) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    room_id,
                    n.groupKey,
                    still_open,
                    outbox_id,
                    digest,
                    n.status,
                    len(n.alerts),
                    now if row is None else row["created_at"],
                    now,
                    int(len(self.drafts[room_id].groups) > 1),
                    json.dumps(n.groupLabels or n.commonLabels),
                    encode_plan(group_matchers(n)),
                ),
            )
            if repeat:
                return "reminded"
            if row is not None:
                return "resolved" if n.all_resolved else "updated"
            return "coalesced" if joined else "posted"
        content = self._content(n, NOBODY)
        target = ref(row["outbox_id"])
        self.rt.outbox.post(
            room_id, messages.edit(content, target), coalesce_key=f"alerts:edit:{row['id']}"
        )
        if n.all_resolved and cfg.resolved_reply:
            lasted = human_duration(now - row["created_at"])
            reply = f"✅ resolved: {group_title(n)} ({len(n.alerts)} alert(s), open for {lasted})"
            self.rt.outbox.post(room_id, messages.in_thread(messages.notice(reply), target))
        db.execute(
            "UPDATE alert_groups SET digest = ?, status = ?, alerts = ?, updated_at = ?, open = ?, "
            "silence = ? WHERE id = ?",
            (
                digest,
                n.status,
                len(n.alerts),
                now,
                still_open,
                encode_plan(group_matchers(n)),
                row["id"],
            ),
        )
        return "resolved" if n.all_resolved else "updated"

    def _place(
        self, cfg: AlertsConfig, room_id: str, n: Notification, pings: Mentions, repeat: bool
    ) -> tuple[int, bool]:
        """The outbox row that will show a new group, and whether it joined a waiting one."""
        draft = self.drafts.get(room_id)
        member = Member(n, pings, digest_line(n, repeat), repeat)
        fits = draft is not None and (
            member.n.groupKey in draft.groups  # replaces itself
            or (
                len(draft.groups) < cfg.digest_max_groups
                and draft.size + member.size <= DIGEST_BYTES
            )
        )
        if draft is not None and fits and self.rt.outbox.waiting(draft.outbox_id):
            alone = len(draft.groups) == 1 and member.n.groupKey not in draft.groups
            draft.add(member)
            self._changed[draft.outbox_id] = draft
            if alone:
                # The message is shared from now on: its first group gets its own message
                # when it next changes, as every later one will.
                self.rt.store.execute(
                    "UPDATE alert_groups SET in_digest = 1 WHERE outbox_id = ?", (draft.outbox_id,)
                )
            return draft.outbox_id, True
        outbox_id = self.rt.outbox.post(room_id, self._content(n, pings, repeat))
        self.drafts[room_id] = draft = Draft(outbox_id)
        draft.add(member)
        return outbox_id, False

    def _content(self, n: Notification, pings: Mentions, repeat: bool = False) -> messages.Content:
        text, html = self._render(n, pings, repeat)
        body = messages.notice(text, html)
        body["m.mentions"] = pings.content()
        return body

    def _render(self, n: Notification, pings: Mentions, repeat: bool) -> tuple[str, str]:
        text, html = renderer(self.rt).render(n, pings)
        return with_reminder(text, html) if repeat else (text, html)

    def _render_drafts(self, cfg: AlertsConfig) -> None:
        """Once per batch, rewrite each waiting message that gained groups."""
        changed, self._changed = list(self._changed.values()), {}
        for draft in changed:
            members = list(draft.groups.values())
            users: list[str] = []
            for m in members:
                users += [u for u in m.pings.users if u not in users]
            pings = Mentions(users, any(m.pings.room for m in members))
            if len(members) == 1:
                body = self._content(members[0].n, pings, members[0].repeat)
            else:
                # Full renderings only while they can fit; a storm gets one line per group.
                full = None
                if len(members) <= FULL_BATCH_GROUPS:
                    full = [self._render(m.n, NOBODY, m.repeat) for m in members]
                lines = [m.line for m in members]
                repeats = sum(m.repeat for m in members)
                text, html = render_batch(full, lines, pings, repeats)
                body = messages.notice(text, html)
                body["m.mentions"] = pings.content()
            if not self.rt.outbox.amend(draft.outbox_id, body):
                raise RuntimeError(f"outbox row {draft.outbox_id} started sending mid-batch")
