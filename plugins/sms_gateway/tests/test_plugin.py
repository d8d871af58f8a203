from __future__ import annotations

from datetime import UTC, datetime

import pytest
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import Messenger, MessengerContext
from tongcrm_sms_gateway import plugin
from tongcrm_sms_gateway.messenger import AliyunSmsMessenger


def test_messenger_is_registered_through_the_host() -> None:
    host = PluginHost(autoload=False, builtins=False)
    host.register(plugin, "sms_gateway")
    spec = host.messengers()["aliyun_sms"]
    settings = {s.name: s for s in spec.settings}
    assert settings["access_key_secret"].secret
    assert not settings["access_key_id"].secret
    assert settings["endpoint"].default == "https://dysmsapi.aliyuncs.com/"
    assert settings["region"].default == "cn-hangzhou"


async def test_factory_builds_a_messenger_from_settings() -> None:
    context = MessengerContext(
        name="aliyun_sms",
        settings={
            "access_key_id": "id",
            "access_key_secret": "secret",
            "max_send_rate": "30",
            "endpoint": "",
        },
        clock=lambda: datetime(2024, 1, 1, tzinfo=UTC),
    )
    messenger = plugin.ALIYUN_SMS.factory(context)
    assert isinstance(messenger, Messenger)
    assert isinstance(messenger, AliyunSmsMessenger)
    assert messenger.max_batch == 1000
    await messenger.aclose()


@pytest.mark.parametrize(
    "settings",
    [{"access_key_id": "id"}, {"access_key_id": "id", "access_key_secret": "s", "max_send_rate": "0"}],
)
def test_factory_refuses_bad_settings(settings: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"access_key|max_send_rate"):
        plugin.ALIYUN_SMS.factory(MessengerContext(name="aliyun_sms", settings=settings))
