"""Fake Taobao and JD shops behind their fake gateways, for tests that sync through real processes.

Each builder returns the gateway's ASGI app (serve it with :func:`tongcrm.testing.servers.serve_in_thread`), the
channel account settings (``_path`` is the gateway path to append to the served URL) and ``expected()``: the
shop's truth as ``({external id: platform status}, order line count)``. Shops are anchored ten minutes before
now, so a first sync reaches every order. The first-party plugins are imported on call only.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

Expected = Callable[[], tuple[dict[str, str], int]]


def taobao_platform(
    *, trades: int, buyers: int = 300, slow_seconds: float = 0.0, app_key: str = "12345678"
) -> tuple[Any, dict[str, str], Expected]:
    # The plugins ship no py.typed: checked alone, core needs these ignores; checked with the plugins (mypy
    # core/tongcrm plugins/...), the imports are typed and the ignores unused, which is not an error either.
    from tongcrm_taobao.fake_server import (  # type: ignore[import-untyped, unused-ignore]
        FakeTopGateway,
        FaultPlan,
        create_app,
    )
    from tongcrm_taobao.fake_shop import FakeShop, ShopConfig  # type: ignore[import-untyped, unused-ignore]

    anchor = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    shop = FakeShop(ShopConfig(trades=trades, buyers=buyers, days=2, anchor=anchor))
    faults = FaultPlan(slow=1.0, slow_seconds=slow_seconds) if slow_seconds else FaultPlan()
    gateway = FakeTopGateway(
        shop,
        app_key=app_key,
        app_secret="kill-secret",  # noqa: S106 - the fake gateway's own secret
        session="kill-session",
        faults=faults,
    )
    settings = {
        "app_key": app_key,
        "app_secret": "kill-secret",
        "session": "kill-session",
        "initial_sync_days": "3",
    }

    def expected() -> tuple[dict[str, str], int]:
        found = {str(tid): shop.trade(tid) for tid in shop.tids()}
        return {t: v["status"] for t, v in found.items()}, sum(
            len(v["orders"]["order"]) for v in found.values()
        )

    return create_app(gateway), {**settings, "_path": "/router/rest"}, expected


def jd_platform(
    *, orders: int, buyers: int = 300, slow_seconds: float = 0.0, seed: int = 8
) -> tuple[Any, dict[str, str], Expected]:
    from tongcrm_jd.fake_server import (  # type: ignore[import-untyped, unused-ignore]
        FakeJosGateway,
        FaultPlan,
        create_app,
    )
    from tongcrm_jd.fake_shop import generate_shop  # type: ignore[import-untyped, unused-ignore]

    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    shop = generate_shop(seed=seed, orders=orders, buyers=buyers, start=end - timedelta(days=2), end=end)
    faults = FaultPlan(slow_rate=1.0, slow_seconds=slow_seconds) if slow_seconds else FaultPlan()
    gateway = FakeJosGateway(
        shop=shop,
        app_key="kill-app",
        app_secret="kill-secret",  # noqa: S106 - the fake gateway's own secret
        access_tokens={"kill-token"},
        faults=faults,
    )
    settings = {
        "app_key": "kill-app",
        "app_secret": "kill-secret",
        "access_token": "kill-token",
        "initial_sync_days": "3",
    }

    def expected() -> tuple[dict[str, str], int]:
        snapshot = shop.snapshot()
        return {o: v["orderState"] for o, v in snapshot.items()}, sum(
            len(v["itemInfoList"]) for v in snapshot.values()
        )

    return create_app(gateway), {**settings, "_path": "/routerjson"}, expected
