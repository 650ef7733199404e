"""Capped exponential backoff with jitter, shared by the Modbus reconnect and the device retry.

Jitter spreads the retries of many devices that failed together (a site switch rebooting) so that
they do not all knock again in the same instant.
"""

from __future__ import annotations

import random


class Backoff:
    """When the next attempt may be made, after `failures` consecutive failures.

    The n-th consecutive failure waits `initial_s × 2^(n-1)`, capped at `max_s`, shortened by a random
    fraction of up to `jitter` (so the cap is never exceeded). A success resets it.
    """

    def __init__(
        self,
        initial_s: float = 0.5,
        max_s: float = 30.0,
        jitter: float = 0.25,
        rng: random.Random | None = None,
    ) -> None:
        if not (0 < initial_s <= max_s) or not (0 <= jitter < 1):
            raise ValueError("backoff needs 0 < initial_s <= max_s and 0 <= jitter < 1")
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.failures = 0
        self._next_at = 0.0

    def failed(self, now: float) -> float:
        """Record a failure at `now` (monotonic seconds); returns the delay before the next attempt."""
        self.failures += 1
        delay = min(self.max_s, self.initial_s * 2.0 ** (self.failures - 1))
        delay *= 1.0 - self.jitter * self._rng.random()
        self._next_at = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self._next_at = 0.0

    def wait_s(self, now: float) -> float:
        """Seconds until the next attempt is allowed (0 when it is allowed now)."""
        return max(0.0, self._next_at - now)
