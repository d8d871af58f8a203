"""An in-memory channel for tests: pages are a list the test fills, the cursor is the index of the next page.

Useful to anyone testing what happens to orders after ingest (points, tiers, care flows) without a platform.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from tongcrm.plugin import hookimpl
from tongcrm.plugin.errors import ChannelError
from tongcrm.plugin.types import (
    ChannelContext,
    ChannelSpec,
    IdentityClaim,
    IdentityKindSpec,
    LineRefundStatus,
    NormalisedOrder,
    OrderLine,
    OrderPage,
    OrderStatus,
    QuarantinedRecord,
    SettingField,
)

T0 = datetime(2026, 11, 11, 0, 0, tzinfo=UTC)


def make_order(
    external_id: str,
    buyer: str | None = "buyer-1",
    *,
    status: OrderStatus = OrderStatus.PAID,
    minutes: int = 0,
    lines: tuple[tuple[str, int], ...] = (("l1", 10_000),),
    refunded: dict[str, int] | None = None,
    mobile: str | None = None,
) -> NormalisedOrder:
    refunded = refunded or {}
    claims: list[IdentityClaim] = []
    if buyer:
        claims.append(IdentityClaim("memory.buyer", buyer))
    if mobile:
        claims.append(IdentityClaim("mobile", mobile))
    total = sum(amount for _, amount in lines)
    return NormalisedOrder(
        external_id=external_id,
        status=status,
        created_at=T0,
        modified_at=T0 + timedelta(minutes=minutes),
        total_fen=total,
        paid_fen=total if status is not OrderStatus.CREATED else 0,
        paid_at=T0 if status is not OrderStatus.CREATED else None,
        claims=tuple(claims),
        lines=tuple(
            OrderLine(
                external_id=line_id,
                title=f"item {line_id}",
                quantity=1,
                unit_price_fen=amount,
                amount_fen=amount,
                refunded_fen=refunded.get(line_id, 0),
                refund_status=LineRefundStatus.REFUNDED if refunded.get(line_id) else LineRefundStatus.NONE,
            )
            for line_id, amount in lines
        ),
    )


@dataclass
class MemoryChannel:
    """A channel whose pages are a list the test fills; the cursor is the index of the next page."""

    pages: list[OrderPage] = field(default_factory=list)
    fail_at: dict[int, ChannelError] = field(default_factory=dict)
    fetched: list[str | None] = field(default_factory=list)
    #: Seconds the adapter waits before answering the page of that index (a slow platform).
    slow_at: dict[int, float] = field(default_factory=dict)
    #: A process id: a :class:`PortableFactory` refuses to build the adapter in any other (a plugin that cannot
    #: run in a fetching child).
    parent_only: int | None = None

    def add_page(
        self, orders: list[NormalisedOrder], quarantined: tuple[QuarantinedRecord, ...] = ()
    ) -> None:
        index = len(self.pages)
        self.pages.append(
            OrderPage(
                tuple(orders),
                next_cursor=json.dumps({"page": index + 1}),
                has_more=True,
                quarantined=quarantined,
            )
        )

    async def fetch(self, cursor: str | None) -> OrderPage:
        delay = self.slow_at.get(json.loads(cursor)["page"] if cursor else 0)
        if delay:
            await asyncio.sleep(delay)
        return self.page_at(cursor)

    def page_at(self, cursor: str | None) -> OrderPage:
        index = json.loads(cursor)["page"] if cursor else 0
        self.fetched.append(cursor)
        if index in self.fail_at:
            raise self.fail_at.pop(index)
        if index >= len(self.pages):
            return OrderPage((), next_cursor=cursor or json.dumps({"page": 0}), has_more=False)
        page = self.pages[index]
        last = index == len(self.pages) - 1
        return OrderPage(page.orders, page.next_cursor, has_more=not last, quarantined=page.quarantined)

    def plugin(self, *, portable: bool = False) -> Any:
        """A plugin object registering the ``memory`` channel; register it on a hermetic host.

        Its factory is a class local to this call, which a fetching child process cannot find again (the sync
        fetches in its own process); with ``portable`` it is a :class:`PortableFactory` that carries the pages
        to the child (as they are when the sync starts; what the child fetches is not seen in ``fetched``)."""
        channel = self

        class Adapter:
            def __init__(self, ctx: ChannelContext) -> None:
                self.ctx = ctx

            async def fetch_orders(self, cursor: str | None) -> OrderPage:
                return await channel.fetch(cursor)

            async def aclose(self) -> None:
                return None

        spec = ChannelSpec(
            name="memory",
            display_name="Memory",
            settings=(SettingField("token", "access token", secret=True), SettingField("shop", "shop id")),
            factory=PortableFactory(self) if portable else Adapter,
            identity_kinds=(
                IdentityKindSpec("memory.buyer", strong=True, description="buyer id"),
                IdentityKindSpec("memory.receiver", strong=False, description="weekly receiver id"),
            ),
        )
        return SimpleNamespace(channels=hookimpl(lambda: [spec]))


class MemoryAdapter:
    """The memory channel's adapter as a module's class (see :class:`PortableFactory`)."""

    def __init__(self, channel: MemoryChannel, ctx: ChannelContext) -> None:
        self.channel, self.ctx = channel, ctx

    async def fetch_orders(self, cursor: str | None) -> OrderPage:
        return await self.channel.fetch(cursor)

    async def aclose(self) -> None:
        return None


@dataclass(frozen=True)
class PortableFactory:
    """A factory a fetching child process can rebuild by import: it carries its channel, pages included."""

    channel: MemoryChannel

    def __call__(self, ctx: ChannelContext) -> MemoryAdapter:
        if self.channel.parent_only not in (None, os.getpid()):
            raise RuntimeError("this adapter only runs in the process that registered it")
        return MemoryAdapter(self.channel, ctx)
