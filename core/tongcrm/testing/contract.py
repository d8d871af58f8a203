"""Contract kits: what every channel, messenger and entitlement provider must do for the core to be correct.

Each kit is a pytest class a plugin subclasses in its tests (:class:`ChannelContract`,
:class:`MessengerContract`, :class:`EntitlementProviderContract`). It builds the plugin's adapter through its
spec's ``factory``, exactly as the core does, so the plugin is tested over its real client against its fake.

A channel plugin proves it by subclassing :class:`ChannelContract` in its tests and providing two fixtures::

    class TestMyChannelContract(ChannelContract):
        channel_name = "youzan"

        @pytest.fixture
        def channel_settings(self, fake_server_url):   # settings that reach the plugin's fake server
            return {"app_id": "...", "app_secret": "...", "gateway_url": fake_server_url}

The suite builds the adapter exactly as the core does (through the plugin's ``ChannelSpec.factory``), so the
plugin is tested over its real client. Optional fixtures: ``channel_clock`` (a clock the fake server agrees
with) and ``channel_max_pages`` (a bound on a full sync; a sync that needs more fails "does not terminate").
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
import structlog

from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import (
    ChannelAdapter,
    ChannelContext,
    ChannelSpec,
    EntitlementProviderSpec,
    FulfilmentRequest,
    FulfilmentResult,
    LineRefundStatus,
    Messenger,
    MessengerContext,
    MessengerSpec,
    NormalisedOrder,
    OrderPage,
    OrderStatus,
    OutboundMessage,
    SendOutcome,
    SendResult,
    SettingField,
)

#: Setting names that must be declared secret: anything that grants access.
SECRET_WORDS = ("secret", "token", "session", "password")


async def full_sync(adapter: ChannelAdapter, max_pages: int) -> list[tuple[str | None, OrderPage]]:
    """Every (cursor, page) of a sync from an empty cursor until the adapter says it is caught up."""
    pages: list[tuple[str | None, OrderPage]] = []
    cursor: str | None = None
    for _ in range(max_pages):
        page = await adapter.fetch_orders(cursor)
        pages.append((cursor, page))
        cursor = page.next_cursor
        if not page.has_more:
            return pages
    raise AssertionError(f"a sync from an empty cursor did not terminate within {max_pages} pages")


def _versions(page: OrderPage) -> list[tuple[str, datetime, str]]:
    return [(o.external_id, o.modified_at, o.status.value) for o in page.orders]


class ChannelContract:
    """Subclass in a plugin's tests (name it ``Test…``) and set ``channel_name``."""

    channel_name: ClassVar[str]

    # ----------------------------------------------------------------------------------------------- fixtures

    @pytest.fixture
    def channel_clock(self) -> Callable[[], datetime]:
        return lambda: datetime.now(UTC)

    @pytest.fixture
    def channel_max_pages(self) -> int:
        return 10_000

    @pytest.fixture
    def channel_host(self) -> PluginHost:
        """The installed plugins, as the core would load them."""
        return PluginHost(autoload=True, disabled=set())

    @pytest.fixture
    def channel_spec(self, channel_host: PluginHost) -> ChannelSpec:
        return channel_host.channel(self.channel_name)

    @pytest.fixture
    def channel_context(
        self, channel_settings: Mapping[str, str], channel_clock: Callable[[], datetime]
    ) -> ChannelContext:
        return ChannelContext(
            account_name="contract-shop", settings=dict(channel_settings), clock=channel_clock
        )

    @pytest.fixture
    async def adapter(self, channel_spec: ChannelSpec, channel_context: ChannelContext) -> Any:
        adapter = channel_spec.factory(channel_context)
        yield adapter
        await adapter.aclose()

    # ---------------------------------------------------------------------------------------------- the contract

    def test_spec_declares_its_settings_and_secrets(self, channel_spec: ChannelSpec) -> None:
        assert channel_spec.name == self.channel_name
        assert channel_spec.settings, "a channel declares the settings an account needs"
        check_secret_settings(channel_spec.settings)

    def test_adapter_is_a_channel_adapter(self, adapter: Any) -> None:
        assert isinstance(adapter, ChannelAdapter)

    async def test_paging_from_an_empty_cursor_terminates(self, adapter: Any, channel_max_pages: int) -> None:
        pages = await full_sync(adapter, channel_max_pages)
        assert pages[-1][1].has_more is False
        assert sum(len(p.orders) for _, p in pages) > 0, "the fake shop should have orders to sync"

    async def test_no_duplicates_across_pages(self, adapter: Any, channel_max_pages: int) -> None:
        seen: set[tuple[str, datetime]] = set()
        for _, page in await full_sync(adapter, channel_max_pages):
            for external_id, modified_at, _status in _versions(page):
                key = (external_id, modified_at)
                assert key not in seen, f"order {external_id} version {modified_at} was delivered twice"
                seen.add(key)

    async def test_cursor_only_moves_forward(self, adapter: Any, channel_max_pages: int) -> None:
        pages = await full_sync(adapter, channel_max_pages)
        cursors = [page.next_cursor for _, page in pages]
        assert len(cursors) == len(set(cursors)), "a cursor repeated: the sync went back or stood still"
        watermarks = [page.watermark for _, page in pages if page.watermark is not None]
        assert watermarks == sorted(watermarks), "the page watermark moved backwards"

    async def test_refetching_a_cursor_is_idempotent(self, adapter: Any, channel_max_pages: int) -> None:
        pages = await full_sync(adapter, channel_max_pages)
        for cursor, page in pages[:5]:
            again = await adapter.fetch_orders(cursor)
            assert _versions(again) == _versions(page), f"re-fetching cursor {cursor!r} gave different orders"
            assert again.next_cursor == page.next_cursor
            assert again.has_more == page.has_more

    async def test_records_are_valid(self, adapter: Any, channel_max_pages: int) -> None:
        for _, page in await full_sync(adapter, channel_max_pages):
            for order in page.orders:
                _check_order(order)
            for record in page.quarantined:
                assert record.reason, "a quarantined record says why"
                assert record.payload, "a quarantined record keeps the platform's record"

    async def test_identity_claims_use_registered_kinds(
        self, adapter: Any, channel_host: PluginHost, channel_max_pages: int
    ) -> None:
        kinds = channel_host.identity_kinds()
        for _, page in await full_sync(adapter, channel_max_pages):
            for order in page.orders:
                for claim in order.claims:
                    assert claim.kind in kinds, (
                        f"order {order.external_id} claims unregistered kind {claim.kind!r}"
                    )

    async def test_settings_never_expose_secrets(
        self,
        adapter: Any,
        channel_spec: ChannelSpec,
        channel_context: ChannelContext,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        secrets = [
            channel_context.settings[f.name]
            for f in channel_spec.settings
            if f.secret and channel_context.settings.get(f.name)
        ]
        assert secrets, "the contract needs the fake account's secrets set to check they stay hidden"
        caplog.set_level(logging.DEBUG)
        with structlog.testing.capture_logs() as logs:
            await adapter.fetch_orders(None)
        assert_no_secret_shown(secrets, [repr(adapter), str(adapter), caplog.text, repr(logs)])


def check_secret_settings(settings: Sequence[SettingField]) -> None:
    """Every setting whose name says it grants access is declared secret (so it is encrypted and masked)."""
    for setting in settings:
        if any(word in setting.name for word in SECRET_WORDS):
            assert setting.secret, f"setting {setting.name!r} grants access and must be declared secret"


def assert_no_secret_shown(secrets: Sequence[str], shown: Sequence[str]) -> None:
    for secret in secrets:
        for text in shown:
            assert secret not in text, "a secret setting appeared in the adapter's repr or logs"


def _secret_values(settings: Sequence[SettingField], values: Mapping[str, str]) -> list[str]:
    return [values[f.name] for f in settings if f.secret and values.get(f.name)]


def _check_order(order: NormalisedOrder) -> None:
    assert isinstance(order, NormalisedOrder)
    assert isinstance(order.status, OrderStatus)
    for name in ("total_fen", "paid_fen", "post_fee_fen", "discount_fen"):
        assert type(getattr(order, name)) is int, f"{order.external_id}: {name} is not integer fen"
    for name in ("created_at", "modified_at", "paid_at", "shipped_at", "completed_at"):
        value = getattr(order, name)
        assert value is None or value.utcoffset() is not None, f"{order.external_id}: {name} is naive"
    assert order.modified_at >= order.created_at, f"{order.external_id}: modified before it was created"
    for line in order.lines:
        assert type(line.amount_fen) is int and type(line.refunded_fen) is int
        assert isinstance(line.refund_status, LineRefundStatus)
        assert line.refunded_fen <= line.amount_fen


# -------------------------------------------------------------------------------------------------------------
# messengers


@dataclass
class RecordingRateGate:
    """A :class:`~tongcrm.plugin.types.SendRateGate` that grants at once and records what was taken and given
    back, so the kit can check that a messenger releases every grant it acquired and respects its bounds."""

    acquired: list[int] = field(default_factory=list)
    released: int = 0

    async def acquire(self, permits: int, *, rate: int, window: float) -> _Grant:
        assert 0 < permits <= rate, f"acquire({permits}, rate={rate}): permits must be within 1..rate"
        assert window > 0, "a rate window is a positive number of seconds"
        self.acquired.append(permits)
        return _Grant(self)


@dataclass
class _Grant:
    gate: RecordingRateGate
    done: bool = False

    async def release(self, *, in_doubt: bool = False) -> None:
        assert not self.done, "a rate grant was released twice"
        self.done = True
        self.gate.released += 1


class MessengerContract:
    """Subclass in a messenger plugin's tests (name it ``Test…``), set ``messenger_name`` and provide:

    - ``messenger_settings``: settings of an account on the plugin's fake gateway (with its secrets set);
    - ``contract_messages``: messages the fake accepts (at least two, to different numbers).

    Optional: ``messenger_clock``, ``messenger_host`` (default: the installed plugins).
    """

    messenger_name: ClassVar[str]

    @pytest.fixture
    def messenger_clock(self) -> Callable[[], datetime]:
        return lambda: datetime.now(UTC)

    @pytest.fixture
    def messenger_host(self) -> PluginHost:
        return PluginHost(autoload=True, disabled=set())

    @pytest.fixture
    def messenger_spec(self, messenger_host: PluginHost) -> MessengerSpec:
        specs = messenger_host.messengers()
        assert self.messenger_name in specs, f"no messenger {self.messenger_name!r}: {sorted(specs)}"
        return specs[self.messenger_name]

    @pytest.fixture
    def rate_gate(self) -> RecordingRateGate:
        return RecordingRateGate()

    @pytest.fixture
    def messenger_context(
        self,
        messenger_settings: Mapping[str, str],
        messenger_clock: Callable[[], datetime],
        rate_gate: RecordingRateGate,
    ) -> MessengerContext:
        return MessengerContext(
            name="contract-sender",
            settings=dict(messenger_settings),
            clock=messenger_clock,
            rate_gate=rate_gate,
        )

    @pytest.fixture
    async def messenger(self, messenger_spec: MessengerSpec, messenger_context: MessengerContext) -> Any:
        built = messenger_spec.factory(messenger_context)
        yield built
        await built.aclose()

    def test_spec_declares_its_settings_and_secrets(self, messenger_spec: MessengerSpec) -> None:
        assert messenger_spec.name == self.messenger_name
        assert messenger_spec.settings, "a messenger declares the settings an account needs"
        names = [s.name for s in messenger_spec.settings]
        assert len(names) == len(set(names)), "a setting is declared twice"
        check_secret_settings(messenger_spec.settings)

    def test_factory_builds_a_messenger(self, messenger: Any) -> None:
        assert isinstance(messenger, Messenger)
        assert type(messenger.max_batch) is int and messenger.max_batch >= 1, "max_batch is a positive int"

    async def test_one_result_per_message(
        self, messenger: Any, contract_messages: Sequence[OutboundMessage]
    ) -> None:
        assert len(contract_messages) >= 2, "the contract needs at least two messages"
        batch = list(contract_messages[: messenger.max_batch])
        results = await messenger.send(batch)
        _check_results(batch, results)
        failed = [r for r in results if r.outcome is not SendOutcome.SENT]
        assert not failed, f"the fake gateway should accept the contract messages: {failed}"
        ids = [r.provider_id for r in results if r.provider_id]
        assert len(ids) == len(set(ids)), "two messages got the same provider id"

    async def test_every_message_alone(
        self, messenger: Any, contract_messages: Sequence[OutboundMessage]
    ) -> None:
        """The dispatcher sends whatever is due, often one message at a time."""
        for message in contract_messages:
            _check_results([message], await messenger.send([message]))

    async def test_rate_grants_are_released(
        self,
        messenger: Any,
        contract_messages: Sequence[OutboundMessage],
        rate_gate: RecordingRateGate,
    ) -> None:
        await messenger.send(list(contract_messages[: messenger.max_batch]))
        assert rate_gate.released == len(rate_gate.acquired), "a rate grant was acquired and never released"

    async def test_settings_never_expose_secrets(
        self,
        messenger: Any,
        messenger_spec: MessengerSpec,
        messenger_context: MessengerContext,
        contract_messages: Sequence[OutboundMessage],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        secrets = _secret_values(messenger_spec.settings, messenger_context.settings)
        assert secrets, "the contract needs the fake account's secrets set to check they stay hidden"
        caplog.set_level(logging.DEBUG)
        with structlog.testing.capture_logs() as logs:
            results = await messenger.send(list(contract_messages[:1]))
        details = [f"{r.code} {r.detail}" for r in results]
        assert_no_secret_shown(secrets, [repr(messenger), str(messenger), caplog.text, repr(logs), *details])


def _check_results(batch: Sequence[OutboundMessage], results: Sequence[SendResult]) -> None:
    sent = [m.message_id for m in batch]
    got = [r.message_id for r in results]
    assert all(isinstance(r, SendResult) for r in results), "send returns SendResult records"
    assert sorted(got) == sorted(sent), f"one result per message expected: sent {sent}, results for {got}"
    for result in results:
        assert isinstance(result.outcome, SendOutcome), f"{result.message_id}: outcome is not a SendOutcome"


# -------------------------------------------------------------------------------------------------------------
# entitlement providers


class EntitlementProviderContract:
    """Subclass in an entitlement provider's tests (name it ``Test…``) and set ``provider_name``.

    Optional fixtures: ``provider_settings`` (the ``<provider>.``-prefixed keys of ``Settings.extra``, without the
    prefix; default none), ``provider_host`` (default: the installed plugins) and ``fulfilment_parameters``
    (what a ladder entry would pass; default a value, a tier and a validity).
    """

    provider_name: ClassVar[str]

    @pytest.fixture
    def provider_settings(self) -> Mapping[str, str]:
        return {}

    @pytest.fixture
    def provider_host(self) -> PluginHost:
        return PluginHost(autoload=True, disabled=set())

    @pytest.fixture
    def fulfilment_parameters(self) -> Mapping[str, Any]:
        until = datetime.now(UTC) + timedelta(days=30)
        return {"value": 1000, "tier": "gold", "valid_until": until.isoformat()}

    @pytest.fixture
    def provider_spec(self, provider_host: PluginHost) -> EntitlementProviderSpec:
        specs = provider_host.entitlement_providers()
        assert self.provider_name in specs, f"no entitlement provider {self.provider_name!r}: {sorted(specs)}"
        return specs[self.provider_name]

    @pytest.fixture
    def provider(self, provider_spec: EntitlementProviderSpec, provider_settings: Mapping[str, str]) -> Any:
        return provider_spec.factory(dict(provider_settings))

    def _request(
        self,
        spec: EntitlementProviderSpec,
        grant: str,
        parameters: Mapping[str, Any],
        kind: str | None = None,
    ) -> FulfilmentRequest:
        return FulfilmentRequest(
            grant_id=f"contract-{grant}",
            member_id=4242,
            entitlement=kind or spec.entitlements[0],
            parameters=dict(parameters),
        )

    def test_spec_declares_entitlements(self, provider_spec: EntitlementProviderSpec) -> None:
        assert provider_spec.name == self.provider_name
        assert provider_spec.entitlements, "a provider declares the entitlement kinds it fulfils"
        assert len(set(provider_spec.entitlements)) == len(provider_spec.entitlements), (
            "a kind is declared twice"
        )
        for kind in provider_spec.entitlements:
            assert kind == kind.strip() and kind, f"entitlement kind {kind!r} is blank or padded"

    def test_factory_builds_a_provider(self, provider: Any) -> None:
        assert inspect.iscoroutinefunction(getattr(provider, "fulfil", None)), "fulfil must be async"

    async def test_every_declared_kind_is_fulfilled(
        self, provider: Any, provider_spec: EntitlementProviderSpec, fulfilment_parameters: Mapping[str, Any]
    ) -> None:
        for kind in provider_spec.entitlements:
            request = self._request(provider_spec, f"kind-{kind}", fulfilment_parameters, kind)
            result = await provider.fulfil(request)
            assert isinstance(result, FulfilmentResult), "fulfil returns a FulfilmentResult"
            assert result.ok, f"fulfilling {kind!r} failed: {result.detail}"

    async def test_fulfilment_is_idempotent_by_grant_id(
        self, provider: Any, provider_spec: EntitlementProviderSpec, fulfilment_parameters: Mapping[str, Any]
    ) -> None:
        """After a crash the same grant is fulfilled again: it must not give the member a second benefit."""
        request = self._request(provider_spec, "again", fulfilment_parameters)
        first = await provider.fulfil(request)
        second = await provider.fulfil(request)
        assert first.ok and second.ok, f"a repeated fulfilment failed: {first.detail} / {second.detail}"
        assert first.reference == second.reference, "the same grant got a second benefit on the platform"

    async def test_distinct_grants_get_distinct_benefits(
        self, provider: Any, provider_spec: EntitlementProviderSpec, fulfilment_parameters: Mapping[str, Any]
    ) -> None:
        one = await provider.fulfil(self._request(provider_spec, "one", fulfilment_parameters))
        two = await provider.fulfil(self._request(provider_spec, "two", fulfilment_parameters))
        assert one.ok and two.ok
        if one.reference is not None or two.reference is not None:
            assert one.reference != two.reference, "two grants were given the same platform benefit"
