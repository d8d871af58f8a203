"""Reading orders for operators: a filtered, keyset-paginated listing (newest placed first) and one order with
its lines and parcels. Tracking numbers lead to a consignee at the carrier, so they leave here masked.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.channels.models import ChannelAccount
from tongcrm.errors import BadRequest, NotFound, Unprocessable
from tongcrm.orders import shipments
from tongcrm.orders.models import Order, OrderLine
from tongcrm.plugin.types import OrderStatus

MAX_PAGE = 200
_STATUSES = frozenset(s.value for s in OrderStatus)


@dataclass(frozen=True, slots=True)
class OrderQuery:
    member_id: int | None = None
    account_id: int | None = None
    #: A channel account by name, for operators who know the shop rather than its id.
    account: str | None = None
    status: str | None = None
    placed_from: datetime | None = None  # inclusive
    placed_to: datetime | None = None  # exclusive
    cursor: str | None = None
    limit: int = 50


def mask_tracking(number: str) -> str:
    """All but the last four characters hidden (all of a number of four or fewer)."""
    if len(number) <= 4:
        return "*" * len(number)
    return "*" * (len(number) - 4) + number[-4:]


def encode_cursor(order: Order) -> str:
    raw = f"{order.placed_at.isoformat()}|{order.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, order_id = raw.partition("|")
        placed = datetime.fromisoformat(at)
        if placed.tzinfo is None:
            raise ValueError("naive")
        return placed, int(order_id)
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise BadRequest(f"cursor {cursor!r} is not a next_cursor this API issued") from exc


def _aware(value: datetime | None, name: str) -> None:
    if value is not None and value.tzinfo is None:
        raise BadRequest(f"{name} needs a time zone (e.g. 2026-01-01T00:00:00+08:00)")


async def list_orders(session: AsyncSession, query: OrderQuery) -> tuple[list[Order], str | None]:
    """A page of orders, newest placed first (ties by id), and the cursor of the next page (None: last page).

    The keyset is ``(placed_at, id)``, so a page is an index range scan however deep the listing goes, and
    orders ingested meanwhile never shift the pages already read."""
    if not 1 <= query.limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")
    if query.status is not None and query.status not in _STATUSES:
        raise BadRequest(f"status {query.status!r} is not one of {', '.join(sorted(_STATUSES))}")
    _aware(query.placed_from, "placed_from")
    _aware(query.placed_to, "placed_to")
    stmt = sa.select(Order).order_by(Order.placed_at.desc(), Order.id.desc()).limit(query.limit + 1)
    if query.account is not None:
        account_id = (
            await session.execute(sa.select(ChannelAccount.id).where(ChannelAccount.name == query.account))
        ).scalar_one_or_none()
        if account_id is None:
            # a filter naming nothing is a bad filter (422), not a missing resource: the list itself exists
            raise Unprocessable(f"no channel account named {query.account!r}")
        if query.account_id is not None and query.account_id != account_id:
            raise BadRequest(f"account {query.account!r} is not channel account {query.account_id}")
        stmt = stmt.where(Order.account_id == account_id)
    elif query.account_id is not None:
        stmt = stmt.where(Order.account_id == query.account_id)
    if query.member_id is not None:
        stmt = stmt.where(Order.member_id == query.member_id)
    if query.status is not None:
        stmt = stmt.where(Order.status == query.status)
    if query.placed_from is not None:
        stmt = stmt.where(Order.placed_at >= query.placed_from)
    if query.placed_to is not None:
        stmt = stmt.where(Order.placed_at < query.placed_to)
    if query.cursor is not None:
        placed, order_id = decode_cursor(query.cursor)
        stmt = stmt.where(
            sa.or_(Order.placed_at < placed, sa.and_(Order.placed_at == placed, Order.id < order_id))
        )
    rows = list((await session.execute(stmt)).scalars())
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return rows, encode_cursor(rows[-1]) if more else None


@dataclass(frozen=True, slots=True)
class OrderDetail:
    order: Order
    account_name: str
    lines: Sequence[OrderLine]
    parcels: list[dict[str, Any]]


async def get_order(session: AsyncSession, order_id: int) -> OrderDetail:
    """One order with its lines and its parcels (tracking numbers masked)."""
    order = await session.get(Order, order_id)
    if order is None:
        raise NotFound(f"no order {order_id}")
    account_name = (
        await session.execute(sa.select(ChannelAccount.name).where(ChannelAccount.id == order.account_id))
    ).scalar_one()
    lines = list(
        (
            await session.execute(
                sa.select(OrderLine).where(OrderLine.order_id == order_id).order_by(OrderLine.id)
            )
        ).scalars()
    )
    parcels = [
        {
            "tracking_number": mask_tracking(s.tracking_number),
            "carrier_name": s.carrier_name,
            "carrier_code": s.carrier_code,
            "shipped_at": s.shipped_at,
            "line_ids": list(s.line_ids),
        }
        for s in shipments.decode(order.shipments)
    ]
    return OrderDetail(order, account_name, lines, parcels)
