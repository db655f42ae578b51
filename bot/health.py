"""What /healthz reports: whether the bot is talking to its homeserver, and if not, why."""

from __future__ import annotations

import time


class Health:
    """Mutable health state, written by the transport and read by the HTTP server."""

    def __init__(self) -> None:
        self.ok = False
        self.reason = "starting"
        self.since = time.time()
        self.last_ok = 0.0

    def set_ok(self, reason: str) -> None:
        """Mark healthy (e.g. after a successful sync)."""
        if not self.ok:
            self.since = time.time()
        self.ok = True
        self.reason = reason
        self.last_ok = time.time()

    def set_failing(self, reason: str) -> None:
        """Mark unhealthy with a reason fit for an operator."""
        if self.ok:
            self.since = time.time()
        self.ok = False
        self.reason = reason

    def check(self, stale_after_s: float) -> tuple[bool, str]:
        """(healthy, reason); a sync loop that went quiet too long counts as unhealthy."""
        if self.ok and time.time() - self.last_ok > stale_after_s:
            return False, f"no successful sync for {time.time() - self.last_ok:.0f} s"
        return self.ok, self.reason
