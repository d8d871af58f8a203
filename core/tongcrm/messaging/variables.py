"""Values of template variables, loaded in bulk for a batch of messages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.members.models import Member
from tongcrm.orders.models import Order


async def member_values(
    session: AsyncSession, member_ids: Sequence[int], wanted: set[str], now: datetime
) -> dict[int, dict[str, str | None]]:
    out: dict[int, dict[str, str | None]] = {m: {} for m in member_ids}
    ids = sorted(set(member_ids))
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        if "member_name" in wanted:
            for mid, name in await session.execute(
                sa.select(Member.id, Member.name).where(Member.id.in_(chunk))
            ):
                out[mid]["member_name"] = name
        if "points" in wanted:
            from tongcrm.points.models import PointsBalance

            rows = await session.execute(
                sa.select(PointsBalance.member_id, PointsBalance.available).where(
                    PointsBalance.member_id.in_(chunk)
                )
            )
            for mid, available in rows:
                out[mid]["points"] = str(available)
        if "tier" in wanted:
            from tongcrm.tiers.models import MemberTier

            rows2 = await session.execute(
                sa.select(
                    MemberTier.member_id,
                    MemberTier.tier_code,
                    MemberTier.override_code,
                    MemberTier.override_until,
                ).where(MemberTier.member_id.in_(chunk))
            )
            for mid, code, override, until in rows2:
                out[mid]["tier"] = override if override and until is not None and until > now else code
    return out


async def order_values(session: AsyncSession, order_ids: Sequence[int]) -> dict[int, dict[str, str | None]]:
    out: dict[int, dict[str, str | None]] = {}
    ids = sorted(set(order_ids))
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        rows = await session.execute(
            sa.select(Order.id, Order.external_id, Order.total_fen).where(Order.id.in_(chunk))
        )
        for oid, external_id, total in rows:
            out[oid] = {"order_id": external_id, "order_amount": f"{total / 100:.2f}"}
    return out
