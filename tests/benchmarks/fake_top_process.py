"""Serve a generated fake TOP shop from its own process, so a benchmark's platform does not share the
engine's interpreter lock: ``python fake_top_process.py PORT TRADES BUYERS [ANCHOR_EPOCH]``.

Without ``ANCHOR_EPOCH`` the shop lives at the fixed :data:`ANCHOR` with its clock at :data:`BUSINESS_NOW`: for
benchmarks that hand the sync the same clock in-process. With it, the shop's trades end at that moment and its
clock is the wall clock: for a ``tongcrm sync`` in its own process, whose clock is the wall clock too. A shop
anchored in 2024 would make such a sync walk every empty 30-minute window from there to today (~37,000 list
calls, bulk12), which is not what a real sync of a live shop does."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import uvicorn

ANCHOR = datetime(2024, 11, 11, 23, 0, tzinfo=UTC)
BUSINESS_NOW = ANCHOR + timedelta(hours=1)


def _business_now() -> datetime:
    return BUSINESS_NOW


def _wall_now() -> datetime:
    return datetime.now(UTC)


def main() -> None:
    from tongcrm_taobao.fake_server import FakeTopGateway, create_app
    from tongcrm_taobao.fake_shop import FakeShop, ShopConfig

    port, trades, buyers = (int(a) for a in sys.argv[1:4])
    clock: Callable[[], datetime] = _business_now
    anchor = ANCHOR
    if len(sys.argv) > 4:
        anchor, clock = datetime.fromtimestamp(int(sys.argv[4]), UTC), _wall_now
    shop = FakeShop(ShopConfig(trades=trades, buyers=buyers, days=10, anchor=anchor), clock=clock)
    gateway = FakeTopGateway(shop, app_key="12345678", app_secret="bench-secret", session="bench-session")
    uvicorn.run(create_app(gateway), host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
