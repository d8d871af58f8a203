"""Serve a generated fake JD shop from its own process: ``python fake_jd_process.py PORT ORDERS BUYERS``."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import uvicorn

END = datetime(2024, 11, 11, 23, 0, tzinfo=UTC)
BUSINESS_NOW = END + timedelta(minutes=30)


def main() -> None:
    from tongcrm_jd.fake_server import FakeJosGateway, create_app
    from tongcrm_jd.fake_shop import generate_shop

    port, orders, buyers = (int(a) for a in sys.argv[1:4])
    shop = generate_shop(seed=21, orders=orders, buyers=buyers, start=END - timedelta(days=10), end=END)
    gateway = FakeJosGateway(
        shop=shop,
        app_key="bench-app",
        app_secret="bench-secret",
        access_tokens={"bench-token"},
        clock=lambda: BUSINESS_NOW,
    )
    uvicorn.run(create_app(gateway), host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
