"""Tier movement on both databases: immediate upgrades, what qualifies, review-time downgrades (anniversaries,
leap days, one step at a time, annual reviews), overrides, ladder changes, merges and events."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from tongcrm.audit.models import AuditEntry
from tongcrm.audit.service import SYSTEM
from tongcrm.errors import Unprocessable
from tongcrm.jobs.models import Job, OutboxEvent
from tongcrm.members.merge import merge_members
from tongcrm.points.models import EntryKind, PointsEntry, PointsLot
from tongcrm.points.multipliers import resolve_tiers
from tongcrm.testing.database import TestDatabase
from tongcrm.tiers import service as tiers
from tongcrm.tiers import testing as kit
from tongcrm.tiers.models import MemberTier, TierHistory

SH = ZoneInfo("Asia/Shanghai")
T0 = datetime(2024, 2, 29, 4, 0, tzinfo=UTC)  # noon in Shanghai on a leap day


def ctx(at: datetime) -> tiers.TierContext:
    return tiers.TierContext(at, SH)


async def setup(db: TestDatabase, doc: dict[str, Any] | None = None, at: datetime = T0) -> None:
    async with db.sessions() as s, s.begin():
        await tiers.apply_ladder(s, ctx(at), doc or kit.LADDER, reason="launch", actor=SYSTEM)


async def held(db: TestDatabase, member_id: int) -> str:
    async with db.sessions() as s:
        row = await s.get(MemberTier, member_id)
        return row.tier_code if row else "member"


async def test_upgrade_is_immediate_and_refunds_and_unpaid_orders_do_not_qualify(
    tongcrm_db: TestDatabase,
) -> None:
    await setup(tongcrm_db)
    async with tongcrm_db.sessions() as s, s.begin():
        a, b, c = await kit.members(s, 3)
        await kit.order(s, a, 100_000, T0 - timedelta(days=1))
        await kit.order(s, b, 150_000, T0 - timedelta(days=1), refunded_fen=60_000, status="refunded")
        await kit.order(s, c, 200_000, T0 - timedelta(days=1), status="closed", paid=False)
        await kit.order(s, c, 200_000, T0 - timedelta(days=1), status="created", paid=False)
        changes = await tiers.reevaluate(s, ctx(T0), [a, b, c])
    assert [(ch.member_id, ch.to_code) for ch in changes] == [(a, "silver")]
    assert (await held(tongcrm_db, b), await held(tongcrm_db, c)) == ("member", "member")
    async with tongcrm_db.sessions() as s:
        events = [
            e.payload for e in (await s.execute(sa.select(OutboxEvent))).scalars() if e.name == "tier_changed"
        ]
        row = await s.get(MemberTier, a)
    assert events == [{"member_id": a, "from": "member", "to": "silver", "reason": "upgrade"}]
    assert row is not None and row.anchor_on == date(2024, 2, 29) and row.review_on == date(2025, 2, 28)
    # a second pass changes nothing (idempotent)
    async with tongcrm_db.sessions() as s, s.begin():
        assert await tiers.reevaluate(s, ctx(T0), [a, b, c]) == []


async def test_spend_counts_across_channels_and_orders_count_alone_can_reach_gold(
    tongcrm_db: TestDatabase,
) -> None:
    await setup(tongcrm_db)
    async with tongcrm_db.sessions() as s, s.begin():
        (a,) = await kit.members(s, 1)
        for i in range(10):
            await kit.order(s, a, 1_000, T0 - timedelta(days=10 + i))
        assert [c.to_code for c in await tiers.reevaluate(s, ctx(T0), [a])] == ["gold"]
        assert (await resolve_tiers(s, [a], T0))[a].multiplier_pct == 150


async def test_points_earned_counts_earns_less_their_reversals(tongcrm_db: TestDatabase) -> None:
    doc = copy.deepcopy(kit.LADDER)
    doc["tiers"][1]["rule"] = {"metric": "points_earned", "min": 500}
    await setup(tongcrm_db, doc)
    async with tongcrm_db.sessions() as s, s.begin():
        a, b = await kit.members(s, 2)
        for member, amount, reversed_ in ((a, 600, 0), (b, 600, 200)):
            entry = PointsEntry(
                member_id=member,
                kind=EntryKind.EARN,
                amount=amount,
                idempotency_key=f"e{member}",
                occurred_at=T0,
            )
            s.add(entry)
            await s.flush()
            s.add(
                PointsLot(
                    id=entry.id,
                    member_id=member,
                    amount=amount,
                    remaining=amount - reversed_,
                    reversed=reversed_,
                    status="available",
                    earned_at=T0,
                )
            )
        await s.flush()
        changes = await tiers.reevaluate(s, ctx(T0), [a, b])
    assert [(c.member_id, c.to_code) for c in changes] == [(a, "silver")]


async def test_downgrade_waits_for_the_anniversary_even_when_spend_leaves_the_window(
    tongcrm_db: TestDatabase,
) -> None:
    await setup(tongcrm_db)
    async with tongcrm_db.sessions() as s, s.begin():
        (a,) = await kit.members(s, 1)
        await kit.order(s, a, 120_000, T0 - timedelta(days=2))  # 2024-02-27: out of the window on 2025-02-28
        await tiers.reevaluate(s, ctx(T0), [a])
    # months later the order is still in the window; a year later it is not, but nothing happens before review
    for at in (T0 + timedelta(days=200), datetime(2025, 2, 27, 15, 59, tzinfo=UTC)):
        assert await tiers.review(tongcrm_db.sessions, ctx(at)) == 0
    assert await held(tongcrm_db, a) == "silver"
    async with tongcrm_db.sessions() as s:
        status = await tiers.status(s, ctx(datetime(2025, 1, 10, tzinfo=UTC)), a)
    assert status.keep is not None and not status.keep.safe
    assert status.keep.message == "will drop to Member on 2025-02-28 unless ¥1000 more"
    # 2025-02-27 16:00 UTC is 2025-02-28 00:00 in Shanghai: the anniversary of a leap-day change has come
    assert await tiers.review(tongcrm_db.sessions, ctx(datetime(2025, 2, 27, 16, 0, tzinfo=UTC))) == 1
    assert await held(tongcrm_db, a) == "member"
    async with tongcrm_db.sessions() as s:
        hist = [(h.from_code, h.to_code, h.reason) for h in await tiers.history(s, a)]
    assert hist == [("silver", "member", "review"), ("member", "silver", "upgrade")]


async def test_a_member_who_still_qualifies_keeps_the_tier_and_the_next_review_is_a_year_later(
    tongcrm_db: TestDatabase,
) -> None:
    await setup(tongcrm_db)
    async with tongcrm_db.sessions() as s, s.begin():
        (a,) = await kit.members(s, 1)
        await kit.order(s, a, 120_000, T0)
        await tiers.reevaluate(s, ctx(T0), [a])
        await kit.order(s, a, 120_000, datetime(2025, 1, 5, tzinfo=UTC))
    review_day = datetime(2025, 2, 28, 1, tzinfo=UTC)
    async with tongcrm_db.sessions() as s:
        status = await tiers.status(s, ctx(datetime(2025, 1, 6, tzinfo=UTC)), a)
    assert status.keep is not None and status.keep.safe
    assert await tiers.review(tongcrm_db.sessions, ctx(review_day)) == 0
    async with tongcrm_db.sessions() as s:
        row = await s.get(MemberTier, a)
    # the anchor is still the leap day: next year it is the 28th again, in 2028 the 29th
    assert row is not None and row.tier_code == "silver" and row.review_on == date(2026, 2, 28)
    assert row.anchor_on == date(2024, 2, 29)


async def test_one_step_at_a_time_and_annual_reviews(tongcrm_db: TestDatabase) -> None:
    doc = copy.deepcopy(kit.LADDER)
    doc["review"] = {"mode": "annual", "month": 1, "day": 1, "one_step": True}
    await setup(tongcrm_db, doc)
    async with tongcrm_db.sessions() as s, s.begin():
        (a,) = await kit.members(s, 1)
        await kit.order(s, a, 600_000, T0)
        await tiers.reevaluate(s, ctx(T0), [a])
        row = await s.get(MemberTier, a)
        assert row is not None and row.review_on == date(2025, 1, 1)
    # on 2025-01-01 the order is still inside the 12-month window: kept
    await tiers.review(tongcrm_db.sessions, ctx(datetime(2024, 12, 31, 16, 30, tzinfo=UTC)))
    assert await held(tongcrm_db, a) == "gold"
    # on 2026-01-01 nothing qualifies any more, but the member drops one step only
    await tiers.review(tongcrm_db.sessions, ctx(datetime(2025, 12, 31, 16, 30, tzinfo=UTC)))
    assert await held(tongcrm_db, a) == "silver"
    await tiers.review(tongcrm_db.sessions, ctx(datetime(2026, 12, 31, 16, 30, tzinfo=UTC)))
    assert await held(tongcrm_db, a) == "member"


async def test_override_holds_a_tier_until_its_date_then_ends_and_is_audited(
    tongcrm_db: TestDatabase,
) -> None:
    await setup(tongcrm_db)
    async with tongcrm_db.sessions() as s, s.begin():
        (a,) = await kit.members(s, 1)
        await tiers.set_override(
            s, ctx(T0), a, tier="gold", until=date(2024, 3, 31), reason="VIP complaint", actor=SYSTEM
        )
        with pytest.raises(Unprocessable, match="beyond today"):
            await tiers.set_override(
                s, ctx(T0), a, tier="gold", until=date(2024, 2, 29), reason="x", actor=SYSTEM
            )
        with pytest.raises(Unprocessable, match="no tier 'platinum'"):
            await tiers.set_override(
                s, ctx(T0), a, tier="platinum", until=date(2025, 1, 1), reason="x", actor=SYSTEM
            )
    async with tongcrm_db.sessions() as s:
        assert (await tiers.status(s, ctx(T0), a)).tier.code == "gold"
        # still gold on the last local day, back to member once it is over (Shanghai midnight)
        assert (await tiers.status(s, ctx(datetime(2024, 3, 31, 15, 59, tzinfo=UTC)), a)).tier.code == "gold"
        assert (await tiers.status(s, ctx(datetime(2024, 3, 31, 16, 0, tzinfo=UTC)), a)).tier.code == "member"
        audits = list((await s.execute(sa.select(AuditEntry.action))).scalars())
    assert "tiers.override.set" in audits
    async with tongcrm_db.sessions() as s, s.begin():
        assert await tiers.expire_overrides(s, ctx(datetime(2024, 3, 31, 16, 0, tzinfo=UTC))) == 1
    async with tongcrm_db.sessions() as s:
        hist = [(h.from_code, h.to_code, h.reason) for h in await tiers.history(s, a)]
        events = [
            e.payload["reason"]
            for e in (await s.execute(sa.select(OutboxEvent))).scalars()
            if e.name == "tier_changed"
        ]
    assert hist[:2] == [("gold", "member", "override_expired"), ("member", "gold", "override")]
    assert events == ["override", "override_expired"]


async def test_a_ladder_change_upgrades_at_once_but_drops_only_at_review(tongcrm_db: TestDatabase) -> None:
    await setup(tongcrm_db)
    async with tongcrm_db.sessions() as s, s.begin():
        a, b = await kit.members(s, 2)
        await kit.order(s, a, 150_000, T0)  # silver now
        await kit.order(s, b, 80_000, T0)  # member now
        await tiers.reevaluate(s, ctx(T0), [a, b])
    stricter = copy.deepcopy(kit.LADDER)
    stricter["tiers"][1]["rule"] = {"metric": "spend_fen", "min": 50_000}
    stricter["tiers"][2]["rule"] = {"metric": "spend_fen", "min": 140_000}
    later = ctx(T0 + timedelta(days=30))
    async with tongcrm_db.sessions() as s:
        preview = await tiers.preview(s, later, stricter)
    assert [(m.from_code, m.to_code, m.members, m.when) for m in preview.moves] == [
        ("member", "silver", 1, "now"),
        ("silver", "gold", 1, "now"),
    ]
    assert await held(tongcrm_db, b) == "member"  # preview changed nothing
    harsher = copy.deepcopy(kit.LADDER)
    harsher["tiers"][1]["rule"] = {"metric": "spend_fen", "min": 200_000}
    async with tongcrm_db.sessions() as s, s.begin():
        await tiers.apply_ladder(s, later, harsher, reason="tighten", actor=SYSTEM)
        jobs = list((await s.execute(sa.select(Job.name))).scalars())
    assert "tiers.upgrade_all" in jobs
    await tiers.upgrade_all(tongcrm_db.sessions, later)
    assert await held(tongcrm_db, a) == "silver"  # not on the day the operator edits the ladder
    await tiers.review(tongcrm_db.sessions, ctx(datetime(2025, 2, 28, 1, tzinfo=UTC)))
    assert await held(tongcrm_db, a) == "member"


async def test_merge_keeps_the_better_tier_and_requalifies_on_combined_history(
    tongcrm_db: TestDatabase,
) -> None:
    await setup(tongcrm_db)
    async with tongcrm_db.sessions() as s, s.begin():
        a, b, c, d = await kit.members(s, 4)
        await kit.order(s, b, 150_000, T0)
        await kit.order(s, c, 300_000, T0)
        await kit.order(s, d, 300_000, T0)
        await tiers.reevaluate(s, ctx(T0), [a, b, c, d])
        # no clock to travel: the merge listener dates everything with the merge's own time
        await merge_members(s, a, b, actor=SYSTEM, reason="same phone", at=T0, tz=SH)
        await merge_members(s, c, d, actor=SYSTEM, reason="same phone", at=T0, tz=SH)
    assert await held(tongcrm_db, a) == "silver"  # inherited from b
    assert await held(tongcrm_db, c) == "gold"  # 3000 + 3000 yuan together
    async with tongcrm_db.sessions() as s:
        history = list(
            (await s.execute(sa.select(TierHistory).where(TierHistory.reason != "upgrade"))).scalars()
        )
        reasons = {(h.member_id, h.reason) for h in (await s.execute(sa.select(TierHistory))).scalars()}
    assert (a, "merge") in reasons and (c, "upgrade") in reasons
    assert [(h.member_id, h.at) for h in history] == [(a, T0)]
    # the tombstone is never reviewed
    assert await tiers.review(tongcrm_db.sessions, ctx(datetime(2025, 3, 1, tzinfo=UTC))) == 2
