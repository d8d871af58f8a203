"""Hook implementations of the taobao plugin; tongcrm loads this module through the ``tongcrm`` entry point.

The channel (order sync, and TMC push through :mod:`tongcrm_taobao.tmc`: ``ChannelCapability.PUSH``) and the
routes of Tmall's 会员通 SPIs (:mod:`tongcrm_taobao.membership`, served through the core's ``MembershipService``).
"""

from __future__ import annotations

from tongcrm.plugin import hookimpl
from tongcrm.plugin.types import (
    ChannelAdapter,
    ChannelCapability,
    ChannelContext,
    ChannelSpec,
    RouteSpec,
    SettingField,
)

from tongcrm_taobao.adapter import TaobaoAdapter
from tongcrm_taobao.client import DEFAULT_GATEWAY
from tongcrm_taobao.normalise import IDENTITY_KINDS
from tongcrm_taobao.signing import SIGN_METHODS

__all__ = ["SETTINGS", "TAOBAO_CHANNEL", "channels"]

SETTINGS: tuple[SettingField, ...] = (
    SettingField("app_key", "TOP application key (AppKey) of the ISV application"),
    SettingField("app_secret", "TOP application secret (AppSecret); signs every request", secret=True),
    SettingField("session", "The seller's OAuth session key (access token) for this shop", secret=True),
    SettingField(
        "gateway_url",
        "TOP gateway; the sandbox is https://gw.api.tbsandbox.com/router/rest",
        required=False,
        default=DEFAULT_GATEWAY,
    ),
    SettingField(
        "sign_method",
        "How requests are signed: md5, hmac (HMAC-MD5) or hmac-sha256",
        required=False,
        default="hmac-sha256",
        choices=SIGN_METHODS,
    ),
    SettingField(
        "initial_sync_days",
        "How many days back the first sync starts (1-90: the trade APIs only reach back three months)",
        required=False,
        default="90",
    ),
    SettingField(
        "page_size",
        "Trades per API call and the size of one sync page (1-100)",
        required=False,
        default="100",
    ),
    SettingField(
        "tmc_group",
        "TMC message group this account consumes (trade and refund topics must be permitted for the seller)",
        required=False,
        default="default",
    ),
    SettingField(
        "calls_per_second",
        "The TOP app's call limit per second, shared by every shop of the app on every worker (0: none)",
        required=False,
        default="0",
    ),
)


def _factory(ctx: ChannelContext) -> ChannelAdapter:
    return TaobaoAdapter(ctx)


TAOBAO_CHANNEL = ChannelSpec(
    name="taobao",
    display_name="Taobao / Tmall",
    settings=SETTINGS,
    factory=_factory,
    capabilities=frozenset(
        {ChannelCapability.FETCH_ORDERS, ChannelCapability.PUSH, ChannelCapability.BACKFILL_WINDOWS}
    ),
    identity_kinds=IDENTITY_KINDS,
    # the seller re-authorises the app on Taobao and brings back a new session key; the app's key stays
    reauthorise=("session",),
)


@hookimpl
def channels() -> list[ChannelSpec]:
    return [TAOBAO_CHANNEL]


@hookimpl
def routes() -> list[RouteSpec]:
    """Tmall's 会员通 SPIs (bind-query, bind, register), authenticated by the platform's signature."""
    from tongcrm_taobao.membership import MEMBERSHIP_ROUTES

    return [MEMBERSHIP_ROUTES]
