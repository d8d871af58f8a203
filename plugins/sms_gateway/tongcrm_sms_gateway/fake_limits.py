"""The counting parts of the fake gateway: per-number flow control and a send-rate meter.

Flow control follows Aliyun's published rules (protocols.md §3.1): rolling windows counted on submit;
verification codes 1/min, 5/h and 10/day per signature and number plus 40/day per number across the platform;
notices and promotions 50/day per signature, template and number. The meter exists so that a benchmark can
prove that tongcrm never exceeds the send rate it was configured with.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

__all__ = ["FlowControl", "SendRateMeter"]

MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)

_VERIFICATION_PER_SIGNATURE = ((MINUTE, 1), (HOUR, 5), (DAY, 10))
_VERIFICATION_PER_NUMBER = ((DAY, 40),)
_NOTICE_PER_TEMPLATE = ((DAY, 50),)


class FlowControl:
    """Rolling-window counters keyed like the platform keys them."""

    def __init__(self) -> None:
        self._sent: defaultdict[tuple[str, ...], deque[datetime]] = defaultdict(deque)

    @staticmethod
    def _keys(
        kind: str, sign: str, template: str, phone: str
    ) -> list[tuple[tuple[str, ...], tuple[tuple[timedelta, int], ...]]]:
        if kind == "verification":
            return [
                (("v", sign, phone), _VERIFICATION_PER_SIGNATURE),
                (("v*", phone), _VERIFICATION_PER_NUMBER),
            ]
        return [(("n", sign, template, phone), _NOTICE_PER_TEMPLATE)]

    def _count(self, key: tuple[str, ...], window: timedelta, now: datetime) -> int:
        times = self._sent[key]
        while times and times[0] <= now - DAY:  # nothing older than the longest window matters
            times.popleft()
        return sum(1 for at in times if at > now - window)

    def allows(self, kind: str, sign: str, template: str, phones: Iterable[str], now: datetime) -> bool:
        """Whether every number may receive one more message now (a number listed twice counts twice)."""
        pending: defaultdict[tuple[str, ...], int] = defaultdict(int)
        for phone in phones:
            for key, limits in self._keys(kind, sign, template, phone):
                pending[key] += 1
                for window, limit in limits:
                    if self._count(key, window, now) + pending[key] > limit:
                        return False
        return True

    def record(self, kind: str, sign: str, template: str, phones: Iterable[str], now: datetime) -> None:
        for phone in phones:
            for key, _ in self._keys(kind, sign, template, phone):
                self._sent[key].append(now)


class SendRateMeter:
    """Arrival times of accepted messages, and the most that ever arrived within one window.

    A window is half-open, ``(t - window, t]`` — the same definition the client's limiter enforces.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._times: list[float] = []

    def record(self, count: int) -> None:
        now = self._clock()
        self._times.extend([now] * count)

    @property
    def total(self) -> int:
        return len(self._times)

    def max_in_window(self, window: float = 1.0) -> int:
        times = sorted(self._times)
        best = 0
        for j, at in enumerate(times):
            i = bisect.bisect_right(times, at - window)
            best = max(best, j - i + 1)
        return best

    def reset(self) -> None:
        self._times.clear()
