"""The plugin host: validation of hook results, clashes, blocking, and broken plugins."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from tongcrm.errors import PluginError
from tongcrm.plugin import hookimpl
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import ChannelContext, ChannelSpec, IdentityKindSpec, OrderPage, SettingField


class _Adapter:
    async def fetch_orders(self, cursor: str | None) -> OrderPage:
        return OrderPage(orders=(), next_cursor=cursor or "", has_more=False)

    async def aclose(self) -> None:
        return None


def _channel(name: str, kinds: tuple[IdentityKindSpec, ...] = ()) -> ChannelSpec:
    return ChannelSpec(
        name=name,
        display_name=name.title(),
        settings=(SettingField("token", "API token", secret=True),),
        factory=lambda ctx: _Adapter(),
        identity_kinds=kinds,
    )


def _plugin(**hooks: object) -> object:
    return SimpleNamespace(**{name: hookimpl(func) for name, func in hooks.items()})


def test_core_declares_mobile_as_a_strong_identity_kind(plugin_host: PluginHost) -> None:
    kinds = plugin_host.identity_kinds()
    assert kinds["mobile"].strong is True


def test_registered_channel_is_listed_with_its_hooks(plugin_host: PluginHost) -> None:
    plugin_host.register(_plugin(channels=lambda: [_channel("youzan")]), "youzan")
    assert list(plugin_host.channels()) == ["youzan"]
    info = {p.name: p for p in plugin_host.plugins()}
    assert info["youzan"].hooks == ("channels",)
    adapter = plugin_host.channel("youzan").factory(ChannelContext("shop", {}))
    assert hasattr(adapter, "fetch_orders")


def test_channel_clash_names_both_plugins(plugin_host: PluginHost) -> None:
    plugin_host.register(_plugin(channels=lambda: [_channel("douyin")]), "first")
    plugin_host.register(_plugin(channels=lambda: [_channel("douyin")]), "second")
    with pytest.raises(
        PluginError, match=r"channel 'douyin' is registered by both plugin 'first' and 'second'"
    ):
        plugin_host.channels()


def test_identity_kind_clash_with_core_is_refused(plugin_host: PluginHost) -> None:
    mobile = IdentityKindSpec("mobile", strong=False, description="a weaker mobile")
    plugin_host.register(_plugin(identity_kinds=lambda: [mobile]), "sneaky")
    with pytest.raises(PluginError, match=r"identity kind 'mobile' is registered by both"):
        plugin_host.identity_kinds()


def test_channel_identity_kinds_join_the_registry(plugin_host: PluginHost) -> None:
    kind = IdentityKindSpec("youzan.open_id", strong=True, description="Youzan buyer")
    plugin_host.register(_plugin(channels=lambda: [_channel("youzan", (kind,))]), "youzan")
    assert plugin_host.identity_kinds()["youzan.open_id"] is kind


def test_identity_kinds_kept_are_read_again_after_a_plugin_comes_or_goes(plugin_host: PluginHost) -> None:
    first = plugin_host.identity_kinds()
    first.clear()  # a copy: the host's is untouched
    assert "mobile" in plugin_host.identity_kinds()
    kind = IdentityKindSpec("youzan.open_id", strong=True, description="Youzan buyer")
    plugin = _plugin(channels=lambda: [_channel("youzan", (kind,))])
    plugin_host.register(plugin, "youzan")
    assert plugin_host.identity_kinds()["youzan.open_id"] is kind
    plugin_host.unregister("youzan")
    assert "youzan.open_id" not in plugin_host.identity_kinds()


@pytest.mark.parametrize("name", ["Taobao", "tao bao", "1shop", "shop-1", ""])
def test_names_must_be_lowercase_identifiers(name: str) -> None:
    with pytest.raises(ValueError, match="must be lowercase"):
        _channel(name)


def test_wrong_result_type_names_the_plugin(plugin_host: PluginHost) -> None:
    plugin_host.register(_plugin(channels=lambda: ["taobao"]), "confused")
    with pytest.raises(
        PluginError, match=r"plugin 'confused': hook 'channels' returned str, expected ChannelSpec"
    ):
        plugin_host.channels()


def test_non_list_result_names_the_plugin(plugin_host: PluginHost) -> None:
    plugin_host.register(_plugin(channels=lambda: _channel("solo")), "lazy")
    with pytest.raises(PluginError, match=r"plugin 'lazy': hook 'channels' must return a list"):
        plugin_host.channels()


def test_unknown_hook_fails_registration_with_plugin_name(plugin_host: PluginHost) -> None:
    with pytest.raises(
        PluginError, match=r"plugin 'typo' from distribution .* does not fit the tongcrm hook contract"
    ):
        plugin_host.register(_plugin(chanels=lambda: []), "typo")
    assert "typo" not in {p.name for p in plugin_host.plugins()}


def test_blocked_plugin_is_not_registered() -> None:
    host = PluginHost(autoload=False, disabled={"youzan"})
    host.register(_plugin(channels=lambda: [_channel("youzan")]), "youzan")
    assert host.channels() == {}


def test_first_party_plugins_load_through_entry_points() -> None:
    host = PluginHost(autoload=True, disabled=set())
    names = {p.name: p.distribution for p in host.plugins()}
    assert names == {
        "taobao": "tongcrm-taobao",
        "jd": "tongcrm-jd",
        "offline_pos": "tongcrm-offline-pos",
        "sms_gateway": "tongcrm-sms-gateway",
        "demo": "tongcrm-demo",
        "webhooks": "tongcrm-webhooks",
    }


def test_blocking_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TONGCRM_DISABLE_PLUGINS", "jd, taobao")
    names = {p.name for p in PluginHost().plugins()}
    assert "jd" not in names and "taobao" not in names
    assert "offline_pos" in names


def test_autoload_can_be_turned_off_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TONGCRM_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert PluginHost().plugins() == []


def test_unregister_removes_results(plugin_host: PluginHost) -> None:
    plugin_host.register(_plugin(channels=lambda: [_channel("youzan")]), "youzan")
    assert "youzan" in plugin_host.channels()
    plugin_host.unregister("youzan")
    assert plugin_host.channels() == {}


def test_cli_command_clash_with_core_is_refused(plugin_host: PluginHost) -> None:
    import click

    plugin_host.register(_plugin(cli_commands=lambda: [click.Command("serve")]), "greedy")
    with pytest.raises(
        PluginError, match=r"command 'serve' is registered by both 'tongcrm' and plugin 'greedy'"
    ):
        plugin_host.cli_commands(reserved={"serve"})


def test_sealed_columns_are_checked_and_their_names_unique(plugin_host: PluginHost) -> None:
    import sqlalchemy as sa
    from tongcrm import rotation
    from tongcrm.plugin.types import SealedColumn

    table = sa.Table(
        "x_tokens", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("tok", sa.Text)
    )
    with pytest.raises(ValueError, match="no column 'token'"):
        SealedColumn("tokens", table, "token", "x.tokens")
    with pytest.raises(ValueError, match="context_column"):
        SealedColumn("tokens", table, "tok", lambda row_id: f"x.{row_id}")
    one = SealedColumn("tokens", table, "tok", lambda row_id: f"x.{row_id}", "id")
    assert one.context_of(7) == "x.7"
    plugin_host.register(SimpleNamespace(sealed_columns=hookimpl(lambda: [one])), "first")
    plugin_host.register(SimpleNamespace(sealed_columns=hookimpl(lambda: [one])), "second")
    with pytest.raises(PluginError, match="'tokens' is registered by both plugin 'first' and 'second'"):
        plugin_host.sealed_columns()
    plugin_host.unregister("second")
    plugin_host.register(
        SimpleNamespace(sealed_columns=hookimpl(lambda: [SealedColumn("member mobiles", table, "tok", "x")])),
        "third",
    )
    with pytest.raises(PluginError, match="name of one of the core's"):
        rotation._stores(plugin_host)


class _Policy:
    @hookimpl
    def resolve_member(self, claims: object, matches: object) -> None:
        return None


def test_resolution_is_core_until_a_plugin_implements_the_policy() -> None:
    host = PluginHost(autoload=False)
    assert host.resolution_is_core()
    assert PluginHost(
        autoload=False, builtins=False
    ).resolution_is_core()  # no policy at all: the core default
    host.register(_Policy(), "policy")
    assert not host.resolution_is_core()
    host.unregister("policy")
    assert host.resolution_is_core()
