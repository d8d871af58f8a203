"""The member activity summary stays equal to a recomputation from its sources as they change: an order arrives
or is refunded, a tier override is set, a consent statement is recorded, two members are merged and the merge
undone. After each change the summary is behind (``is_current`` false) until a refresh, and a refresh touches
only the members concerned; ``differences`` (what ``tongcrm verify`` reports) finds a row that drifted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from tongcrm.audit.service import SYSTEM
from tongcrm.channels.models import ChannelAccount
from tongcrm.consent.models import ConsentEvent
from tongcrm.members.merge import merge_members, undo_merge
from tongcrm.members.models import Member
from tongcrm.orders.models import Order
from tongcrm.segments import activity, jobs
from tongcrm.segments.models import MemberActivity
from tongcrm.testing.database import TestDatabase
from tongcrm.tiers.models import MemberTier

NOW = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)


async def _row(db: TestDatabase, member_id: int) -> MemberActivity | None:
    async with db.sessions() as s:
        return await s.get(MemberActivity, member_id)


async def _refreshed(db: TestDatabase) -> None:
    """Refresh, then check the summary is current and equals a full recomputation."""
    async with db.sessions() as s:
        assert not await activity.is_current(s)
    async with db.sessions() as s, s.begin():
        assert await activity.refresh(s)
    async with db.sessions() as s:
        assert await activity.is_current(s)
        assert await activity.differences(s) == []


async def test_the_summary_follows_orders_tiers_consent_and_merges(tongcrm_db: TestDatabase) -> None:
    async with tongcrm_db.sessions() as s, s.begin():
        account = ChannelAccount(channel="taobao", name="shop", settings={})
        people = [Member(), Member(), Member()]
        s.add_all([account, *people])
        await s.flush()
        a, b, c = (p.id for p in people)

        def order(member: int, n: int, paid: int, *, store: str | None = None, days: int = 1) -> Order:
            at = NOW - timedelta(days=days)
            return Order(
                account_id=account.id, external_id=f"o{n}", member_id=member, origin_member_id=member,
                channel="taobao", status="completed", store_code=store, total_fen=paid, paid_fen=paid,
                refunded_fen=0, placed_at=at, paid_at=at, modified_at=at,
            )  # fmt: skip

        s.add_all([order(a, 1, 1000, days=40), order(a, 2, 500, store="SH001"), order(b, 3, 700)])
    async with tongcrm_db.sessions() as s:
        assert not await activity.is_current(s)  # never built
    await _refreshed(tongcrm_db)
    row = await _row(tongcrm_db, a)
    assert row is not None and (row.orders, row.spend, row.store_orders) == (2, 1500, 1)
    assert await _row(tongcrm_db, c) is None  # nothing to summarise: the empty state

    # a new order, and a refund in full of an old one (it no longer counts)
    async with tongcrm_db.sessions() as s, s.begin():
        s.add(order(c, 4, 300))
        await s.execute(sa.update(Order).where(Order.external_id == "o1").values(refunded_fen=1000))
    await _refreshed(tongcrm_db)
    row = await _row(tongcrm_db, a)
    assert row is not None and (row.orders, row.spend) == (1, 500)
    row = await _row(tongcrm_db, c)
    assert row is not None and row.orders == 1

    # a tier override and a consent statement
    async with tongcrm_db.sessions() as s, s.begin():
        s.add(
            MemberTier(
                member_id=b, tier_code="silver", since=NOW, anchor_on=NOW.date(), review_on=NOW.date(),
                ladder_version=1, override_code="gold", override_until=NOW + timedelta(days=30),
            )
        )  # fmt: skip
        s.add(ConsentEvent(member_id=b, purpose="marketing", signature="*", status="opt_in", source="test"))
    await _refreshed(tongcrm_db)
    row = await _row(tongcrm_db, b)
    assert row is not None and (row.tier_code, row.override_code, row.marketing) == (
        "silver",
        "gold",
        "opt_in",
    )

    # a merge moves b's orders, tier and consent to a; its undo moves them back
    async with tongcrm_db.sessions() as s, s.begin():
        record = await merge_members(s, a, b, actor=SYSTEM, reason="same person", at=NOW - timedelta(days=3))
        merge_id = record.id
    await _refreshed(tongcrm_db)
    async with tongcrm_db.sessions() as s, s.begin():
        await undo_merge(s, merge_id, actor=SYSTEM, at=NOW - timedelta(days=2))
    await _refreshed(tongcrm_db)

    # a row that drifted (written behind the refresh's back) is what verify reports
    async with tongcrm_db.sessions() as s, s.begin():
        await s.execute(sa.update(MemberActivity).where(MemberActivity.member_id == c).values(orders=9))
    async with tongcrm_db.sessions() as s:
        assert await activity.is_current(s)  # nothing a refresh watches changed...
        assert await activity.differences(s) == [c]  # ...but the recomputation disagrees
    async with tongcrm_db.sessions() as s, s.begin():
        await activity.rebuild(s)
    async with tongcrm_db.sessions() as s:
        assert await activity.differences(s) == []


async def test_the_minutely_job_brings_the_summary_up_to_date(tongcrm_db: TestDatabase) -> None:
    async with tongcrm_db.sessions() as s, s.begin():
        person = Member()
        s.add(person)
        await s.flush()
        s.add(
            ConsentEvent(member_id=person.id, purpose="marketing", signature="*", status="opt_in", source="t")
        )
    job_ctx: Any = SimpleNamespace(sessions=tongcrm_db.sessions)
    await jobs.refresh_activity(job_ctx, {})
    async with tongcrm_db.sessions() as s:
        assert await activity.is_current(s)
        row = await s.get(MemberActivity, person.id)
        assert row is not None and row.marketing == "opt_in"
    await jobs.refresh_activity(job_ctx, {})  # nothing changed: it runs again and changes nothing
    async with tongcrm_db.sessions() as s:
        assert await activity.is_current(s) and await activity.differences(s) == []
