"""The channel contract: what every channel plugin must do for the ingest engine to be correct.

A plugin proves it by subclassing :class:`ChannelContract` in its tests and providing two fixtures::

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

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
import structlog

from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import (
    ChannelAdapter,
    ChannelContext,
    ChannelSpec,
    LineRefundStatus,
    NormalisedOrder,
    OrderPage,
    OrderStatus,
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
        for field in channel_spec.settings:
            if any(word in field.name for word in SECRET_WORDS):
                assert field.secret, f"setting {field.name!r} grants access and must be declared secret"

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
        shown = [repr(adapter), str(adapter), caplog.text, repr(logs)]
        for secret in secrets:
            for text in shown:
                assert secret not in text, "a secret setting appeared in the adapter's repr or logs"


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
