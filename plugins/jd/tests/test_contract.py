"""The core's channel contract, run against the JD plugin over its real client and a fake JOS gateway served
on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from tongcrm.testing.contract import ChannelContract
from tongcrm.testing.servers import serve_in_thread
from tongcrm_jd.fake_server import FakeJosGateway, create_app
from tongcrm_jd.fake_shop import generate_shop

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


class TestJdChannelContract(ChannelContract):
    channel_name = "jd"

    @pytest.fixture
    def channel_clock(self) -> Callable[[], datetime]:
        return lambda: NOW + timedelta(minutes=10)

    @pytest.fixture
    def channel_settings(self, channel_clock: Callable[[], datetime]) -> Iterator[dict[str, str]]:
        shop = generate_shop(seed=11, orders=250, buyers=60, start=NOW - timedelta(days=3), end=NOW)
        gateway = FakeJosGateway(
            shop=shop,
            app_key="contract-app",
            app_secret="contract-secret",
            access_tokens={"contract-token"},
            clock=channel_clock,
        )
        with serve_in_thread(create_app(gateway)) as url:
            yield {
                "app_key": "contract-app",
                "app_secret": "contract-secret",
                "access_token": "contract-token",
                "gateway_url": f"{url}/routerjson",
                "initial_sync_days": "4",
            }
