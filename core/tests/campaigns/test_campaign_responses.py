"""What counts as a response, on both databases: an order of a product code within the window, a store visit,
a points redemption; orders outside the window, closed ones and other products do not count; opt-outs after the
run are reported."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from messaging_kit import SECRET_KEY, Clock, World, sms_host
from tongcrm.audit.service import SYSTEM
from tongcrm.campaigns import evaluation, service
from tongcrm.config import Settings
from tongcrm.consent.service import record_consent
from tongcrm.members.models import MemberTag
from tongcrm.messaging.models import Message
from tongcrm.orders.models import OrderLine
from tongcrm.points.models import PointsEntry
from tongcrm.segments import service as segments
from tongcrm.testing.database import TestDatabase

SH = ZoneInfo("Asia/Shanghai")


async def _line(w: World, order_id: int, sku: str) -> None:
    async with w.sessions() as session, session.begin():
        session.add(
            OrderLine(order_id=order_id, external_id="1", sku=sku, title=sku, quantity=1, unit_price_fen=100,
                      amount_fen=100)
        )  # fmt: skip


async def _points(w: World, member: int, kind: str, key: str) -> None:
    async with w.sessions() as session, session.begin():
        session.add(
            PointsEntry(member_id=member, kind=kind, amount=-100 if kind == "redeem" else 100, idempotency_key=key,
                        occurred_at=w.clock())
        )  # fmt: skip


async def _totals(w: World, name: str) -> evaluation.Outcome:
    async with w.sessions() as session:
        return (await evaluation.report(session, await service.get(session, name))).total


@pytest.mark.asyncio
async def test_response_kinds_windows_and_opt_outs(tongcrm_db: TestDatabase) -> None:
    clock = Clock(datetime(2026, 3, 1, 1, tzinfo=UTC))
    host = sms_host()
    w = World(
        tongcrm_db.sessions, Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault(), host, clock
    )
    await w.setup("http://127.0.0.1:9")
    m = [await w.member(i) for i in range(8)]
    early = await w.order(m[3], "before-the-run", status="paid", paid_fen=100)
    await _line(w, early, "P1")
    async with w.sessions() as session, session.begin():
        session.add_all(MemberTag(member_id=x, tag="vip") for x in m)
    clock.advance(hours=1)
    responses: dict[str, dict[str, Any]] = {
        "by-sku": {"kind": "order", "within_days": 7, "sku": "P1"},
        "by-visit": {"kind": "store_visit", "within_days": 7},
        "by-redemption": {"kind": "redemption", "within_days": 7},
    }
    async with w.sessions() as session, session.begin():
        context = await segments.load_context(session, host, clock())
        definition = {"version": 1, "condition": {"field": "tags", "op": "has", "value": "vip"}}
        await segments.save(session, context, "vip", definition, SYSTEM)
        for name, response in responses.items():
            await service.create(
                session, service.Draft(name, "vip", "promo", response, control_percent=0), SYSTEM
            )
            once = {"kind": "once", "at": (clock() + timedelta(minutes=1)).isoformat()}
            await service.schedule(session, host, SYSTEM, name, once, now=clock(), tz=SH)
    clock.advance(minutes=1)
    assert len(await service.run_due(w.sessions, host, now=clock(), tz=SH)) == 3
    async with w.sessions() as session, session.begin():  # what the dispatcher records for eligible members
        await session.execute(sa.update(Message).values(status="sent", sent_at=clock()))
        await record_consent(
            session, m[7], "marketing", "opt_out", source="sms_reply", at=clock() + timedelta(hours=2)
        )

    clock.advance(days=1)
    hit = await w.order(m[0], "sku-hit", status="paid", paid_fen=100)
    await _line(w, hit, "P1")
    other = await w.order(m[1], "other-product", status="paid", paid_fen=100)
    await _line(w, other, "P2")
    closed = await w.order(m[2], "closed", status="closed", paid_fen=100)
    await _line(w, closed, "P1")
    await w.order(m[4], "in-store", status="completed", paid_fen=3000, store_code="SH001")
    await _points(w, m[5], "redeem", "r1")
    await _points(w, m[6], "earn", "e1")
    clock.advance(days=7)  # after the 7-day window
    late = await w.order(m[1], "sku-late", status="paid", paid_fen=100)
    await _line(w, late, "P1")
    await w.order(m[0], "visit-late", status="paid", paid_fen=100, store_code="SH001")
    await _points(w, m[0], "redeem", "r-late")

    sku, visit, redemption = [await _totals(w, n) for n in responses]
    assert (sku.figures.treated.eligible, sku.figures.treated.responders, sku.figures.treated.orders) == (
        8,
        1,
        1,
    )
    assert (visit.figures.treated.responders, visit.figures.treated.revenue_fen) == (1, 3000)
    assert (redemption.figures.treated.responders, redemption.figures.treated.orders) == (1, 0)
    assert sku.figures.opted_out == visit.figures.opted_out == 1
    assert sku.figures.sent == 8 and sku.figures.held.eligible == 0
    assert sku.uplift.conclusion == "too_small"  # no control group: nothing to conclude


@pytest.mark.asyncio
async def test_orders_of_a_member_merged_after_the_run_are_credited(tongcrm_db: TestDatabase) -> None:
    """An audience member merged into another after the run: the orders it placed (moved to the survivor by the
    merge) and those the survivor places afterwards are the audience member's responses."""
    from tongcrm.members.merge import merge_members

    clock = Clock(datetime(2026, 3, 1, 1, tzinfo=UTC))
    host = sms_host()
    w = World(
        tongcrm_db.sessions, Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault(), host, clock
    )
    await w.setup("http://127.0.0.1:9")
    m = [await w.member(i) for i in range(4)]
    survivor, later_survivor = await w.member(10), await w.member(11)
    async with w.sessions() as session, session.begin():
        session.add_all(MemberTag(member_id=x, tag="vip") for x in m)
        context = await segments.load_context(session, host, clock())
        definition = {"version": 1, "condition": {"field": "tags", "op": "has", "value": "vip"}}
        await segments.save(session, context, "vip", definition, SYSTEM)
        response = {"kind": "order", "within_days": 7}
        await service.create(
            session, service.Draft("merged", "vip", "promo", response, control_percent=0), SYSTEM
        )
        once = {"kind": "once", "at": (clock() + timedelta(minutes=1)).isoformat()}
        await service.schedule(session, host, SYSTEM, "merged", once, now=clock(), tz=SH)
    clock.advance(minutes=1)
    await service.run_due(w.sessions, host, now=clock(), tz=SH)
    async with w.sessions() as session, session.begin():
        await session.execute(sa.update(Message).values(status="sent", sent_at=clock()))
    clock.advance(hours=2)
    await w.order(m[0], "before-merge", status="paid", paid_fen=900)
    clock.advance(hours=1)
    async with w.sessions() as session, session.begin():
        await merge_members(session, survivor, m[0], actor=SYSTEM, reason="same person", at=clock())
        await merge_members(session, survivor, m[1], actor=SYSTEM, reason="same person", at=clock())
    clock.advance(hours=1)
    await w.order(survivor, "after-merge", status="paid", paid_fen=500)
    async with w.sessions() as session, session.begin():  # a chain: the survivor merged away in its turn
        await merge_members(session, later_survivor, survivor, actor=SYSTEM, reason="same person", at=clock())
    await w.order(m[2], "plain", status="paid", paid_fen=100)

    async with w.sessions() as session, session.begin():
        # opt-outs in the window: the final survivor (the audience's m[0] and m[1] now: one person, counted once),
        # m[3] itself, and a member never in the audience (not counted)
        for who in (later_survivor, m[3], await w.member(12)):
            await record_consent(session, who, "marketing", "opt_out", source="sms_reply", at=clock())

    figures = (await _totals(w, "merged")).figures
    assert figures.opted_out == 2
    treated = figures.treated
    # m[0] and m[1] both resolve to the final survivor, which holds the two orders; m[2] has its own order
    assert (treated.eligible, treated.responders) == (4, 3)
    assert (treated.orders, treated.revenue_fen) == (2 + 2 + 1, 1400 + 1400 + 100)
