"""Hook implementations of the sms_gateway plugin; tongcrm loads this module through its entry point.

Registration only: the messenger, and the callback routes for delivery reports and replies
(:mod:`tongcrm_sms_gateway.routes`).
"""

from __future__ import annotations

from collections.abc import Sequence

from tongcrm.plugin import hookimpl
from tongcrm.plugin.types import MessengerSpec, RouteSpec, SettingField

from tongcrm_sms_gateway.aliyun import DEFAULT_ENDPOINT
from tongcrm_sms_gateway.messenger import messenger_from_context

__all__ = ["ALIYUN_SMS", "messengers", "routes"]

ALIYUN_SMS = MessengerSpec(
    name="aliyun_sms",
    display_name="Aliyun SMS (dysmsapi)",
    settings=(
        SettingField(
            "access_key_id",
            "AccessKey ID of a RAM user allowed to send SMS",
            help_by_locale={"zh": "有短信发送权限的 RAM 用户的 AccessKey ID（在阿里云 RAM 控制台创建）"},
            labels={"zh": "AccessKey ID"},
        ),
        SettingField(
            "access_key_secret",
            "AccessKey secret of that RAM user",
            secret=True,
            help_by_locale={"zh": "该 RAM 用户的 AccessKey Secret，用于每次请求的签名；只在创建时显示一次"},
            labels={"zh": "AccessKey 密钥（Secret）"},
        ),
        SettingField(
            "endpoint",
            "dysmsapi endpoint; point it at the fake gateway for demos and tests",
            required=False,
            default=DEFAULT_ENDPOINT,
            help_by_locale={"zh": "短信服务（dysmsapi）的接口地址；演示和测试时指向模拟网关"},
            labels={"zh": "接口地址"},
        ),
        SettingField(
            "region",
            "RegionId sent with every request",
            required=False,
            default="cn-hangzhou",
            help_by_locale={"zh": "每次请求携带的地域 ID（RegionId），如 cn-hangzhou"},
            labels={"zh": "地域（RegionId）"},
        ),
        SettingField(
            "timeout_seconds",
            "HTTP timeout per request, in seconds",
            required=False,
            default="10",
            help_by_locale={"zh": "每次请求的超时时间（秒）"},
            labels={"zh": "请求超时（秒）"},
        ),
        SettingField(
            "max_send_rate",
            "most messages released in any one second (blank: no limit beyond the platform's)",
            required=False,
            help_by_locale={"zh": "每秒最多发出多少条短信（留空：只受阿里云平台自身的限制）"},
            labels={"zh": "每秒发送上限"},
        ),
        SettingField(
            "concurrency",
            "requests in flight at once",
            required=False,
            default="4",
            help_by_locale={"zh": "同时进行中的请求数"},
            labels={"zh": "并发请求数"},
        ),
    ),
    factory=messenger_from_context,
)


@hookimpl
def messengers() -> Sequence[MessengerSpec]:
    return [ALIYUN_SMS]


@hookimpl
def routes() -> Sequence[RouteSpec]:
    from tongcrm_sms_gateway.routes import route_spec

    return [route_spec()]
