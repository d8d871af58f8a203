"""A sliding-window send-rate limiter.

Gateways and carriers judge a sender by how many messages arrive in a window, not by an average, so the
limiter enforces exactly that: in every ``window`` seconds at most ``rate`` messages are released. It is the
same definition the fake gateway's meter checks (:class:`tongcrm_sms_gateway.fake_server.SendRateMeter`).
A request of ``n`` messages takes ``n`` permits at once, so callers keep requests no larger than ``rate``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

__all__ = ["SlidingWindowLimiter"]


class SlidingWindowLimiter:
    """Release at most ``rate`` permits in any ``window`` seconds, first come first served.

    The lock is held while waiting so that a large request is not starved by a stream of small ones.
    """

    def __init__(
        self,
        rate: int,
        window: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate < 1 or window <= 0:
            raise ValueError("rate must be >= 1 and window > 0")
        self.rate = rate
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._granted: deque[tuple[float, int]] = deque()
        self._in_window = 0
        self._lock = asyncio.Lock()

    async def acquire(self, permits: int) -> None:
        if not 0 < permits <= self.rate:
            raise ValueError(f"cannot take {permits} permits from a limiter of {self.rate} per window")
        async with self._lock:
            while True:
                now = self._clock()
                while self._granted and self._granted[0][0] <= now - self.window:
                    self._in_window -= self._granted.popleft()[1]
                if self._in_window + permits <= self.rate:
                    self._granted.append((now, permits))
                    self._in_window += permits
                    return
                # Wait until enough of the oldest grants have left the window.
                freed, wait_until = self._in_window, now
                for at, count in self._granted:
                    freed -= count
                    wait_until = at + self.window
                    if freed + permits <= self.rate:
                        break
                await self._sleep(max(wait_until - now, 0.001))
