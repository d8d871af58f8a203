"""The counter facade (tongcrm.counter): one unit of work the core owns, a caller's own rows and nothing else,
what a cashier may see, sales paid partly with points and returns that give them back — for a channel the core
knows nothing about (a service desk), on every database backend."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from tongcrm.audit.service import SYSTEM
from tongcrm.channels.models import ChannelAccount
from tongcrm.config import Settings
from tongcrm.counter import (
    CounterAccount,
    CounterRefused,
    CounterService,
    PaidPointsBack,
    PointsPayment,
    ReturnedLine,
    mask_name,
    paid_points_due,
    share_out,
)
from tongcrm.entitlements.models import EntitlementGrant, EntitlementUsage, GrantStatus
from tongcrm.errors import PluginError
from tongcrm.members.models import Member
from tongcrm.plugin.host import PluginHost
from tongcrm.points import ledger
from tongcrm.points.models import PointsEntry
from tongcrm.testing.database import TestDatabase
from tongcrm.tiers import service as tiers
from tongcrm.tiers.testing import LADDER

from .counter_orders import NOW, counter_order

DESK_ROWS = sa.Table(
    "counter_test_desk_rows",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("note", sa.String(50), nullable=False),
)


# -------------------------------------------------------------------------------------------------------------
# the arithmetic of giving paid points back


def test_share_out_is_exact_and_breaks_ties_by_line_order() -> None:
    assert share_out([1_000, 1_000, 1_000], 7) == [3, 2, 2]
    assert share_out([30_000, 20_000], 1_000) == [600, 400]
    assert share_out([0, 0], 5) == [0, 0] and share_out([10], 0) == [0]


def test_paid_points_due_by_hand() -> None:
    lines = [ReturnedLine(1_000, 0), ReturnedLine(1_000, 500), ReturnedLine(1_000, 0)]
    assert paid_points_due(7, lines) == 1  # floor(2 × 500 / 1000)
    assert paid_points_due(7, [ReturnedLine(1_000, 1_000)] * 3) == 7
    assert paid_points_due(7, [ReturnedLine(1_000, 999), *[ReturnedLine(1_000, 1_000)] * 2]) == 2 + 2 + 2


@given(
    st.integers(min_value=0, max_value=10**6),
    st.lists(st.integers(min_value=0, max_value=10**7), min_size=1, max_size=6),
    st.lists(st.tuples(st.integers(min_value=0, max_value=5), st.integers(min_value=1, max_value=10**7))),
)
def test_paid_points_due_never_exceeds_never_shrinks_and_ends_at_all(
    redeemed: int, amounts: list[int], returns: list[tuple[int, int]]
) -> None:
    assert sum(share_out(amounts, redeemed)) == (redeemed if sum(amounts) else 0)
    back = [0] * len(amounts)
    due = 0
    for index, fen in returns:
        i = index % len(amounts)
        back[i] = min(amounts[i], back[i] + fen)
        now_due = paid_points_due(redeemed, [ReturnedLine(a, b) for a, b in zip(amounts, back, strict=True)])
        assert due <= now_due <= redeemed
        due = now_due
    everything = paid_points_due(redeemed, [ReturnedLine(a, a) for a in amounts])
    assert everything == (redeemed if sum(amounts) else 0)


def test_mask_name() -> None:
    assert mask_name("张三丰") == "张**" and mask_name("王") == "*" and mask_name(None) is None


# -------------------------------------------------------------------------------------------------------------
# the unit of work


@pytest.fixture
async def counter(tongcrm_db: TestDatabase, tongcrm_settings: Settings) -> AsyncIterator[CounterService]:
    async with tongcrm_db.engine.begin() as conn:
        await conn.run_sync(DESK_ROWS.create, checkfirst=True)
    yield CounterService(
        tongcrm_db.sessions,
        tongcrm_db.read_sessions,
        PluginHost(autoload=False),
        tongcrm_settings,
        clock=lambda: NOW,
    )
    async with tongcrm_db.engine.begin() as conn:
        await conn.run_sync(DESK_ROWS.drop)


async def _desk(db: TestDatabase) -> CounterAccount:
    async with db.sessions() as s, s.begin():
        s.add(ChannelAccount(channel="service_desk", name="desk-1", settings={"floor": "2"}))
    async with db.sessions() as s:
        row = (await s.execute(sa.select(ChannelAccount).where(ChannelAccount.name == "desk-1"))).scalar_one()
    return CounterAccount(row.id, row.channel, row.name, row.status, dict(row.settings))


async def test_a_unit_of_work_commits_own_rows_and_core_effects_together_or_not_at_all(
    counter: CounterService, tongcrm_db: TestDatabase
) -> None:
    desk = await _desk(tongcrm_db)

    async def crash_half_way() -> None:
        async with counter.unit_of_work(actor=SYSTEM, tables=[DESK_ROWS]) as uow:
            await uow.rows.execute(sa.insert(DESK_ROWS).values(note="first"))
            await uow.enrol(desk, mobile="13800138000", name="张三", marketing=True, service=True,
                            proof="form 7", place="desk-1")  # fmt: skip
            raise RuntimeError("till crashed")

    with pytest.raises(RuntimeError, match="till crashed"):
        await crash_half_way()
    async with tongcrm_db.sessions() as s:
        assert (await s.execute(sa.select(sa.func.count()).select_from(DESK_ROWS))).scalar_one() == 0
        assert (await s.execute(sa.select(sa.func.count()).select_from(Member))).scalar_one() == 0
    async with counter.unit_of_work(actor=SYSTEM, tables=[DESK_ROWS]) as uow:
        await uow.rows.execute(sa.insert(DESK_ROWS).values(note="second"))
        card = await uow.enrol(desk, mobile="13800138000", name="张三", marketing=True, service=True,
                               proof="form 7", place="desk-1")  # fmt: skip
    assert card.created and card.name == "张*" and card.mobile == "138****8000" and card.tier is None
    async with counter.unit_of_work(actor=SYSTEM, tables=[DESK_ROWS], readonly=True) as uow:
        notes = (await uow.rows.execute(sa.select(DESK_ROWS.c.note))).scalars().all()
        assert notes == ["second"]
        assert await uow.find_member(mobile="+86 138 0013 8000") == card.member_id
        assert await uow.find_member(mobile="13900139000") is None
        assert await uow.account("service_desk", "desk-1") == desk
        assert await uow.account("offline_pos", "desk-1") is None


async def test_a_read_only_unit_of_work_begins_only_when_it_reads_and_hands_its_connection_back(
    counter: CounterService, tongcrm_db: TestDatabase
) -> None:
    """Its session begins on its first read (the till's lookup, cached and read through the point reader, often
    makes none): committed and closed after one, nothing begun or checked out without one, on error too."""
    pool = tongcrm_db.engine.sync_engine.pool
    desk = await _desk(tongcrm_db)
    async with counter.unit_of_work(actor=SYSTEM, tables=[DESK_ROWS], readonly=True) as uow:
        assert await uow.account("service_desk", "desk-1") == desk  # read through the session: made for it
        assert uow._source.made is not None
    async with counter.unit_of_work(actor=SYSTEM, tables=[DESK_ROWS], readonly=True) as uow:
        assert await uow.account("service_desk", "desk-1") == desk  # cached: no session made unasked
        assert uow.rows.dialect == tongcrm_db.backend and uow._source.made is None
        session = uow._session
        assert not session.sync_session.in_transaction() and pool.checkedout() == 0
    assert not session.sync_session.in_transaction() and pool.checkedout() == 0
    for fails in (False, True):
        with pytest.raises(RuntimeError) if fails else contextlib.nullcontext():
            async with counter.unit_of_work(actor=SYSTEM, tables=[DESK_ROWS], readonly=True) as uow:
                session = uow._session
                assert (await uow.rows.execute(sa.select(DESK_ROWS.c.note))).scalars().all() == []
                assert session.sync_session.in_transaction()
                if fails:
                    raise RuntimeError("the lookup fails")
        assert not session.sync_session.in_transaction() and pool.checkedout() == 0


async def test_own_rows_refuse_other_tables_sql_text_writes_when_read_only_and_nesting(
    counter: CounterService,
) -> None:
    async with counter.unit_of_work(actor=SYSTEM, tables=[DESK_ROWS]) as uow:
        with pytest.raises(PluginError, match="members"):
            await uow.rows.execute(sa.select(Member.id))
        with pytest.raises(PluginError, match="points_entries"):
            await uow.rows.execute(
                sa.select(DESK_ROWS.c.id).where(DESK_ROWS.c.id.in_(sa.select(PointsEntry.id)))
            )
        with pytest.raises(PluginError, match="members"):
            await uow.rows.execute(sa.update(Member).values(name="x"))
        with pytest.raises(PluginError, match="SQL text"):
            await uow.rows.execute(sa.text("DELETE FROM members"))
        with pytest.raises(PluginError, match="own tables"):
            uow.rows.insert(sa.Table("members", sa.MetaData()))
    async with counter.unit_of_work(actor=SYSTEM, tables=[DESK_ROWS], readonly=True) as uow:
        with pytest.raises(PluginError, match="read-only"):
            await uow.rows.execute(sa.insert(DESK_ROWS).values(note="x"))
        with pytest.raises(PluginError, match="already open"):
            async with counter.unit_of_work(actor=SYSTEM):
                pass


async def test_a_statement_built_once_runs_with_params_and_is_still_checked_per_unit_of_work(
    counter: CounterService,
) -> None:
    """A till's statements are built once and run with ``params``; the check that they touch only the
    caller's tables is remembered per set of tables and read-only-ness, never skipped for another."""
    insert = sa.insert(DESK_ROWS).values(note=sa.bindparam("note"))
    notes = sa.select(DESK_ROWS.c.note).where(DESK_ROWS.c.note == sa.bindparam("note"))
    for note in ("a", "b"):
        async with counter.unit_of_work(actor=SYSTEM, tables=[DESK_ROWS]) as uow:
            await uow.rows.execute(insert, {"note": note})
    async with counter.unit_of_work(actor=SYSTEM, tables=[DESK_ROWS], readonly=True) as uow:
        assert (await uow.rows.execute(notes, {"note": "b"})).scalars().all() == ["b"]
        with pytest.raises(PluginError, match="read-only"):
            await uow.rows.execute(insert, {"note": "c"})
    async with counter.unit_of_work(actor=SYSTEM, tables=[]) as uow:
        with pytest.raises(PluginError, match="counter_test_desk_rows"):
            await uow.rows.execute(notes, {"note": "a"})


async def test_a_sale_paid_with_points_and_its_return(
    counter: CounterService, tongcrm_db: TestDatabase
) -> None:
    desk = await _desk(tongcrm_db)
    async with counter.unit_of_work(actor=SYSTEM) as uow:
        buyer = await uow.buyer(mobile="13800138000", evidence="desk")
        assert buyer.member_id is None  # not a member yet: the sale makes them one
        first = await uow.record_sale(desk, counter_order("D-1", (80_000,)), buyer=buyer)
    assert first.points_earned == 800 and first.points_available == 800 and first.member_id is not None
    async with counter.unit_of_work(actor=SYSTEM) as uow:
        buyer = await uow.buyer(member_id=first.member_id, evidence="desk")
        assert buyer.claim.kind == "mobile" and buyer.claim.value == "+8613800138000"
        with pytest.raises(CounterRefused) as too_much:
            await uow.record_sale(desk, counter_order("D-2", (10_000,)), buyer=buyer,
                                  points_payment=PointsPayment(801, key="desk:D-2"))  # fmt: skip
        assert too_much.value.reason == "insufficient_points"
    async with counter.unit_of_work(actor=SYSTEM) as uow:
        buyer = await uow.buyer(member_id=first.member_id, evidence="desk")
        # 300 + 200 yuan paid partly with 500 points: the lines carry what earns (the rest)
        paid = await uow.record_sale(desk, counter_order("D-2", (27_000, 18_000)), buyer=buyer,
                                     points_payment=PointsPayment(500, key="desk:D-2", reason="desk sale"))  # fmt: skip
    assert (paid.points_redeemed, paid.points_earned, paid.points_available) == (500, 450, 800 - 500 + 450)

    async def give_back(key: str, back: tuple[int, ...], version: int) -> tuple[int, int, int | None]:
        async with counter.unit_of_work(actor=SYSTEM) as uow:
            buyer = await uow.buyer(member_id=first.member_id, evidence="desk")
            returned = await uow.record_return(
                desk,
                counter_order(
                    "D-2", (27_000, 18_000), back=(back[0] * 27 // 30, back[1] * 18 // 20), version=version
                ),
                buyer=buyer,
                paid_points=PaidPointsBack(
                    "desk:D-2", key, (ReturnedLine(30_000, back[0]), ReturnedLine(20_000, back[1]))
                ),
            )
        return returned.points_reversed, returned.points_refunded, returned.points_available

    assert await give_back("desk:R-1", (0, 20_000), 1) == (180, 200, 750 - 180 + 200)
    assert await give_back("desk:R-1", (0, 20_000), 1) == (0, 200, 770)  # the same return again: nothing new
    assert await give_back("desk:R-2", (30_000, 20_000), 2) == (270, 300, 770 - 270 + 300)
    async with tongcrm_db.sessions() as s:
        assert await ledger.verify(s) == []
        refunds = (
            (
                await s.execute(
                    sa.select(PointsEntry.amount).where(PointsEntry.kind == "refund").order_by(PointsEntry.id)
                )
            )
            .scalars()
            .all()
        )
    assert list(refunds) == [200, 300]
    async with counter.unit_of_work(actor=SYSTEM) as uow:
        with pytest.raises(CounterRefused) as unknown:
            await uow.record_return(desk, counter_order("D-404", (1,), back=(1,)), buyer=None)
        assert unknown.value.reason == "order_not_found"
        with pytest.raises(CounterRefused) as nobody:
            await uow.buyer(member_id=999_999, evidence="desk")
        assert nobody.value.reason == "unknown_member"


async def test_a_cashier_sees_tier_and_entitlements_usable_now(
    counter: CounterService, tongcrm_db: TestDatabase
) -> None:
    desk = await _desk(tongcrm_db)
    async with counter.unit_of_work(actor=SYSTEM) as uow:
        card = await uow.enrol(desk, mobile="13800138000", name=None, marketing=False, service=True,
                               proof="", place="desk-1")  # fmt: skip
    m = card.member_id
    async with tongcrm_db.sessions() as s, s.begin():
        await tiers.apply_ladder(s, tiers.TierContext(NOW), LADDER, reason="test", actor=SYSTEM)
        coupons = [
            EntitlementGrant(member_id=m, grant_key=f"c{i}", kind="monthly_coupon", value=500, params={},
                             valid_from=NOW - timedelta(days=1), valid_until=NOW + timedelta(days=days),
                             status=GrantStatus.ACTIVE)
            for i, days in enumerate((5, -0.5, 9, 2))
        ]  # fmt: skip
        s.add_all(coupons)
        await s.flush()
        s.add(EntitlementUsage(grant_id=coupons[3].id, member_id=m, usage_key="u1", reference="order 1",
                               actor="test", used_at=NOW))  # fmt: skip
    async with counter.unit_of_work(actor=SYSTEM, readonly=True) as uow:
        seen = await uow.member_card(m)
    assert seen.tier is not None and seen.tier.code == "member" and seen.name is None
    usable = [(e.kind, e.grant_id) for e in seen.entitlements if e.grant_id is not None]
    # the expired coupon and the used one are not offered; the one that expires first comes first
    assert usable == [("monthly_coupon", coupons[0].id), ("monthly_coupon", coupons[2].id)]
