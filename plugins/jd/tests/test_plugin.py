"""The plugin as the core sees it: one channel, its settings and identity kinds, loadable by the host."""

from __future__ import annotations

from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import ChannelContext
from tongcrm_jd import plugin
from tongcrm_jd.adapter import JdChannelAdapter


def test_channel_spec() -> None:
    (spec,) = plugin.channels()
    assert spec.name == "jd"
    fields = {f.name: f for f in spec.settings}
    assert set(fields) == {
        "app_key",
        "app_secret",
        "access_token",
        "gateway_url",
        "initial_sync_days",
        "page_size",
        "calls_per_second",
    }
    assert {name for name, f in fields.items() if f.secret} == {"app_secret", "access_token"}
    assert fields["gateway_url"].default == "https://api.jd.com/routerjson"
    kinds = {k.name: k.strong for k in spec.identity_kinds}
    assert kinds == {"jd.open_id": True, "jd.pin": True}


async def test_host_validates_and_builds_the_adapter() -> None:
    host = PluginHost(autoload=False)
    host.register(plugin, "jd")
    spec = host.channel("jd")
    assert {"jd.open_id", "jd.pin", "mobile"} <= set(host.identity_kinds())
    settings = {"app_key": "k", "app_secret": "s", "access_token": "t"}
    adapter = spec.factory(ChannelContext(account_name="shop", settings=settings))
    assert isinstance(adapter, JdChannelAdapter)
    assert adapter.settings.page_size == 100 and adapter.settings.initial_sync_days == 30
    await adapter.aclose()
