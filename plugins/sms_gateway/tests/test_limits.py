from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from tongcrm_sms_gateway.fake_limits import FlowControl, SendRateMeter
from tongcrm_sms_gateway.phones import from_platform, mask, to_domestic
from tongcrm_sms_gateway.ratelimit import SlidingWindowLimiter


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_limiter_never_exceeds_rate_in_any_window() -> None:
    ticks = Ticks()
    limiter = SlidingWindowLimiter(10, 1.0, clock=ticks, sleep=ticks.sleep)
    meter = SendRateMeter(clock=ticks)
    for size in [3, 4, 3, 5, 1, 10, 2, 7, 7, 1]:
        await limiter.acquire(size)
        meter.record(size)
    assert meter.total == 43
    assert meter.max_in_window(1.0) == 10
    assert ticks.now == pytest.approx(4.0, abs=0.01)  # 43 permits at 10/s: the fifth window opens at t=4


async def test_limiter_refuses_requests_larger_than_rate() -> None:
    with pytest.raises(ValueError, match="permits"):
        await SlidingWindowLimiter(5).acquire(6)


async def test_limiter_is_fifo_under_concurrency() -> None:
    limiter = SlidingWindowLimiter(2, 0.05)
    order: list[int] = []

    async def take(i: int) -> None:
        await limiter.acquire(2)
        order.append(i)

    await asyncio.gather(*(take(i) for i in range(4)))
    assert order == [0, 1, 2, 3]


def test_meter_window_is_half_open() -> None:
    times = iter([0.0, 0.5, 1.0, 1.0])
    meter = SendRateMeter(clock=lambda: next(times))
    for _ in range(4):
        meter.record(1)
    assert meter.max_in_window(1.0) == 3  # (0, 1] holds 0.5, 1.0, 1.0


def test_flow_control_counts_a_number_listed_twice() -> None:
    flow = FlowControl()
    now = datetime(2024, 1, 1, tzinfo=UTC)
    flow.record("notice", "s", "t", ["13900000001"] * 49, now)
    assert flow.allows("notice", "s", "t", ["13900000001"], now)
    assert not flow.allows("notice", "s", "t", ["13900000001"] * 2, now)
    assert flow.allows("notice", "s", "t", ["13900000001"] * 2, now + timedelta(days=1, seconds=1))


def test_verification_platform_wide_cap() -> None:
    flow = FlowControl()
    now = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(40):  # 40 signatures, one code each, spaced out
        flow.record("verification", f"sign{i}", "t", ["13900000001"], now + timedelta(minutes=2 * i))
    later = now + timedelta(hours=2)
    assert not flow.allows("verification", "a-new-sign", "t", ["13900000001"], later)


def test_phone_helpers() -> None:
    assert to_domestic("+8613800138000") == "13800138000"
    assert to_domestic("+85291234567") is None
    assert to_domestic("13800138000") is None
    assert from_platform("8613800138000") == "+8613800138000"
    assert from_platform("138 0013 8000") == "+8613800138000"
    assert from_platform("12800138000") is None
    assert mask("+8613800138000") == "138******00"
    assert "0013" not in mask("13800138000")
