"""What time it is, from one place that tests can set.

Code that depends on "now" (schedules, ages of backups, month edges, expiries) takes the
runtime's clock instead of calling `time.time()` or `datetime.now()`; tests give the bot a
`ManualClock` and move it, rather than waiting for a schedule or a date.

Wall-clock time only: measuring how long something took stays on `time.monotonic()`.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol


class Clock(Protocol):
    """A source of the current UTC time that can also be slept on."""

    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...

    def time(self) -> float:
        """The current time as Unix seconds."""
        ...

    async def sleep_until(self, when: datetime, wake: asyncio.Event | None = None) -> None:
        """Return at `when` (UTC), or earlier once `wake` is set."""
        ...


async def _wait(event: asyncio.Event | None, timeout: float | None) -> None:
    if event is None:
        if timeout is None:
            await asyncio.Event().wait()
        await asyncio.sleep(timeout or 0)
        return
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        return datetime.now(UTC)

    def time(self) -> float:
        """The current time as Unix seconds."""
        return time.time()

    async def sleep_until(self, when: datetime, wake: asyncio.Event | None = None) -> None:
        """Return at `when` (UTC), or earlier once `wake` is set."""
        await _wait(wake, max(0.0, (when - self.now()).total_seconds()))


class ManualClock:
    """A clock that only moves when told to (`set`, `advance`); sleepers wake as it passes.

    Raises ValueError if asked to go backwards: a schedule that saw a time must not see an
    earlier one.
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start time")
        self._now = start.astimezone(UTC)
        self._moved = asyncio.Condition()

    def now(self) -> datetime:
        """The time the clock was last set to."""
        return self._now

    def time(self) -> float:
        """The current time as Unix seconds."""
        return self._now.timestamp()

    async def set(self, when: datetime) -> None:
        """Move the clock to `when` and let every sleeper whose time has come run."""
        when = when.astimezone(UTC)
        if when < self._now:
            raise ValueError(f"the clock cannot go back from {self._now} to {when}")
        self._now = when
        async with self._moved:
            self._moved.notify_all()
        # Let woken sleepers take their turn before the caller goes on.
        for _ in range(3):
            await asyncio.sleep(0)

    async def advance(self, delta: timedelta) -> None:
        """Move the clock forward by `delta`."""
        await self.set(self._now + delta)

    async def sleep_until(self, when: datetime, wake: asyncio.Event | None = None) -> None:
        """Return once the clock reaches `when`, or earlier once `wake` is set."""
        waiter = asyncio.ensure_future(self._reach(when))
        tasks: set[asyncio.Future[Any]] = {waiter}
        if wake is not None:
            tasks.add(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()

    async def _reach(self, when: datetime) -> None:
        async with self._moved:
            await self._moved.wait_for(lambda: self._now >= when)
