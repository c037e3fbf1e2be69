"""Capped exponential backoff with full jitter, as in AWS's "Exponential Backoff And Jitter".

Attempt n waits a random time in [0, min(cap, base * 2**n)]: the jitter spreads a fleet
that lost the server at the same moment, so it does not come back in lockstep. There is
no attempt limit: the agent never gives up on the server.
"""

from __future__ import annotations

import random

from agent import defaults


class Backoff:
    """One retry sequence; call :meth:`reset` after a success."""

    def __init__(
        self,
        base: float = defaults.BACKOFF_BASE,
        cap: float = defaults.BACKOFF_CAP,
        rng: random.Random | None = None,
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self._rng = rng or random.Random()
        self.attempts = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        """Seconds to wait before the next attempt; counts the attempt.

        ``retry_after`` (the server's Retry-After) is a floor: the agent never comes back
        sooner than asked. A little jitter is added on top, because every agent the
        server turned away at the same moment was told the same number.
        """
        ceiling = min(self.cap, self.base * 2 ** min(self.attempts, 62))
        self.attempts += 1
        delay = self._rng.uniform(0, ceiling)
        if retry_after is not None and retry_after > 0:
            spread = min(retry_after * 0.1, self.cap)
            delay = max(delay, retry_after + self._rng.uniform(0, spread))
        return delay

    def reset(self) -> None:
        self.attempts = 0
