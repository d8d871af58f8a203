"""Values of template variables, loaded in bulk for a batch of messages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.members.models import Member
from tongcrm.orders import shipments
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


def yuan(fen: int) -> str:
    """Integer fen as the yuan amount a message shows (``12900`` → ``"129.00"``), without floats."""
    return f"{fen // 100}.{fen % 100:02d}"


_SHIPMENT_VARIABLES = frozenset({"tracking_number", "carrier"})


async def order_values(
    session: AsyncSession, order_ids: Sequence[int], wanted: set[str] | None = None
) -> dict[int, dict[str, str | None]]:
    """``order_id``, ``order_amount``, ``refund_amount`` (all refunded so far; a refund notice carries the
    amount of its own refund in its params instead) and, when ``wanted`` asks for them (``None``: everything),
    ``tracking_number`` and ``carrier`` of the order's latest parcel."""
    with_shipments = wanted is None or bool(wanted & _SHIPMENT_VARIABLES)
    out: dict[int, dict[str, str | None]] = {}
    ids = sorted(set(order_ids))
    columns = [Order.id, Order.external_id, Order.total_fen, Order.refunded_fen]
    if with_shipments:
        columns.append(Order.shipments)
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        rows = await session.execute(sa.select(*columns).where(Order.id.in_(chunk)))
        for row in rows:
            values: dict[str, str | None] = {
                "order_id": row.external_id,
                "order_amount": yuan(row.total_fen),
                "refund_amount": yuan(row.refunded_fen) if row.refunded_fen else None,
            }
            if with_shipments:
                parcel = shipments.latest(row.shipments)
                values["tracking_number"] = parcel.tracking_number if parcel else None
                values["carrier"] = parcel.carrier_name if parcel else None
            out[row.id] = values
    return out
