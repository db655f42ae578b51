"""Who to ping for a severity: one rule model and one resolution for every feature."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from bot.config import Section
from bot.messages import escape


class MentionRule(Section):
    """`severity: [critical]` → mention these `users`, and `@room` when `room` is true."""

    severity: list[str]
    users: list[str] = Field(default_factory=list)
    room: bool = False


@dataclass(frozen=True)
class Mentions:
    """The users (and whether @room) a message pings."""

    users: list[str] = field(default_factory=list)
    room: bool = False

    def text(self) -> str:
        """'@room @alice:x' for the plain body ('' when nobody)."""
        return " ".join((["@room"] if self.room else []) + self.users)

    def html(self) -> str:
        """The same with user pills for formatted_body."""
        pills = [f'<a href="https://matrix.to/#/{escape(u)}">{escape(u)}</a>' for u in self.users]
        return " ".join((["@room"] if self.room else []) + pills)

    def content(self) -> dict[str, Any]:
        """The event's `m.mentions` (intentional mentions, MSC3952)."""
        return {"user_ids": list(self.users), **({"room": True} if self.room else {})}


NOBODY = Mentions()


def mentions_for(rules: Iterable[MentionRule], severity: str) -> Mentions:
    """Everyone the rules ping for a severity (compared case-insensitively)."""
    users: list[str] = []
    room = False
    for rule in rules:
        if severity.lower() in {s.lower() for s in rule.severity}:
            users += [u for u in rule.users if u not in users]
            room = room or rule.room
    return Mentions(users, room)
