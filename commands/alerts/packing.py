"""Packing groups into room messages: one message per new group, shared while it waits.

A new group becomes its own message. While that message still waits to be sent (the room is
busy sending, or the homeserver is away), further new groups join it instead of queueing behind
it, so the room gets one message per round trip whatever the arrival rate. A waiting message
that holds several groups shows each in full when that fits, else one line per group (a
digest). Deciding what to show is `commands.alerts.rules`; this module only packs.

With two instances on one PostgreSQL (issue 17) both pack into the same rooms while only the
leader sends. A waiting message is joined only when the shared store, read inside the batch's
transaction (under the store's write lock), says so: its outbox row was never tried — the
sender counts a try under that same lock before reading the row (bot.outbox_db.claim), so
the row stays untried until the batch commits, and the batch's amend cannot fail or be sent
half-way — and the alert groups the store places in it are exactly the ones this instance's
draft holds, with the same digests (else the other instance changed one of them, and the
draft would rewrite the message with a stale copy: a new message is started instead).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from bot import messages
from bot.mentions import NOBODY, Mentions
from bot.outbox import Outbox
from commands.alerts import db
from commands.alerts.payload import Notification
from commands.alerts.render import MAX_RENDERED_BYTES, digest_line, render_batch

log = logging.getLogger(__name__)
# Beyond this many groups in one message, each is shown as one line rather than in full.
FULL_BATCH_GROUPS = 5
# The one-line forms a shared message may hold, leaving room for its heading and mentions.
DIGEST_BYTES = MAX_RENDERED_BYTES - 2_000

# (notification, pings, is a reminder) → (text, html) of the group alone.
RenderGroup = Callable[[Notification, Mentions, bool], tuple[str, str]]


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


@dataclass(frozen=True)
class Placed:
    """Where a group went: its outbox row, whether it joined a waiting message, and whether
    that message became shared just now (its first group must learn it is no longer alone)."""

    outbox_id: int
    joined: bool
    became_shared: bool
    shared: bool  # the message shows more than this group


def group_content(text: str, html: str, pings: Mentions) -> messages.Content:
    """A group message's content: a notice with its intentional mentions."""
    body = messages.notice(text, html)
    body["m.mentions"] = pings.content()
    return body


class Packer:
    """The waiting messages of each room; `place` puts a group in one, `flush` renders them."""

    def __init__(self, outbox: Outbox, render: RenderGroup) -> None:
        self.outbox = outbox
        self.render = render
        self.drafts: dict[str, Draft] = {}
        self._changed: dict[int, Draft] = {}  # by outbox id: a full draft is no longer in drafts
        # Waiting messages this batch looked at: kept from being sent until the batch ends,
        # as the store may await between a look and the batch's amend.
        self._held: set[int] = set()

    async def waiting(self, room_id: str, outbox_id: int, group_key: str) -> Member | None:
        """The group as its message `outbox_id` holds it, if that message has not started."""
        draft = self.drafts.get(room_id)
        if (
            draft is None
            or draft.outbox_id != outbox_id
            or not await self._still_waiting(room_id, draft)
        ):
            return None
        return draft.groups.get(group_key)

    async def _still_waiting(self, room_id: str, draft: Draft) -> bool:
        """Whether the draft's message was not tried yet and the store places in it just the
        draft's groups as the draft has them; if so it stays unsent until `flush` or `forget`
        ends the batch. A draft found stale is dropped."""
        if draft.outbox_id not in self._held:
            if not self.outbox.hold(draft.outbox_id):
                return self._drop(room_id, draft)
            self._held.add(draft.outbox_id)
        if not await self.outbox.waiting(draft.outbox_id):
            return self._drop(room_id, draft)
        stored = {
            g.group_key: g.digest
            for g in await db.groups_of_message(self.outbox.store, draft.outbox_id, room_id)
        }
        if stored != {key: m.n.state_digest() for key, m in draft.groups.items()}:
            log.info("alerts: message %d was changed by another instance", draft.outbox_id)
            return self._drop(room_id, draft)
        return True

    def _drop(self, room_id: str, draft: Draft) -> bool:
        if self.drafts.get(room_id) is draft:
            del self.drafts[room_id]
        return False

    async def place(
        self,
        room_id: str,
        n: Notification,
        pings: Mentions,
        repeat: bool,
        max_groups: int,
    ) -> Placed:
        """The outbox row that will show the group: the room's waiting message if it fits
        (at most `max_groups` groups and DIGEST_BYTES of lines), else a new one."""
        draft = self.drafts.get(room_id)
        member = Member(n, pings, digest_line(n, repeat), repeat)
        fits = draft is not None and (
            n.groupKey in draft.groups  # replaces itself
            or (len(draft.groups) < max_groups and draft.size + member.size <= DIGEST_BYTES)
        )
        if draft is not None and fits and await self._still_waiting(room_id, draft):
            alone = len(draft.groups) == 1 and n.groupKey not in draft.groups
            draft.add(member)
            self._changed[draft.outbox_id] = draft
            return Placed(draft.outbox_id, True, alone, len(draft.groups) > 1)
        text, html = self.render(n, pings, repeat)
        outbox_id = await self.outbox.post(room_id, group_content(text, html, pings))
        self.drafts[room_id] = draft = Draft(outbox_id)
        draft.add(member)
        return Placed(outbox_id, False, False, False)

    async def flush(self) -> None:
        """Rewrite each waiting message that gained or changed groups (once per batch)."""
        changed, self._changed = list(self._changed.values()), {}
        for draft in changed:
            members = list(draft.groups.values())
            users: list[str] = []
            for m in members:
                users += [u for u in m.pings.users if u not in users]
            pings = Mentions(users, any(m.pings.room for m in members))
            if len(members) == 1:
                text, html = self.render(members[0].n, pings, members[0].repeat)
            else:
                # Full renderings only while they can fit; a storm gets one line per group.
                full = None
                if len(members) <= FULL_BATCH_GROUPS:
                    full = [self.render(m.n, NOBODY, m.repeat) for m in members]
                lines = [m.line for m in members]
                repeats = sum(m.repeat for m in members)
                text, html = render_batch(full, lines, pings, repeats)
            if not await self.outbox.amend(draft.outbox_id, group_content(text, html, pings)):
                raise RuntimeError(f"outbox row {draft.outbox_id} started sending mid-batch")
        # Sent only once what the batch wrote into them is committed.
        self.outbox.store.after_transaction(self._release)

    def _release(self) -> None:
        for outbox_id in self._held:
            self.outbox.release(outbox_id)
        self._held.clear()

    def forget(self) -> None:
        """Drop what is known of waiting messages (after a rollback it may be wrong)."""
        self.drafts.clear()
        self._changed.clear()
        self._release()
