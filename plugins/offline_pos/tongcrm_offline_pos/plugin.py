"""Hook implementations of the offline_pos plugin; tongcrm loads this module through the ``tongcrm`` entry point.

The module-level hooks delegate to one :class:`OfflinePosPlugin`. Tests register their own instance (with a
test clock or a small rate limit) on a hermetic host instead of this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from tongcrm.plugin import hookimpl
from tongcrm.plugin.types import (
    ChannelAdapter,
    ChannelCapability,
    ChannelContext,
    ChannelSpec,
    IdentityKindSpec,
    MigrationLocation,
    RouteSpec,
    SettingField,
)

from tongcrm_offline_pos import models  # noqa: F401 - registers the plugin's tables on the core metadata
from tongcrm_offline_pos.adapter import StoreAdapter
from tongcrm_offline_pos.cards import POS_CARD
from tongcrm_offline_pos.schemas import STORE_CODE_MAX
from tongcrm_offline_pos.stores import CHANNEL, CROSS_STORE_RETURNS

if TYPE_CHECKING:
    from tongcrm_offline_pos.api import PosConfig

__all__ = [
    "STORE_CHANNEL",
    "OfflinePosPlugin",
    "channels",
    "cli_commands",
    "identity_kinds",
    "migration_locations",
    "routes",
]

REVISIONS = Path(__file__).resolve().parent / "revisions"

SETTINGS: tuple[SettingField, ...] = (
    SettingField(
        "title",
        "The store's display name, e.g. 上海南京西路店",
        required=False,
        help_by_locale={"zh": "门店显示名称，如 上海南京西路店"},
        labels={"zh": "门店名称"},
    ),
    SettingField(
        "city",
        "The city the store is in",
        required=False,
        help_by_locale={"zh": "门店所在城市"},
        labels={"zh": "城市"},
    ),
    SettingField(
        "address",
        "The store's street address",
        required=False,
        help_by_locale={"zh": "门店街道地址"},
        labels={"zh": "地址"},
    ),
    SettingField(
        CROSS_STORE_RETURNS,
        "Take back goods sold in other stores of the brand (a return naming original.store)",
        required=False,
        default="true",
        choices=("true", "false"),
        help_by_locale={"zh": "接受品牌其他门店售出商品的退货（退货单注明 original.store）"},
        labels={"zh": "跨店退货"},
    ),
)


def _factory(ctx: ChannelContext) -> ChannelAdapter:
    return StoreAdapter(ctx)


#: A store: the account name is the store code that POS keys are scoped to. Stores push receipts through the
#: POS API; the adapter's ``fetch_orders`` returns an empty caught-up page (a store is never polled).
STORE_CHANNEL = ChannelSpec(
    name=CHANNEL,
    display_name="Offline store (POS)",
    display_names={"zh": "线下门店（POS）"},
    settings=SETTINGS,
    factory=_factory,
    capabilities=frozenset({ChannelCapability.FETCH_ORDERS, ChannelCapability.STORE}),
    max_account_name=STORE_CODE_MAX,
)


class OfflinePosPlugin:
    """The plugin's hooks. The POS API (its module imports the web stack: litestar, the core's API helpers) is
    imported when the routes are asked for, by the app; a command such as ``tongcrm import`` loads this plugin
    for its channel and identity kind and never serves, and importing the API cost it ~0.3 s of CPU at every
    start (#22)."""

    def __init__(self, config: PosConfig | None = None) -> None:
        self._config = config

    @property
    def config(self) -> PosConfig:
        """The API's knobs: the ones given, else the defaults (made on first use, with the API module)."""
        if self._config is None:
            from tongcrm_offline_pos.api import PosConfig

            self._config = PosConfig()
        return self._config

    @hookimpl
    def channels(self) -> list[ChannelSpec]:
        return [STORE_CHANNEL]

    @hookimpl
    def routes(self) -> list[RouteSpec]:
        from tongcrm_offline_pos.api import build_router
        from tongcrm_offline_pos.hot import hot_routes

        return [RouteSpec(handlers=(build_router(self.config),), hot=hot_routes(self.config))]

    @hookimpl
    def identity_kinds(self) -> list[IdentityKindSpec]:
        return [POS_CARD]

    @hookimpl
    def cli_commands(self) -> list[click.Command]:
        from tongcrm_offline_pos.cli import pos_group

        return [pos_group()]

    @hookimpl
    def migration_locations(self) -> list[MigrationLocation]:
        return [MigrationLocation(branch_label="offline_pos", path=str(REVISIONS))]


_default = OfflinePosPlugin()


@hookimpl
def channels() -> list[ChannelSpec]:
    return _default.channels()


@hookimpl
def routes() -> list[RouteSpec]:
    return _default.routes()


@hookimpl
def identity_kinds() -> list[IdentityKindSpec]:
    return _default.identity_kinds()


@hookimpl
def cli_commands() -> list[click.Command]:
    return _default.cli_commands()


@hookimpl
def migration_locations() -> list[MigrationLocation]:
    return _default.migration_locations()
