"""Shared helpers for the points tests: members, a controllable clock, order facts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from tongcrm.members.models import Member
from tongcrm.points.rules import compile_rules, parse_document
from tongcrm.points.service import LineFacts, OrderFacts, PointsContext

SHANGHAI = ZoneInfo("Asia/Shanghai")


class Clock:
    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2026, 3, 1, 4, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


def rules(document: dict[str, Any], version: int = 7) -> Any:
    return compile_rules(version, parse_document(document))


def ctx(clock: Clock, document: dict[str, Any] | None = None, *, version: int = 7) -> PointsContext:
    return PointsContext(
        clock=clock, tz=SHANGHAI, rules=rules(document, version) if document is not None else None
    )


async def make_members(session: AsyncSession, n: int) -> list[int]:
    rows = [Member() for _ in range(n)]
    session.add_all(rows)
    await session.flush()
    return [r.id for r in rows]


def order(
    order_id: int,
    member_id: int,
    lines: list[tuple[int, int]] | list[tuple[int, int, int]],
    *,
    status: str = "paid",
    paid_at: datetime | None,
    completed_at: datetime | None = None,
    channel: str = "taobao",
    store_code: str | None = None,
    category: str | None = None,
) -> OrderFacts:
    facts = []
    for spec in lines:
        line_id, amount = spec[0], spec[1]
        refunded = spec[2] if len(spec) > 2 else 0  # type: ignore[misc]
        facts.append(LineFacts(line_id, f"L{line_id}", f"SKU{line_id}", category, amount, refunded))
    return OrderFacts(
        order_id=order_id,
        member_id=member_id,
        account_id=1,
        channel=channel,
        store_code=store_code,
        status=status,
        placed_at=(paid_at or datetime(2026, 1, 1, tzinfo=UTC)) - timedelta(minutes=5),
        paid_at=paid_at,
        completed_at=completed_at,
        lines=tuple(facts),
    )


async def snapshot(session: AsyncSession) -> dict[str, Any]:
    """Everything the ledger holds, for "nothing changed" comparisons."""
    out: dict[str, Any] = {}
    for table in (
        "points_entries",
        "points_lots",
        "points_lot_draws",
        "points_balances",
        "points_line_awards",
    ):
        rows = (await session.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1"))).all()  # noqa: S608
        out[table] = [tuple(r) for r in rows]
    out["events"] = (await session.execute(sa.text("SELECT count(*) FROM outbox_events"))).scalar_one()
    return out
