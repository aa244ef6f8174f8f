"""Pacing of retries and of repeated log lines: capped exponential back-off with jitter, and a
rate-limited logger, so no error ever turns into a tight loop or a log flood (cases C09, C14)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable


class Backoff:
    """Capped exponential back-off with jitter.

    Delay ``n`` (seconds) is ``min(initial_s * 2**n, max_s)`` times a random factor in
    ``[1 - jitter, 1 + jitter]``; :meth:`reset` after a success starts again at ``initial_s``.
    """

    def __init__(self, initial_s: float = 0.1, max_s: float = 5.0, *, jitter: float = 0.2,
                 rand: Callable[[], float] = random.random) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter = jitter
        self.rand = rand
        self.attempt = 0

    def next_delay(self) -> float:
        """The next delay in seconds (and count the attempt)."""
        base = min(self.initial_s * (2 ** self.attempt), self.max_s)
        self.attempt += 1
        return base * (1.0 + self.jitter * (2.0 * self.rand() - 1.0))

    def reset(self) -> None:
        self.attempt = 0

    async def sleep(self, stop: asyncio.Event | None = None) -> float:
        """Sleep the next delay, waking early when ``stop`` is set. Returns the delay chosen (s)."""
        delay = self.next_delay()
        if stop is None:
            await asyncio.sleep(delay)
        else:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
        return delay


class RateLimitedLog:
    """Emit a repeated message at most once per ``interval_s``; say how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = 30.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last = float("-inf")
        self.suppressed = 0

    def log(self, level: int, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless one was logged less than ``interval_s`` ago.

        Returns:
            True if the line was emitted.
        """
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self.suppressed += 1
            return False
        if self.suppressed:
            msg = f"{msg} (%d similar messages suppressed)"
            args = (*args, self.suppressed)
        self.logger.log(level, msg, *args)
        self._last = now
        self.suppressed = 0
        return True
