"""Serve a generated fake TOP shop from its own process, so a benchmark's platform does not share the
engine's interpreter lock: ``python fake_top_process.py PORT TRADES BUYERS``."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import uvicorn

ANCHOR = datetime(2024, 11, 11, 23, 0, tzinfo=UTC)
BUSINESS_NOW = ANCHOR + timedelta(hours=1)


def main() -> None:
    from tongcrm_taobao.fake_server import FakeTopGateway, create_app
    from tongcrm_taobao.fake_shop import FakeShop, ShopConfig

    port, trades, buyers = (int(a) for a in sys.argv[1:4])
    shop = FakeShop(
        ShopConfig(trades=trades, buyers=buyers, days=10, anchor=ANCHOR), clock=lambda: BUSINESS_NOW
    )
    gateway = FakeTopGateway(shop, app_key="12345678", app_secret="bench-secret", session="bench-session")
    uvicorn.run(create_app(gateway), host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
