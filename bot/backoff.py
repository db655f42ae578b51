"""Exponential backoff with jitter, shared by every retry loop."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from `start` up to `cap`, each with ±20 % jitter."""

    def __init__(self, start: float, cap: float) -> None:
        self.start = start
        self.cap = cap
        self._next = start

    def next(self) -> float:
        """The delay to wait now; the following one doubles."""
        delay = self._next
        self._next = min(self.cap, delay * 2)
        return delay * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto

    def reset(self) -> None:
        """Start again from the shortest delay after a success."""
        self._next = self.start
