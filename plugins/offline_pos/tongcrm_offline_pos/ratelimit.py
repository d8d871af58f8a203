"""A token bucket per POS API key, in process memory.

Why in-process: a till talks to one tongcrm process at a time and the limit exists to stop a stuck or
misbehaving till from crowding out the others, not to meter billing. With several tongcrm processes behind a
load balancer each process keeps its own buckets, so a key may get up to (processes × rate); put a shared
limiter in the proxy if that matters. Buckets of keys unseen for ten minutes are dropped.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBucket:
    """``rate`` requests per second on average, bursts of up to ``burst``."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        idle_seconds: float = 600,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least one")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._idle = idle_seconds
        self._buckets: dict[object, _Bucket] = {}
        self._lock = threading.Lock()
        self._last_sweep = clock()

    def take(self, key: object) -> float:
        """Take one token for ``key``: 0 when allowed, else the seconds until a token is available."""
        with self._lock:
            now = self._clock()
            if now - self._last_sweep > self._idle:
                self._buckets = {k: b for k, b in self._buckets.items() if now - b.updated <= self._idle}
                self._last_sweep = now
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate

    @staticmethod
    def retry_after(wait: float) -> int:
        """Whole seconds for a ``Retry-After`` header (at least one)."""
        return max(1, math.ceil(wait))
