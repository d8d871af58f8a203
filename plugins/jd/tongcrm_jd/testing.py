"""Helpers for tests and demos that drive the JD adapter against the fake gateway with time under control.

They live in the package (not in a conftest) so that cross-package tests and benchmarks can use them too.
"""

from __future__ import annotations

from datetime import datetime, timedelta


class ManualClock:
    """A clock that only moves when told to; pass it to the gateway, the client and the adapter alike."""

    def __init__(self, now: datetime) -> None:
        if now.tzinfo is None:
            raise ValueError("the clock needs an aware datetime")
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


class RecordingSleep:
    """An injectable ``sleep`` that returns at once and remembers what it was asked to wait."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
