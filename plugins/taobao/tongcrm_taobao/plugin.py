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
    SettingField(
        "app_key",
        "TOP application key (AppKey) of the ISV application",
        help_by_locale={"zh": "ISV 应用在淘宝开放平台（TOP）的 AppKey"},
        labels={"zh": "应用 AppKey"},
    ),
    SettingField(
        "app_secret",
        "TOP application secret (AppSecret); signs every request",
        secret=True,
        help_by_locale={"zh": "ISV 应用的 AppSecret，用于每次请求的签名"},
        labels={"zh": "应用密钥（AppSecret）"},
    ),
    SettingField(
        "session",
        "The seller's OAuth session key (access token) for this shop",
        secret=True,
        help_by_locale={
            "zh": "本店铺的卖家授权 SessionKey（访问令牌）：店铺在淘宝开放平台重新授权应用后获得"
        },
        labels={"zh": "卖家授权码（SessionKey）"},
    ),
    SettingField(
        "gateway_url",
        "TOP gateway; the sandbox is https://gw.api.tbsandbox.com/router/rest",
        required=False,
        default=DEFAULT_GATEWAY,
        help_by_locale={"zh": "TOP 网关地址；沙箱环境为 https://gw.api.tbsandbox.com/router/rest"},
        labels={"zh": "网关地址"},
    ),
    SettingField(
        "sign_method",
        "How requests are signed: md5, hmac (HMAC-MD5) or hmac-sha256",
        required=False,
        default="hmac-sha256",
        choices=SIGN_METHODS,
        help_by_locale={"zh": "请求签名方式：md5、hmac（HMAC-MD5）或 hmac-sha256"},
        labels={"zh": "签名方式"},
    ),
    SettingField(
        "initial_sync_days",
        "How many days back the first sync starts (1-90: the trade APIs only reach back three months)",
        required=False,
        default="90",
        help_by_locale={"zh": "首次同步从多少天前开始（1–90：交易接口最多只能追溯三个月）"},
        labels={"zh": "首次同步天数"},
    ),
    SettingField(
        "page_size",
        "Trades per API call and the size of one sync page (1-100)",
        required=False,
        default="100",
        help_by_locale={"zh": "每次调用接口拉取的交易数，也是一页同步的大小（1–100）"},
        labels={"zh": "每页订单数"},
    ),
    SettingField(
        "tmc_group",
        "TMC message group this account consumes (trade and refund topics must be permitted for the seller)",
        required=False,
        default="default",
        help_by_locale={"zh": "本账户消费的 TMC 消息分组（需为卖家开通交易与退款消息）"},
        labels={"zh": "消息服务分组（TMC）"},
    ),
    SettingField(
        "calls_per_second",
        "The TOP app's call limit per second, shared by every shop of the app on every worker (0: none)",
        required=False,
        default="0",
        help_by_locale={"zh": "TOP 应用每秒调用上限，由该应用下所有店铺、所有 worker 共享（0：不限）"},
        labels={"zh": "每秒调用上限"},
    ),
)


def _factory(ctx: ChannelContext) -> ChannelAdapter:
    return TaobaoAdapter(ctx)


TAOBAO_CHANNEL = ChannelSpec(
    name="taobao",
    display_name="Taobao / Tmall",
    display_names={"zh": "淘宝 / 天猫"},
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
