"""The core's channel contract, run against the Taobao plugin over its real client and a fake TOP gateway
served on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from tongcrm.testing.contract import ChannelContract
from tongcrm.testing.servers import serve_in_thread
from tongcrm_taobao.fake_server import FakeTopGateway, create_app
from tongcrm_taobao.fake_shop import FakeShop, ShopConfig

ANCHOR = datetime(2024, 6, 18, 12, 0, tzinfo=UTC)


class TestTaobaoChannelContract(ChannelContract):
    channel_name = "taobao"

    @pytest.fixture
    def channel_clock(self) -> Callable[[], datetime]:
        return lambda: ANCHOR + timedelta(hours=1)

    @pytest.fixture
    def channel_settings(self, channel_clock: Callable[[], datetime]) -> Iterator[dict[str, str]]:
        shop = FakeShop(ShopConfig(trades=250, buyers=60, days=3, anchor=ANCHOR), clock=channel_clock)
        gateway = FakeTopGateway(
            shop, app_key="12345678", app_secret="contract-secret", session="contract-session"
        )
        with serve_in_thread(create_app(gateway)) as url:
            yield {
                "app_key": "12345678",
                "app_secret": "contract-secret",
                "session": "contract-session",
                "gateway_url": f"{url}/router/rest",
                "initial_sync_days": "4",
            }
