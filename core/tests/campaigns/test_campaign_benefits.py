"""A campaign's points benefit, on both databases: granted through the ledger to the treated members only, once
per run and member whatever is replayed; a run whose audience × points passes the points budget is refused up
front with nothing granted or queued; the report counts the points."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from campaign_kit import granted, run_due_twice, tag, vip_world
from messaging_kit import Clock, World
from tongcrm.audit.service import SYSTEM
from tongcrm.campaigns import control, evaluation, service
from tongcrm.campaigns.models import CampaignAudience
from tongcrm.entitlements.models import EntitlementGrant
from tongcrm.errors import Unprocessable
from tongcrm.messaging.models import Message
from tongcrm.testing.database import TestDatabase

SH = ZoneInfo("Asia/Shanghai")


async def _world(tongcrm_db: TestDatabase, clock: Clock, n: int) -> tuple[World, list[int]]:
    w, members = await vip_world(tongcrm_db, clock, n)
    await tag(w, members)
    return w, members


async def _grants(w: World) -> dict[int, int]:
    return await granted(w, "campaign:")


@pytest.mark.asyncio
async def test_points_go_to_the_treated_only_once_per_run(tongcrm_db: TestDatabase) -> None:
    clock = Clock(datetime(2026, 5, 1, 2, tzinfo=UTC))
    w, members = await _world(tongcrm_db, clock, 40)
    async with w.sessions() as session, session.begin():
        draft = service.Draft(
            "gift", "vip", "promo", {"kind": "order", "within_days": 3}, control_percent=30, control_seed="g",
            benefit_points=200,
        )  # fmt: skip
        campaign = await service.create(session, draft, SYSTEM)
        once = {"kind": "once", "at": (clock() + timedelta(minutes=5)).isoformat()}
        await service.schedule(session, w.host, SYSTEM, "gift", once, now=clock(), tz=SH)
    clock.advance(minutes=5)
    [run_id] = await service.run_due(w.sessions, w.host, now=clock(), tz=SH)
    held = set(control.split(campaign.id, members, 3000, "g"))
    assert 0 < len(held) < len(members)
    grants = await _grants(w)
    assert grants == {m: 200 for m in members if m not in held}
    # a replay of the same run (a second scheduler, a retried tick) finds it and grants nothing more
    async with w.sessions() as session, session.begin():
        again = await service.get(session, "gift")
        [first] = await service.runs(session, campaign.id)
        replay = await service.execute_run(session, w.host, again, first.scheduled_for, now=clock(), tz=SH)
    async with w.sessions() as session:
        runs = await service.runs(session, campaign.id)
    assert replay.id == run_id and [r.points_granted for r in runs] == [200 * (len(members) - len(held))]
    assert await _grants(w) == grants
    async with w.sessions() as session:
        report = await evaluation.report(session, await service.get(session, "gift"))
    assert report.total.figures.points_granted == 200 * (len(members) - len(held))


@pytest.mark.asyncio
async def test_a_run_beyond_the_points_budget_is_refused_with_nothing_granted(
    tongcrm_db: TestDatabase,
) -> None:
    clock = Clock(datetime(2026, 5, 1, 2, tzinfo=UTC))
    w, members = await _world(tongcrm_db, clock, 10)
    async with w.sessions() as session, session.begin():
        too_small = service.Draft(
            "tight", "vip", "promo", {"kind": "order", "within_days": 3}, control_percent=0,
            benefit_points=100, budget_points=999,
        )  # fmt: skip
        await service.create(session, too_small, SYSTEM)
        with pytest.raises(
            Unprocessable, match="points budget exceeded: the first run would grant 10 members"
        ):
            await service.schedule(
                session, w.host, SYSTEM, "tight", {"kind": "daily", "time": "10:30"}, now=clock(), tz=SH
            )
        room_for_one = service.Draft(
            "daily", "vip", "promo", {"kind": "order", "within_days": 1}, control_percent=0,
            benefit_points=100, budget_points=1500,
        )  # fmt: skip
        await service.create(session, room_for_one, SYSTEM)
        await service.schedule(
            session, w.host, SYSTEM, "daily", {"kind": "daily", "time": "10:30"}, now=clock(), tz=SH
        )
    runs = await run_due_twice(w, "daily", SH)
    async with w.sessions() as session:
        frozen = (
            await session.execute(sa.select(sa.func.count()).where(CampaignAudience.run_id == runs[1].id))
        ).scalar_one()
    assert [(r.status, r.points_granted) for r in runs] == [
        ("finished", 1000),
        ("refused", 0),
    ]  # the first run's 1-day window closed: finished, still counted
    assert runs[1].reason == (
        "points budget exceeded: the run would grant 10 members × 100 = 1000 points and 500 points are left of"
        " the budget of 1500"
    )
    assert await _grants(w) == {m: 100 for m in members}  # the first run's only
    assert len(await w.messages(flow="campaign.daily")) == 10 and frozen == 0
    assert all(m.flow == "campaign.daily" for m in await w.messages())


async def _entitlement_grants(w: World) -> list[EntitlementGrant]:
    async with w.sessions() as session:
        stmt = sa.select(EntitlementGrant).order_by(EntitlementGrant.member_id)
        return list((await session.execute(stmt)).scalars())


@pytest.mark.asyncio
async def test_an_entitlement_goes_to_the_treated_only_once_per_run_and_counts_as_cost(
    tongcrm_db: TestDatabase,
) -> None:
    clock = Clock(datetime(2026, 5, 1, 2, tzinfo=UTC))  # 10:00 in Shanghai
    w, members = await _world(tongcrm_db, clock, 40)
    coupon = {"kind": "monthly_coupon", "value": 1000, "validity_days": 14, "cost_fen": 700}
    async with w.sessions() as session, session.begin():
        draft = service.Draft(
            "coupon", "vip", "promo", {"kind": "order", "within_days": 3}, control_percent=30, control_seed="c",
            message_cost_fen=5, benefit_entitlement=coupon,
        )  # fmt: skip
        campaign = await service.create(session, draft, SYSTEM)
        once = {"kind": "once", "at": (clock() + timedelta(minutes=5)).isoformat()}
        await service.schedule(session, w.host, SYSTEM, "coupon", once, now=clock(), tz=SH)
    clock.advance(minutes=5)
    [run_id] = await service.run_due(w.sessions, w.host, now=clock(), tz=SH)
    held = set(control.split(campaign.id, members, 3000, "c"))
    treated = [m for m in members if m not in held]
    assert held and treated
    grants = await _entitlement_grants(w)
    assert [g.member_id for g in grants] == treated
    g = grants[0]
    assert (g.kind, g.value, g.status, g.tier_code) == ("monthly_coupon", 1000, "active", None)
    assert g.grant_key == f"campaign:{campaign.id}:run{run_id}:entitlement:{g.member_id}"
    # usable from the start of the Shanghai day (1 May) for 14 days: until midnight ending 14 May there
    assert g.valid_from == datetime(2026, 4, 30, 16, tzinfo=UTC)
    assert g.valid_until == datetime(2026, 5, 14, 16, tzinfo=UTC)
    # a replayed run grants nothing twice
    async with w.sessions() as session, session.begin():
        [first] = await service.runs(session, campaign.id)
        again = await service.get(session, "coupon")
        await service.execute_run(session, w.host, again, first.scheduled_for, now=clock(), tz=SH)
    assert len(await _entitlement_grants(w)) == len(treated)
    async with w.sessions() as session, session.begin():  # what the dispatcher would record
        await session.execute(
            sa.update(Message)
            .where(Message.flow == "campaign.coupon")
            .values(
                status=sa.case((Message.held_out, "refused"), else_="sent"),
                reason=sa.case((Message.held_out, "hold-out"), else_=""),
            )
        )
    async with w.sessions() as session:
        report = await evaluation.report(session, await service.get(session, "coupon"))
    f = report.total.figures
    assert (f.entitlements_granted, f.entitlement_cost_fen) == (len(treated), 700 * len(treated))
    assert f.sent == len(treated) and report.total.cost_fen == 5 * f.sent + 700 * len(treated)
    assert [r.run.entitlements_granted for r in report.runs] == [len(treated)]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("benefit", "pointer", "says"),
    [
        ({"kind": "free_shipping", "value": 0}, "/benefit_entitlement/kind", "cannot be a campaign benefit"),
        (
            {"kind": "monthly_coupon", "value": 0},
            "/benefit_entitlement/value",
            "value is a whole number from 1",
        ),
        (
            {"kind": "monthly_coupon", "value": 5, "validity_days": 400},
            "/benefit_entitlement/validity_days",
            "to 366",
        ),
        (
            {"kind": "monthly_coupon", "value": 5, "cost_fen": -1},
            "/benefit_entitlement/cost_fen",
            "0 or more",
        ),
        (
            {"kind": "monthly_coupon", "value": 5, "colour": "red"},
            "/benefit_entitlement",
            "unknown fields: colour",
        ),
        ([1], "/benefit_entitlement", "is an object"),
    ],
)
async def test_a_bad_entitlement_benefit_is_refused_naming_the_field(
    tongcrm_db: TestDatabase, benefit: Any, pointer: str, says: str
) -> None:
    clock = Clock(datetime(2026, 5, 1, 2, tzinfo=UTC))
    w, _ = await _world(tongcrm_db, clock, 2)
    async with w.sessions() as session, session.begin():
        draft = service.Draft(
            "bad", "vip", "promo", {"kind": "order", "within_days": 3}, benefit_entitlement=benefit
        )
        with pytest.raises(Unprocessable, match=says) as refused:
            await service.create(session, draft, SYSTEM)
    assert refused.value.extra == {"pointer": pointer}
