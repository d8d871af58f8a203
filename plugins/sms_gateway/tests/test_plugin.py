from __future__ import annotations

from datetime import UTC, datetime

import pytest
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import Messenger, MessengerContext, SendOutcome, SendRateGate
from tongcrm_sms_gateway import plugin
from tongcrm_sms_gateway.fake_server import FakeAliyun
from tongcrm_sms_gateway.messenger import RATE_WINDOW_MARGIN, AliyunSmsMessenger

from .conftest import MessengerFactory, message


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


class RecordingGate:
    """A stand-in for the core's shared send-rate window: records what the messenger asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, float]] = []
        self.released = 0

    async def acquire(self, permits: int, *, rate: int, window: float) -> RecordingGate:
        self.calls.append((permits, rate, window))
        return self

    async def release(self, *, in_doubt: bool = False) -> None:
        self.released += 1


async def test_the_shared_rate_gate_replaces_the_in_memory_window(
    fake: FakeAliyun, messenger_for: MessengerFactory
) -> None:
    gate = RecordingGate()
    assert isinstance(gate, SendRateGate)
    messenger = messenger_for(fake, max_rate=3, rate_gate=gate)
    # five personal messages: SendBatchSms requests of at most 3 numbers, each drawing from the gate
    batch = [message(i, name=f"n{i}") for i in range(5)]
    results = await messenger.send(batch)
    assert {r.outcome for r in results} == {SendOutcome.SENT}
    assert sorted(permits for permits, _, _ in gate.calls) == [2, 3]
    assert {(rate, window) for _, rate, window in gate.calls} == {(3, 1.0 + RATE_WINDOW_MARGIN)}
    assert sum(permits for permits, _, _ in gate.calls) == fake.meter.total == 5
    assert gate.released == len(gate.calls)  # every grant released once its request finished


async def test_factory_hands_the_context_gate_to_the_messenger() -> None:
    gate = RecordingGate()
    settings = {"access_key_id": "id", "access_key_secret": "s", "max_send_rate": "7"}
    with_gate = plugin.ALIYUN_SMS.factory(MessengerContext("aliyun_sms", settings, rate_gate=gate))
    without = plugin.ALIYUN_SMS.factory(MessengerContext("aliyun_sms", settings))
    assert isinstance(with_gate, AliyunSmsMessenger) and isinstance(without, AliyunSmsMessenger)
    async with with_gate._permits(7):
        assert gate.released == 0  # held while the request is in flight
    async with without._permits(7):  # the in-memory window, for this messenger only
        pass
    assert gate.calls == [(7, 7, 1.0 + RATE_WINDOW_MARGIN)] and gate.released == 1
    for messenger in (with_gate, without):
        await messenger.aclose()
