"""What counts as a response, on both databases: an order of a product code within the window, a store visit,
a points redemption; orders outside the window, closed ones and other products do not count; opt-outs after the
run are reported."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from campaign_kit import tag, vip_world
from messaging_kit import SECRET_KEY, Clock, World, sms_host
from tongcrm.audit.service import SYSTEM
from tongcrm.campaigns import control, evaluation, service
from tongcrm.campaigns.models import CampaignAudience
from tongcrm.config import Settings
from tongcrm.consent.service import record_consent
from tongcrm.members.models import Member, MemberTag
from tongcrm.messaging.models import Message
from tongcrm.orders.models import Order, OrderLine
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


async def _figures_member_by_member(w: World, name: str) -> dict[str, tuple[int, int, int, int]]:
    """{group: (eligible, responders, orders, revenue)} worked out one audience row at a time, from the audience's
    own group, the row's message and the orders of the member it names now: the report's definition, read
    without its set-based statement."""
    async with w.sessions() as session:
        campaign = await service.get(session, name)
        (run,) = await service.runs(session, campaign.id)
        merged_into = dict((await session.execute(sa.select(Member.id, Member.merged_into_id))).all())
        audience = await session.execute(
            sa.select(CampaignAudience.member_id, CampaignAudience.grp).where(
                CampaignAudience.run_id == run.id
            )
        )
        orders = (await session.execute(sa.select(Order))).scalars().all()
    messages = {m.member_id: m for m in await w.messages(flow=service.flow_of(campaign))}
    end = run.started_at + timedelta(days=int(campaign.response["within_days"]))
    out = {g: [0, 0, 0, 0] for g in (control.TREATMENT, control.CONTROL)}
    for member, grp in audience:
        message = messages[member]
        if not (
            (grp == control.TREATMENT and message.status in ("sent", "delivered", "failed"))
            or (grp == control.CONTROL and message.reason == "hold-out")
        ):
            continue
        credited = member
        while merged_into[credited] is not None:
            credited = merged_into[credited]
        responding = [
            o for o in orders
            if o.member_id == credited and run.started_at <= o.placed_at < end
            and o.status in evaluation.RESPONDING_STATUSES
        ]  # fmt: skip
        figures = out[grp]
        figures[0] += 1
        figures[1] += bool(responding)
        figures[2] += len(responding)
        figures[3] += sum(o.paid_fen - o.refunded_fen for o in responding)
    return {g: (e, r, o, v) for g, (e, r, o, v) in out.items()}


@pytest.mark.asyncio
async def test_the_groups_figures_are_the_audience_rows_figures(tongcrm_db: TestDatabase) -> None:
    """A run with a control group, every fate a message can have (sent, delivered, failed, refused by the policy
    in either group, still queued) and members merged after the run: the report's groups, counted from the run's
    messages, are what one audience row at a time gives from the audience's own groups."""
    from tongcrm.members.merge import merge_members

    clock = Clock(datetime(2026, 3, 1, 1, tzinfo=UTC))
    w, m = await vip_world(tongcrm_db, clock, 24)
    host = w.host
    await tag(w, m)
    outsider = await w.member(99)
    async with w.sessions() as session, session.begin():
        draft = service.Draft("mixed", "vip", "promo", {"kind": "order", "within_days": 7}, control_percent=40,
                              control_seed="mixed")  # fmt: skip
        await service.create(session, draft, SYSTEM)
        once = {"kind": "once", "at": (clock() + timedelta(minutes=1)).isoformat()}
        await service.schedule(session, host, SYSTEM, "mixed", once, now=clock(), tz=SH)
    clock.advance(minutes=1)
    await service.run_due(w.sessions, host, now=clock(), tz=SH)
    messages = sorted(await w.messages(flow="campaign.mixed"), key=lambda x: x.member_id)
    held = [x for x in messages if x.held_out]
    treated = [x for x in messages if not x.held_out]
    assert len(held) >= 4 and len(treated) >= 8
    fates = {  # what the dispatcher would have recorded
        **{x.id: ("refused", "hold-out") for x in held[1:]},
        held[0].id: ("refused", "fatigue"),
        **{x.id: ("sent", "") for x in treated},
        treated[0].id: ("delivered", ""),
        treated[1].id: ("failed", ""),
        treated[2].id: ("refused", "no_consent"),
        treated[3].id: ("queued", ""),
    }
    async with w.sessions() as session, session.begin():
        for message_id, (status, reason) in fates.items():
            await session.execute(
                sa.update(Message).where(Message.id == message_id).values(status=status, reason=reason)
            )
    clock.advance(hours=1)
    for i, x in enumerate(messages):  # orders from about half of them, one outside the window
        if i % 2 == 0:
            await w.order(x.member_id, f"o{i}", status="paid", paid_fen=1_000 + i)
        if i % 6 == 0:
            await w.order(x.member_id, f"p{i}", status="completed", paid_fen=300, refunded_fen=100)
        if i % 5 == 0:
            await w.order(x.member_id, f"c{i}", status="closed", paid_fen=700)
    async with w.sessions() as session, session.begin():  # a treated and a held-out member merged away
        await merge_members(session, outsider, treated[5].member_id, actor=SYSTEM, reason="same", at=clock())
        await merge_members(session, treated[4].member_id, held[2].member_id, actor=SYSTEM, reason="same",
                            at=clock())  # fmt: skip
    await w.order(outsider, "after-merge", status="paid", paid_fen=5_000)
    clock.advance(days=8)
    await w.order(m[0], "late", status="paid", paid_fen=9_000)

    figures = (await _totals(w, "mixed")).figures
    expected = await _figures_member_by_member(w, "mixed")
    got = {
        control.TREATMENT: (figures.treated.eligible, figures.treated.responders, figures.treated.orders,
                            figures.treated.revenue_fen),
        control.CONTROL: (figures.held.eligible, figures.held.responders, figures.held.orders,
                          figures.held.revenue_fen),
    }  # fmt: skip
    assert got == expected
    assert (
        expected[control.TREATMENT][0] == len(treated) - 2 and expected[control.CONTROL][0] == len(held) - 1
    )
    assert all(responders > 0 for _, responders, _, _ in expected.values())
    assert (figures.pending, figures.failed, figures.refused) == (1, 1, {"fatigue": 1, "no_consent": 1})
