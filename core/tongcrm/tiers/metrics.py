"""Qualifying metrics, computed in the database for a set of members at once.

Spend and order count come from ``orders`` across every channel of the member: an order qualifies once paid
(closed-before-payment and unpaid orders never do), counts at its payment time (its placement time when the
channel reports none), and contributes what was paid minus what was refunded. An order refunded in full does
not count as an order. Points earned come from the ledger's earn entries less what refunds reversed of them
(the lot's ``reversed``), at the time they were earned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.orders.models import Order
from tongcrm.points.models import EntryKind, PointsEntry, PointsLot
from tongcrm.tiers.ladder import Combination, Condition, Ladder, Metric, Rule, add_months, local_midnight

Key = tuple[Metric, int]


def column_name(key: Key) -> str:
    return f"m_{key[0]}_{key[1]}"


def window_starts(keys: Iterable[Key], ref_day: date, tz: ZoneInfo) -> dict[Key, datetime]:
    return {key: local_midnight(add_months(ref_day, -key[1]), tz) for key in keys}


def _order_time() -> sa.ColumnElement[Any]:
    return sa.func.coalesce(Order.paid_at, Order.placed_at)


def _qualifying_order() -> sa.ColumnElement[bool]:
    return sa.and_(
        Order.member_id.is_not(None),
        Order.status != "created",
        sa.not_(sa.and_(Order.status == "closed", Order.paid_at.is_(None))),
    )


def orders_aggregate(
    starts: Mapping[Key, datetime], upper: datetime, members: sa.ColumnElement[bool] | None
) -> sa.Subquery | None:
    keys = [k for k in starts if k[0] in ("spend_fen", "order_count")]
    if not keys:
        return None
    ts = _order_time()
    net = Order.paid_fen - Order.refunded_fen
    positive = sa.case((net > 0, net), else_=0)
    cols: list[sa.ColumnElement[Any]] = [Order.member_id.label("member_id")]
    for key in keys:
        inside = ts >= starts[key]
        if key[0] == "spend_fen":
            expr = sa.func.sum(sa.case((inside, positive), else_=0))
        else:
            expr = sa.func.sum(sa.case((sa.and_(inside, net > 0), 1), else_=0))
        cols.append(expr.label(column_name(key)))
    stmt = (
        sa.select(*cols)
        .where(_qualifying_order(), ts >= min(starts[k] for k in keys), ts <= upper)
        .group_by(Order.member_id)
    )
    if members is not None:
        stmt = stmt.where(members)
    return stmt.subquery("order_metrics")


def points_aggregate(
    starts: Mapping[Key, datetime], upper: datetime, members: sa.ColumnElement[bool] | None
) -> sa.Subquery | None:
    keys = [k for k in starts if k[0] == "points_earned"]
    if not keys:
        return None
    net = PointsEntry.amount - sa.func.coalesce(PointsLot.reversed, 0)
    cols: list[sa.ColumnElement[Any]] = [PointsEntry.member_id.label("member_id")]
    for key in keys:
        cols.append(
            sa.func.sum(sa.case((PointsEntry.occurred_at >= starts[key], net), else_=0)).label(
                column_name(key)
            )
        )
    stmt = (
        sa.select(*cols)
        .select_from(PointsEntry)
        .outerjoin(PointsLot, PointsLot.id == PointsEntry.id)
        .where(
            PointsEntry.kind == EntryKind.EARN,
            PointsEntry.occurred_at >= min(starts[k] for k in keys),
            PointsEntry.occurred_at <= upper,
        )
        .group_by(PointsEntry.member_id)
    )
    if members is not None:
        stmt = stmt.where(members)
    return stmt.subquery("points_metrics")


class MetricSource:
    """The metric columns of a ladder joined onto a query whose rows carry a member id."""

    def __init__(
        self,
        ladder: Ladder,
        *,
        ref_day: date,
        upper: datetime,
        tz: ZoneInfo,
        member_filter: sa.ColumnElement[bool] | None = None,
        points_filter: sa.ColumnElement[bool] | None = None,
    ) -> None:
        self.ladder = ladder
        self.keys = ladder.metric_keys()
        self.starts = window_starts(self.keys, ref_day, tz)
        self.orders = orders_aggregate(self.starts, upper, member_filter)
        self.points = points_aggregate(self.starts, upper, points_filter)

    def join(self, stmt: sa.Select[Any], member_id: sa.ColumnElement[int]) -> sa.Select[Any]:
        for sub in (self.orders, self.points):
            if sub is not None:
                stmt = stmt.outerjoin(sub, sub.c.member_id == member_id)
        return stmt

    def column(self, key: Key) -> sa.ColumnElement[int]:
        sub = self.points if key[0] == "points_earned" else self.orders
        assert sub is not None
        return sa.func.coalesce(sub.c[column_name(key)], 0)

    def columns(self) -> list[sa.ColumnElement[Any]]:
        return [self.column(k).label(column_name(k)) for k in self.keys]

    def rule_sql(self, rule: Rule) -> sa.ColumnElement[bool]:
        if isinstance(rule, Condition):
            return self.column(rule.key) >= rule.minimum
        assert isinstance(rule, Combination)
        parts = [self.rule_sql(p) for p in rule.parts]
        return sa.and_(*parts) if rule.op == "all" else sa.or_(*parts)

    def qualified_rank(self) -> sa.ColumnElement[int]:
        """The rank of the highest tier whose rule holds (0, the base tier, when none does)."""
        whens = [(self.rule_sql(t.rule), t.rank) for t in reversed(self.ladder.tiers) if t.rule is not None]
        if not whens:
            return sa.literal(0)
        return sa.case(*whens, else_=0)


def rank_sql(ladder: Ladder, code: sa.ColumnElement[str]) -> sa.ColumnElement[int]:
    return sa.case({t.code: t.rank for t in ladder.tiers}, value=code, else_=0)


def code_sql(ladder: Ladder, rank: sa.ColumnElement[int]) -> sa.ColumnElement[str]:
    return sa.case({t.rank: t.code for t in ladder.tiers}, value=rank, else_=ladder.base.code)


async def metrics_for(
    session: AsyncSession,
    ladder: Ladder,
    member_ids: Iterable[int],
    *,
    ref_day: date,
    upper: datetime,
    tz: ZoneInfo,
) -> dict[int, dict[Key, int]]:
    """Metric values of each member (zeros for members with no qualifying history), in one round trip."""
    ids = sorted(set(member_ids))
    result: dict[int, dict[Key, int]] = {m: dict.fromkeys(ladder.metric_keys(), 0) for m in ids}
    if not ids or not ladder.metric_keys():
        return result
    source = MetricSource(
        ladder,
        ref_day=ref_day,
        upper=upper,
        tz=tz,
        member_filter=Order.member_id.in_(ids),
        points_filter=PointsEntry.member_id.in_(ids),
    )
    for sub in (source.orders, source.points):
        if sub is None:
            continue
        names = [c.name for c in sub.c if c.name != "member_id"]
        for row in (await session.execute(sa.select(sub))).mappings():
            values = result.get(int(row["member_id"]))
            if values is None:
                continue
            for key in source.keys:
                if column_name(key) in names:
                    values[key] = int(row[column_name(key)] or 0)
    return result
