"""Seeding helpers for tier tests and benchmarks: members, a channel account and orders, written directly."""

from __future__ import annotations

from datetime import datetime
from itertools import count
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.channels.models import ChannelAccount
from tongcrm.members.models import Member
from tongcrm.orders.models import Order

_seq = count(1)

LADDER: dict[str, Any] = {
    "window_months": 12,
    "review": {"mode": "anniversary", "one_step": False},
    "tiers": [
        {"code": "member", "name": "Member"},
        {
            "code": "silver",
            "name": "Silver",
            "rule": {"metric": "spend_fen", "min": 100_000},
            "entitlements": [
                {"kind": "points_multiplier", "value": 120},
                {"kind": "birthday_points", "value": 100},
            ],
        },
        {
            "code": "gold",
            "name": "Gold",
            "rule": {
                "any": [
                    {"metric": "spend_fen", "min": 500_000},
                    {"metric": "order_count", "min": 10, "months": 6},
                ]
            },
            "entitlements": [
                {"kind": "points_multiplier", "value": 150},
                {"kind": "birthday_points", "value": 300},
                {"kind": "free_shipping"},
                {"kind": "monthly_coupon", "value": 2000, "provider": "test_coupons"},
            ],
        },
    ],
}


async def account(session: AsyncSession, name: str = "tiers-shop") -> int:
    found = (await session.execute(sa.select(ChannelAccount.id).where(ChannelAccount.name == name))).scalar()
    if found is not None:
        return int(found)
    row = ChannelAccount(channel="test", name=name, settings={})
    session.add(row)
    await session.flush()
    return row.id


async def members(session: AsyncSession, n: int, **profile: Any) -> list[int]:
    rows = [Member(**profile) for _ in range(n)]
    session.add_all(rows)
    await session.flush()
    return [r.id for r in rows]


async def order(
    session: AsyncSession,
    member_id: int,
    paid_fen: int,
    at: datetime,
    *,
    refunded_fen: int = 0,
    status: str = "paid",
    paid: bool = True,
) -> int:
    account_id = await account(session)
    row = Order(
        account_id=account_id,
        external_id=f"t{next(_seq)}",
        member_id=member_id,
        origin_member_id=member_id,
        channel="test",
        status=status,
        total_fen=paid_fen,
        paid_fen=paid_fen,
        refunded_fen=refunded_fen,
        placed_at=at,
        paid_at=at if paid else None,
        modified_at=at,
    )
    session.add(row)
    await session.flush()
    return row.id
