"""``/api/orders``: orders across channels for analysts and up — a filtered, keyset-paginated listing and one
order with its lines and (masked) parcels. Read-only: orders change only through channel ingest."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import MAX_ID, PathId, QueryId
from tongcrm.api.security import READ_ROLES, requires
from tongcrm.orders import service
from tongcrm.orders.models import Order

Sessions = async_sessionmaker[AsyncSession]


class OrderSummaryOut(msgspec.Struct, frozen=True):
    """Money in fen (integer hundredths of a yuan); times in UTC."""

    id: int
    account_id: int
    channel: str
    external_id: str
    member_id: int | None
    status: str
    platform_status: str
    store_code: str | None
    total_fen: int
    paid_fen: int
    refunded_fen: int
    post_fee_fen: int
    discount_fen: int
    placed_at: datetime
    paid_at: datetime | None
    shipped_at: datetime | None
    completed_at: datetime | None
    modified_at: datetime


class OrderPage(msgspec.Struct, frozen=True):
    items: list[OrderSummaryOut]
    next_cursor: str | None


class OrderLineOut(msgspec.Struct, frozen=True):
    id: int
    external_id: str
    sku: str | None
    category: str | None
    title: str
    quantity: int
    unit_price_fen: int
    amount_fen: int
    refunded_fen: int
    refund_status: str


class ParcelOut(msgspec.Struct, frozen=True):
    #: Masked: all but the last four characters.
    tracking_number: str
    carrier_name: str | None
    carrier_code: str | None
    shipped_at: datetime | None
    line_ids: list[str]


class OrderOut(msgspec.Struct, frozen=True):
    order: OrderSummaryOut
    account_name: str
    lines: list[OrderLineOut]
    parcels: list[ParcelOut]


def _summary(order: Order) -> OrderSummaryOut:
    return msgspec.convert(order, OrderSummaryOut, from_attributes=True)


class OrderController(Controller):
    path = "/api/orders"
    tags = ["orders"]
    opt = requires(*READ_ROLES)

    @get("/", summary="Orders, newest placed first, filtered (keyset pagination)")
    async def list_orders(
        self,
        read_sessions: NamedDependency[Sessions],
        member_id: QueryId = None,
        account_id: Annotated[
            int | None, QueryParameter(ge=1, le=MAX_ID, description="channel account id")
        ] = None,
        account: Annotated[str | None, QueryParameter(description="channel account name")] = None,
        status: Annotated[
            str | None,
            QueryParameter(description="created, paid, shipped, delivered, completed, closed, refunded"),
        ] = None,
        placed_from: Annotated[
            datetime | None, QueryParameter(description="placed at or after (with zone)")
        ] = None,
        placed_to: Annotated[datetime | None, QueryParameter(description="placed before (with zone)")] = None,
        cursor: Annotated[str | None, QueryParameter(description="next_cursor of the previous page")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=service.MAX_PAGE)] = 50,
    ) -> OrderPage:
        query = service.OrderQuery(
            member_id, account_id, account, status, placed_from, placed_to, cursor, limit
        )
        async with read_sessions() as session, session.begin():
            rows, next_cursor = await service.list_orders(session, query)
            return OrderPage([_summary(o) for o in rows], next_cursor)

    @get("/{order_id:int}", summary="One order with its lines and parcels")
    async def get_order(self, order_id: PathId, read_sessions: NamedDependency[Sessions]) -> OrderOut:
        async with read_sessions() as session, session.begin():
            detail = await service.get_order(session, order_id)
            return OrderOut(
                _summary(detail.order),
                detail.account_name,
                [msgspec.convert(line, OrderLineOut, from_attributes=True) for line in detail.lines],
                [msgspec.convert(p, ParcelOut) for p in detail.parcels],
            )
