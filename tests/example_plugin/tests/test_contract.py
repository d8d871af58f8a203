"""tongcrm's channel contract against this plugin's adapter and its fake platform, plus its failure handling."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tongcrm.plugin.errors import ChannelAuthError, ChannelUnavailable
from tongcrm.plugin.types import ChannelContext
from tongcrm.testing.contract import ChannelContract
from tongcrm.testing.servers import serve_in_thread
from tongcrm_example_mall.adapter import adapter_from_context
from tongcrm_example_mall.fake_server import FakeShop, create_app


@pytest.fixture(scope="module")
def shop() -> FakeShop:
    return FakeShop.generate("contract-key", "contract-secret")


@pytest.fixture(scope="module")
def shop_url(shop: FakeShop) -> Iterator[str]:
    with serve_in_thread(create_app(shop)) as url:
        yield url


class TestChannelContract(ChannelContract):
    channel_name = "example_mall"

    @pytest.fixture
    def channel_settings(self, shop_url: str) -> dict[str, str]:
        return {
            "api_key": "contract-key",
            "api_secret": "contract-secret",
            "gateway_url": shop_url,
            "page_size": "25",
        }


async def test_a_refused_secret_is_an_auth_error(shop_url: str) -> None:
    adapter = adapter_from_context(
        ChannelContext("demo", {"api_key": "contract-key", "api_secret": "wrong", "gateway_url": shop_url})
    )
    with pytest.raises(ChannelAuthError):
        await adapter.fetch_orders(None)
    await adapter.aclose()


async def test_an_unavailable_platform_is_transient(shop: FakeShop, shop_url: str) -> None:
    adapter = adapter_from_context(
        ChannelContext(
            "demo", {"api_key": "contract-key", "api_secret": "contract-secret", "gateway_url": shop_url}
        )
    )
    shop.unavailable = 1
    with pytest.raises(ChannelUnavailable):
        await adapter.fetch_orders(None)
    page = await adapter.fetch_orders(None)  # the next try goes through
    assert page.orders
    await adapter.aclose()
