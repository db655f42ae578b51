"""Creating silences: read back what Alertmanager stored, and one creation per matcher set."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from bot.errors import RemoteError
from commands.alerts.api import AlertmanagerAPI
from commands.alerts.matchers import Matcher
from commands.alerts.silencing import MatcherKey, key_of, stored_key, stored_matchers


@dataclass(frozen=True)
class Created:
    """A silence as Alertmanager stored it; `kept` is False when it was expired at once."""

    silence_id: str
    stored: list[Matcher]
    ends_at: str  # ISO 8601, as stored
    kept: bool


async def create_verified(
    api: AlertmanagerAPI,
    matchers: list[Matcher],
    starts: datetime,
    ends: datetime,
    created_by: str,
    comment: str,
) -> Created:
    """Create a silence, read it back (GET /api/v2/silence/{id}) and compare its matchers.

    A silence stored with other matchers than asked (e.g. an Alertmanager before 0.22, which
    ignores `isEqual`, stores `job!="node"` as `job="node"`) would silence other alerts: it is
    expired at once and returned with `kept=False`. Raises RemoteError when a call fails.
    """
    silence_id = await api.create_silence(matchers, starts, ends, created_by, comment)
    try:
        stored = await api.silence(silence_id)
    except RemoteError as exc:
        raise RemoteError(
            f"silence {silence_id} was created, but reading it back failed ({exc}); "
            "check it with the silences command"
        ) from None
    kept = stored_key(stored) == key_of(matchers)
    if not kept:
        try:
            await api.expire_silence(silence_id)
        except RemoteError as exc:
            raise RemoteError(
                f"Alertmanager stored silence {silence_id} with other matchers than asked, "
                f"and expiring it failed ({exc}): expire it by hand"
            ) from None
    return Created(silence_id, stored_matchers(stored), str(stored.get("endsAt", "")), kept)


def mismatch_note(asked: list[Matcher], created: Created) -> str:
    """The sentence for a silence whose stored matchers differ from the request."""
    shown = ", ".join(str(m) for m in created.stored) or "no matchers"
    wanted = ", ".join(str(m) for m in asked)
    return (
        f"⚠️ Alertmanager stored silence {created.silence_id} as {shown}, not {wanted} as asked; "
        "that would silence other alerts, so it is expired again (Alertmanager before 0.22 "
        "ignores != and !~)."
    )


class InFlight:
    """Silences being created now, by matcher set.

    A second request for the same matchers that arrives while the first is under way (the same
    sync batch, the same event-loop turn) waits for the first one's result instead of checking
    Alertmanager, finding nothing yet, and creating a second silence. `claim` must be called
    before the claimant's first await.
    """

    def __init__(self) -> None:
        self._running: dict[MatcherKey, asyncio.Future[tuple[str, str] | None]] = {}

    def running(self, key: MatcherKey) -> asyncio.Future[tuple[str, str] | None] | None:
        """The creation under way for these matchers: resolves to (id, endsAt) or None."""
        return self._running.get(key)

    def claim(self, key: MatcherKey) -> None:
        """Mark a creation for these matchers as under way (it must not be running)."""
        self._running[key] = asyncio.get_running_loop().create_future()

    def release(self, key: MatcherKey, result: tuple[str, str] | None) -> None:
        """End a claim with the silence now there (id, endsAt), or None if there is none."""
        future = self._running.pop(key, None)
        if future is not None and not future.done():
            future.set_result(result)
