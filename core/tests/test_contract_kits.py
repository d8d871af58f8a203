"""The messenger and entitlement-provider contract kits: an in-memory coupon provider passes the entitlement kit
(the SMS gateway passes the messenger kit in ``plugins/sms_gateway/tests/test_contract.py``), and the kits fail
implementations that break the rules they check."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from tongcrm.plugin import hookimpl
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import (
    EntitlementProviderSpec,
    FulfilmentRequest,
    FulfilmentResult,
    OutboundMessage,
    SendOutcome,
    SendResult,
)
from tongcrm.testing.contract import EntitlementProviderContract, MessengerContract, RecordingRateGate


class CouponPlatform:
    """A shop's coupon API, in memory: one coupon per grant id, whatever the number of calls."""

    def __init__(self, *, idempotent: bool = True) -> None:
        self.coupons: dict[str, str] = {}
        self.issued: list[str] = []
        self._numbers = itertools.count(1)
        self.idempotent = idempotent

    def __call__(self, settings: Mapping[str, str]) -> CouponPlatform:
        return self

    async def fulfil(self, request: FulfilmentRequest) -> FulfilmentResult:
        if request.entitlement not in ("birthday_coupon", "free_shipping"):
            return FulfilmentResult(ok=False, detail=f"cannot issue {request.entitlement}")
        if self.idempotent and request.grant_id in self.coupons:
            return FulfilmentResult(ok=True, reference=self.coupons[request.grant_id])
        coupon = f"CP{next(self._numbers):06d}"
        self.coupons[request.grant_id] = coupon
        self.issued.append(coupon)
        return FulfilmentResult(ok=True, reference=coupon)


class CouponPlugin:
    def __init__(self, platform: CouponPlatform) -> None:
        self.platform = platform

    @hookimpl
    def entitlement_providers(self) -> list[EntitlementProviderSpec]:
        return [
            EntitlementProviderSpec("memory_coupons", ("birthday_coupon", "free_shipping"), self.platform)
        ]


class TestMemoryCouponsContract(EntitlementProviderContract):
    provider_name = "memory_coupons"

    @pytest.fixture
    def provider_host(self) -> PluginHost:
        host = PluginHost(autoload=False)
        host.register(CouponPlugin(CouponPlatform()), "memory_coupons")
        return host


async def test_the_entitlement_kit_fails_a_provider_that_issues_twice() -> None:
    platform = CouponPlatform(idempotent=False)
    spec = CouponPlugin(platform).entitlement_providers()[0]
    kit = TestMemoryCouponsContract()
    with pytest.raises(AssertionError, match="second benefit"):
        await kit.test_fulfilment_is_idempotent_by_grant_id(platform, spec, {"value": 1})
    assert len(platform.issued) == 2


class DroppingMessenger:
    """Answers for the first message of a batch only and forgets its rate grant: two contract breaches."""

    max_batch = 10

    def __init__(self) -> None:
        self.gate = RecordingRateGate()

    async def send(self, batch: Sequence[OutboundMessage]) -> Sequence[SendResult]:
        await self.gate.acquire(len(batch), rate=10, window=1.0)
        return [SendResult(batch[0].message_id, SendOutcome.SENT)]

    async def aclose(self) -> None:
        return None


def _messages(n: int) -> list[OutboundMessage]:
    return [OutboundMessage(f"m{i}", f"+8613900000{i:03d}", "sig", "T1", {}) for i in range(n)]


async def test_the_messenger_kit_fails_a_messenger_that_loses_results_or_grants() -> None:
    messenger: Any = DroppingMessenger()
    kit = MessengerContract()
    with pytest.raises(AssertionError, match="one result per message"):
        await kit.test_one_result_per_message(messenger, _messages(3))
    with pytest.raises(AssertionError, match="never released"):
        await kit.test_rate_grants_are_released(messenger, _messages(3), messenger.gate)
