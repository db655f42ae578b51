"""What /healthz reports: the instance's role, and whether it does its part, and if not, why.

The leader (and a single instance) is healthy while it syncs with the homeserver. A standby
does not sync: it is healthy once it has logged in to the homeserver and while the lease's
database answers, as that is what it needs to accept webhooks and to take over.
"""

from __future__ import annotations

import time

from bot.clock import Clock, SystemClock
from bot.leader import LEADER, LeaseState


class Health:
    """Mutable health state, written by the transport and read by the HTTP server.

    `since` (Unix seconds from `clock`) is when the state last changed; how long ago the
    last sync succeeded is measured on `time.monotonic`, which no clock setting moves.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.ok = False
        self.reason = "starting"
        self.since = self.clock.time()
        self._last_ok: float | None = None  # monotonic
        self.lease = LeaseState(role=LEADER, reachable=True, reason="single instance")

    @property
    def role(self) -> str:
        """`leader` or `standby` (bot.leader)."""
        return self.lease.role

    def set_ok(self, reason: str) -> None:
        """Mark healthy (e.g. after a successful sync)."""
        if not self.ok:
            self.since = self.clock.time()
        self.ok = True
        self.reason = reason
        self._last_ok = time.monotonic()

    def set_failing(self, reason: str) -> None:
        """Mark unhealthy with a reason fit for an operator."""
        if self.ok:
            self.since = self.clock.time()
        self.ok = False
        self.reason = reason

    def check(self, stale_after_s: float) -> tuple[bool, str]:
        """(healthy, reason); a leader's sync loop that went quiet too long is unhealthy."""
        if self.lease.role != LEADER:
            reason = f"standby: {self.lease.reason}"
            if not self.ok:
                # A standby that cannot reach the homeserver could not take over: say why.
                reason += f"; homeserver: {self.reason}"
            return self.lease.reachable and self.ok, reason
        if self.ok and self._last_ok is not None:
            quiet = time.monotonic() - self._last_ok
            if quiet > stale_after_s:
                return False, f"no successful sync for {quiet:.0f} s"
        return self.ok, self.reason
