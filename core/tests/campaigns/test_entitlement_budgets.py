"""Entitlement budgets, on both databases: a campaign run whose treated members would pass what is left of the
budget is refused up front with nothing granted (as for points), scheduling refuses a first run that passes it;
a journey stops granting exactly at its budget, with the reason on each participant left out, even with two
workers acting at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from campaign_kit import run_due_twice, tag, vip_world
from messaging_kit import Clock
from tongcrm.audit.service import SYSTEM
from tongcrm.campaigns import control, journeys, service
from tongcrm.campaigns.models import JourneyParticipant
from tongcrm.entitlements.models import EntitlementGrant
from tongcrm.errors import Unprocessable
from tongcrm.testing.database import TestDatabase

SH = ZoneInfo("Asia/Shanghai")
COUPON = {"kind": "monthly_coupon", "value": 500, "validity_days": 7, "cost_fen": 300}


async def _grant_count(w: object) -> int:
    async with w.sessions() as session:  # type: ignore[attr-defined]
        return int(
            (await session.execute(sa.select(sa.func.count()).select_from(EntitlementGrant))).scalar_one()
        )


@pytest.mark.asyncio
async def test_a_campaign_run_beyond_the_entitlement_budget_is_refused(tongcrm_db: TestDatabase) -> None:
    clock = Clock(datetime(2026, 5, 1, 2, tzinfo=UTC))
    w, members = await vip_world(tongcrm_db, clock, 10)
    await tag(w, members)
    async with w.sessions() as session, session.begin():
        tight = service.Draft(
            "tight", "vip", "promo", {"kind": "order", "within_days": 3}, control_percent=0,
            benefit_entitlement=COUPON, budget_entitlements=9,
        )  # fmt: skip
        await service.create(session, tight, SYSTEM)
        with pytest.raises(Unprocessable, match="entitlement budget exceeded: the first run would grant 10"):
            await service.schedule(
                session, w.host, SYSTEM, "tight", {"kind": "daily", "time": "10:30"}, now=clock(), tz=SH
            )
        room_for_one = service.Draft(
            "daily", "vip", "promo", {"kind": "order", "within_days": 1}, control_percent=0,
            benefit_entitlement=COUPON, budget_entitlements=15,
        )  # fmt: skip
        await service.create(session, room_for_one, SYSTEM)
        await service.schedule(
            session, w.host, SYSTEM, "daily", {"kind": "daily", "time": "10:30"}, now=clock(), tz=SH
        )
    runs = await run_due_twice(w, "daily", SH)
    assert [(r.status, r.entitlements_granted) for r in runs] == [
        ("finished", 10),
        ("refused", 0),
    ]  # a finished run still counts
    assert runs[1].reason == (
        "entitlement budget exceeded: the run would grant 10 entitlements and 5 are left of the budget of 15"
    )
    assert await _grant_count(w) == 10
    assert len(await w.messages(flow="campaign.daily")) == 10  # the refused run queued nothing


@pytest.mark.asyncio
async def test_a_journey_stops_exactly_at_its_entitlement_budget_with_two_workers(
    tongcrm_db: TestDatabase,
) -> None:
    clock = Clock(datetime(2026, 7, 1, 2, tzinfo=UTC))
    w, m = await vip_world(tongcrm_db, clock, 20)
    steps = {"wait_hours": 0, "condition": None, "then": {"template": "promo", "entitlement": COUPON}}
    draft = journeys.Draft(
        "capped", {"kind": "lifecycle_changed", "to": "dormant"}, steps, {"kind": "order", "within_days": 7},
        control_percent=20, control_seed="b", budget_entitlements=7,
    )  # fmt: skip
    async with w.sessions() as session, session.begin():
        journey = await journeys.create(session, draft, SYSTEM, now=clock())
        journey_id = journey.id
        await journeys.enter(session, journey, m, "event:1", now=clock())
    treated = [x for x in m if not control.in_control(journey_id, x, 2000, "journey:b")]
    assert len(treated) > 7
    # two workers, small batches, at once: the journey's lock serialises the budget between them
    await asyncio.gather(
        journeys.advance_due(w.sessions, w.host, now=clock(), tz=SH, limit=3),
        journeys.advance_due(w.sessions, w.host, now=clock(), tz=SH, limit=3),
    )
    assert await _grant_count(w) == 7
    async with w.sessions() as session:
        rows = list(
            (
                await session.execute(
                    sa.select(JourneyParticipant).where(JourneyParticipant.journey_id == journey_id)
                )
            ).scalars()
        )
    assert {p.state for p in rows} == {"done"}
    assert sum(p.entitlements_granted for p in rows) == 7
    left_out = [p for p in rows if p.grp == control.TREATMENT and not p.entitlements_granted]
    assert len(left_out) == len(treated) - 7
    assert {p.reason for p in left_out} == {"entitlement budget exhausted (7 grants)"}
    async with w.sessions() as session:
        report = await journeys.report(session, await journeys.get(session, "capped"))
    assert report.total.figures.entitlements_granted == 7
