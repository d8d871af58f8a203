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
        SettingField("access_key_id", "AccessKey ID of a RAM user allowed to send SMS"),
        SettingField("access_key_secret", "AccessKey secret of that RAM user", secret=True),
        SettingField(
            "endpoint",
            "dysmsapi endpoint; point it at the fake gateway for demos and tests",
            required=False,
            default=DEFAULT_ENDPOINT,
        ),
        SettingField("region", "RegionId sent with every request", required=False, default="cn-hangzhou"),
        SettingField("timeout_seconds", "HTTP timeout per request, in seconds", required=False, default="10"),
        SettingField(
            "max_send_rate",
            "most messages released in any one second (blank: no limit beyond the platform's)",
            required=False,
        ),
        SettingField("concurrency", "requests in flight at once", required=False, default="4"),
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
