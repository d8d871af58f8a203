from __future__ import annotations

import pytest
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import ChannelAdapter, ChannelCapability, ChannelContext
from tongcrm_taobao import plugin
from tongcrm_taobao.adapter import TaobaoAdapter


def test_the_channel_registers_through_the_host() -> None:
    host = PluginHost(autoload=False)
    host.register(plugin, "taobao")
    spec = host.channel("taobao")
    assert spec.capabilities == frozenset(
        {ChannelCapability.FETCH_ORDERS, ChannelCapability.PUSH, ChannelCapability.BACKFILL_WINDOWS}
    )
    settings = {s.name: s for s in spec.settings}
    assert settings["app_secret"].secret
    assert settings["session"].secret
    assert not settings["app_key"].secret
    assert settings["sign_method"].default == "hmac-sha256"
    assert settings["gateway_url"].default == "https://eco.taobao.com/router/rest"
    kinds = host.identity_kinds()
    assert {"taobao.open_uid", "taobao.ouid", "taobao.omid"} <= set(kinds)
    assert "taobao.oaid" not in kinds


async def test_the_factory_builds_an_adapter_from_settings() -> None:
    ctx = ChannelContext("shop", {"app_key": "k", "app_secret": "s", "session": "x", "sign_method": "md5"})
    adapter = plugin.TAOBAO_CHANNEL.factory(ctx)
    assert isinstance(adapter, ChannelAdapter)
    assert isinstance(adapter, TaobaoAdapter)
    assert adapter.client.sign_method == "md5"
    assert adapter.page_size == 100
    assert adapter.initial_sync_days == 90
    await adapter.aclose()


@pytest.mark.parametrize(
    "settings",
    [
        {"app_key": "k", "app_secret": "s"},
        {"app_key": "k", "app_secret": "s", "session": "x", "sign_method": "sha1"},
        {"app_key": "k", "app_secret": "s", "session": "x", "page_size": "500"},
        {"app_key": "k", "app_secret": "s", "session": "x", "initial_sync_days": "many"},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, str]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        plugin.TAOBAO_CHANNEL.factory(ChannelContext("shop", settings))
