"""An in-memory channel for tests: pages are a list the test fills, the cursor is the index of the next page.

Useful to anyone testing what happens to orders after ingest (points, tiers, care flows) without a platform.
"""

from __future__ import annotations

import json
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

    def plugin(self) -> Any:
        """A plugin object registering the ``memory`` channel; register it on a hermetic host."""
        channel = self

        class Adapter:
            def __init__(self, ctx: ChannelContext) -> None:
                self.ctx = ctx

            async def fetch_orders(self, cursor: str | None) -> OrderPage:
                return channel.page_at(cursor)

            async def aclose(self) -> None:
                return None

        spec = ChannelSpec(
            name="memory",
            display_name="Memory",
            settings=(SettingField("token", "access token", secret=True), SettingField("shop", "shop id")),
            factory=Adapter,
            identity_kinds=(
                IdentityKindSpec("memory.buyer", strong=True, description="buyer id"),
                IdentityKindSpec("memory.receiver", strong=False, description="weekly receiver id"),
            ),
        )
        return SimpleNamespace(channels=hookimpl(lambda: [spec]))
