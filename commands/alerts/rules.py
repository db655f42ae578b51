"""What to do with a notification, given what its group said before: one pure function.

`decide(previous, n, cfg, now)` applies the relay's rules and returns a Decision; it does no
I/O. `commands.alerts.intake` applies decisions (outbox, packing, the group's row).

The rules, in order:
- Older copy: a notification that says nothing new (each of its alerts already seen with the
  same `startsAt`) and still calls firing an alert whose resolve was seen within
  `dedupe_window_s` was computed before that resolve and is dropped. An Alertmanager replica
  that flushed just before Prometheus' resolve reached it sends exactly this, ~10-15 s after
  its peer's "resolved" (Alertmanager issues #4008, #2447: its dedup compares only the sets
  of firing/resolved fingerprints in the gossiped notification log). A genuinely new firing
  has a new `startsAt` (Prometheus' activeAt; Alertmanager merges only overlapping ones,
  provider/mem/mem.go Put), so it is not taken for a copy.
- HA twin / late copy: a resolve for a group whose message already says resolved is dropped.
- Fires again: a group that was resolved and fires again is a new group (a new message).
- New group: a new message; a firing group pings whoever `mentions` names for its severity.
- Duplicate: the same state again (the HA twin's copy) within `dedupe_window_s`, or at any
  time when `reminders` is off, is dropped.
- Change before first send: a group whose message has not started sending is changed in that
  message (it keeps the ping it was going to send) rather than edited later.
- Reminder: the same state after the window is Alertmanager's `repeat_interval` reminding
  that it still fires; an edit of a message long scrolled away would be silent, so it is
  posted again, pinging nobody, and that is its message from then on.
- Change of a shared message: a group shown with others gets its own message (an edit would
  replace the others).
- Change: otherwise its message is edited; a group that resolved also gets a "resolved" reply
  in the message's thread when `resolved_reply` is on.
A "resolved" with `truncatedAlerts` > 0 does not resolve the group (Notification.all_resolved):
the alerts Alertmanager left out may still fire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from bot.mentions import NOBODY, Mentions, mentions_for
from commands.alerts.config import AlertsConfig
from commands.alerts.payload import Alert, Notification
from commands.alerts.render import severity_of


@dataclass(frozen=True)
class Previous:
    """What the group said before, and where its message stands."""

    open: bool
    digest: str  # Notification.state_digest() of its last notification
    created_at: datetime  # when it started firing
    updated_at: datetime  # its last notification
    shared: bool = False  # its message shows other groups too
    unsent: bool = False  # its message has not started sending yet
    pings: Mentions = NOBODY  # what that unsent message was going to ping it for
    known: Mapping[str, float | None] = field(default_factory=dict)  # see `learn`


Result = Literal["posted", "updated", "resolved", "reminded", "duplicate", "stale"]


def incarnation(alert: Alert) -> str:
    """One firing of one alert: its identity and `startsAt` ("<fingerprint>@<ISO time>")."""
    return f"{alert.key}@{alert.startsAt.isoformat()}"


def learn(
    known: Mapping[str, float | None], n: Notification, window: timedelta, now: datetime
) -> dict[str, float | None]:
    """What the group knows after `n`: incarnation -> Unix time its resolve was first seen
    (None while firing).

    Kept: the alerts of `n`, and resolves seen within `window` of `now` (an older copy
    arrives within seconds of the resolve it missed). A resolve is never undone by a firing
    of the same incarnation. Bounded by the alerts of `n` plus the window's resolves.
    """
    stamp = now.timestamp()
    kept: dict[str, float | None] = {
        key: seen
        for key, seen in known.items()
        if seen is not None and stamp - seen < window.total_seconds()
    }
    for alert in n.alerts:
        key = incarnation(alert)
        if alert.status == "resolved":
            kept[key] = kept.get(key) or stamp
        else:
            kept.setdefault(key, None)
    return kept


def older_copy(
    known: Mapping[str, float | None], n: Notification, window: timedelta, now: datetime
) -> bool:
    """Whether `n` predates a resolve already seen: nothing in it is new (every alert seen
    with this `startsAt`) and it calls firing an alert seen resolved less than `window` ago."""
    predates = False
    for alert in n.alerts:
        key = incarnation(alert)
        if key not in known:
            return False
        resolved_at = known[key]
        if alert.status == "firing" and resolved_at is not None:
            predates = predates or now.timestamp() - resolved_at < window.total_seconds()
    return predates


@dataclass(frozen=True)
class Drop:
    """Nothing to show: `why` says which rule."""

    why: Literal["older copy", "resolved already", "same state", "reminders off"]
    result: Result = "duplicate"


@dataclass(frozen=True)
class Post:
    """Show the group in a new message (or in the one still waiting to be sent).

    `replaces`: the group had a message before and moves to this one; `opened_at` is when
    the group started firing (kept across messages).
    """

    result: Result
    pings: Mentions
    reminder: bool
    replaces: bool
    opened_at: datetime
    open: bool


@dataclass(frozen=True)
class Edit:
    """Edit the group's message; `lasted` is set when a "resolved" reply goes in its thread."""

    result: Result
    open: bool
    lasted: timedelta | None


Decision = Drop | Post | Edit


def decide(
    previous: Previous | None, n: Notification, cfg: AlertsConfig, now: datetime
) -> Decision:
    """The decision for notification `n` given the group's `previous` state (None: unknown)."""
    still_open = not n.all_resolved
    window = timedelta(seconds=cfg.dedupe_window_s)
    if previous is not None and older_copy(previous.known, n, window, now):
        return Drop("older copy", "stale")
    if previous is not None and not previous.open:
        if n.status == "resolved":
            return Drop("resolved already")
        previous = None  # it fires again
    if previous is None:
        pings = mentions_for(cfg.mentions, severity_of(n)) if n.status == "firing" else NOBODY
        return Post("posted", pings, False, False, now, still_open)
    changed: Result = "resolved" if n.all_resolved else "updated"
    same = previous.digest == n.state_digest()
    if same and now - previous.updated_at < window:
        return Drop("same state")
    if same and not cfg.reminders:
        return Drop("reminders off")
    if previous.unsent:
        return Post(changed, previous.pings, False, True, previous.created_at, still_open)
    if same:
        return Post("reminded", NOBODY, True, True, previous.created_at, still_open)
    if previous.shared:
        return Post(changed, NOBODY, False, True, previous.created_at, still_open)
    lasted = now - previous.created_at if n.all_resolved and cfg.resolved_reply else None
    return Edit(changed, still_open, lasted)
