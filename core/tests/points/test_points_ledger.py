"""The points ledger through the service: earning from order facts, release, proportional reversal under both
policies, replays, expiry at the programme's wall-clock boundary, caps and merges — on every database backend."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from points_helpers import SHANGHAI, Clock, ctx, make_members, order, snapshot
from tongcrm.errors import Conflict
from tongcrm.jobs.models import OutboxEvent
from tongcrm.points import ledger, multipliers, service
from tongcrm.points.models import PointsEntry, PointsLineAward, PointsLot
from tongcrm.points.multipliers import TierInfo, set_tier_resolver
from tongcrm.testing.database import TestDatabase

BASE = {"rules": [{"type": "spend", "code": "base", "priority": 100, "release": "paid"}]}
PAID = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


async def _members(db: TestDatabase, n: int = 2) -> list[int]:
    async with db.sessions() as s, s.begin():
        return await make_members(s, n)


async def _apply(db: TestDatabase, c: Any, orders: list[Any]) -> None:
    async with db.sessions() as s, s.begin():
        await service.apply_orders(s, c, orders)


async def _balance(db: TestDatabase, member_id: int) -> tuple[int, int, int, int]:
    async with db.sessions() as s:
        b = await service.balance(s, member_id)
    return b.available, b.pending, b.debt, b.owed


async def _verify(db: TestDatabase) -> None:
    async with db.sessions() as s:
        assert await ledger.verify(s) == []


async def test_paid_order_earns_per_line_and_replays_change_nothing(tongcrm_db: TestDatabase) -> None:
    (m, _) = await _members(tongcrm_db)
    clock = Clock()
    c = ctx(clock, BASE)
    facts = [
        order(1, m, [(11, 12_345), (12, 99)], paid_at=PAID),
        order(2, m, [(21, 0)], status="closed", paid_at=None),
    ]
    await _apply(tongcrm_db, c, facts)
    assert await _balance(tongcrm_db, m) == (123, 0, 0, 0)  # 123.45 yuan → 123, 0.99 → 0 (rounded down)
    async with tongcrm_db.sessions() as s:
        before = await snapshot(s)
        entry = (await s.execute(sa.select(PointsEntry))).scalar_one()
    assert entry.idempotency_key == "earn:11:base" and entry.rule_version == 7 and entry.line_id == 11
    for _ in range(3):
        await _apply(tongcrm_db, c, facts)
    async with tongcrm_db.sessions() as s:
        assert await snapshot(s) == before
    await _verify(tongcrm_db)


async def test_pending_until_completion_then_return_window(tongcrm_db: TestDatabase) -> None:
    (m, _) = await _members(tongcrm_db)
    clock = Clock()
    doc = {
        "rules": [
            {
                "type": "spend",
                "code": "base",
                "priority": 100,
                "release": "return_window",
                "return_window_days": 7,
            }
        ]
    }
    c = ctx(clock, doc)
    await _apply(tongcrm_db, c, [order(1, m, [(11, 10_000)], paid_at=PAID)])
    assert await _balance(tongcrm_db, m) == (0, 100, 0, 0)
    with pytest.raises(Conflict):  # pending points are visible but not spendable
        async with tongcrm_db.sessions() as s, s.begin():
            await service.redeem(s, c, m, 1, key="k1")
    completed = clock.now
    await _apply(
        tongcrm_db, c, [order(1, m, [(11, 10_000)], status="completed", paid_at=PAID, completed_at=completed)]
    )
    assert await _balance(tongcrm_db, m) == (0, 100, 0, 0)  # the window is still open
    clock.advance(days=7, seconds=1)
    async with tongcrm_db.sessions() as s, s.begin():
        assert await ledger.release_due(s, now=clock()) == 1
    assert await _balance(tongcrm_db, m) == (100, 0, 0, 0)
    await _verify(tongcrm_db)


async def test_partial_then_full_refund_reverses_proportionally_never_more(tongcrm_db: TestDatabase) -> None:
    (m, _) = await _members(tongcrm_db)
    c = ctx(Clock(), BASE)
    await _apply(tongcrm_db, c, [order(1, m, [(11, 10_000)], paid_at=PAID)])
    await _apply(tongcrm_db, c, [order(1, m, [(11, 10_000, 3_333)], paid_at=PAID)])
    assert await _balance(tongcrm_db, m) == (67, 0, 0, 0)  # floor(100 × 3333 / 10000) = 33 taken back
    await _apply(tongcrm_db, c, [order(1, m, [(11, 10_000, 3_333)], paid_at=PAID)])  # replay
    await _apply(tongcrm_db, c, [order(1, m, [(11, 10_000, 10_000)], status="refunded", paid_at=PAID)])
    await _apply(tongcrm_db, c, [order(1, m, [(11, 10_000, 12_000)], status="refunded", paid_at=PAID)])
    assert await _balance(tongcrm_db, m) == (0, 0, 0, 0)
    async with tongcrm_db.sessions() as s:
        kinds = [
            (e.kind, e.amount)
            for e in (await s.execute(sa.select(PointsEntry).order_by(PointsEntry.id))).scalars()
        ]
    assert kinds == [("earn", 100), ("reverse", -33), ("reverse", -67)]
    await _verify(tongcrm_db)


async def test_an_order_first_seen_refunded_earns_and_reverses_in_one_apply(tongcrm_db: TestDatabase) -> None:
    """The follow-up finds the lots the same apply posted (on PostgreSQL the posting's statement returns them
    with the lots held before) beside a lot posted earlier."""
    (m, _) = await _members(tongcrm_db)
    c = ctx(Clock(), BASE)
    await _apply(tongcrm_db, c, [order(1, m, [(11, 10_000)], paid_at=PAID)])
    await _apply(
        tongcrm_db,
        c,
        [
            order(1, m, [(11, 10_000, 5_000)], paid_at=PAID),  # earned before, half refunded now
            order(2, m, [(21, 4_000, 1_000), (22, 3_000)], paid_at=PAID),  # new, a quarter of a line refunded
            order(3, m, [(31, 2_000, 2_000)], status="refunded", paid_at=PAID),  # new, refunded in full
        ],
    )
    assert await _balance(tongcrm_db, m) == (50 + 40 - 10 + 30, 0, 0, 0)
    async with tongcrm_db.sessions() as s:
        entries = [
            (e.idempotency_key.split(":")[0], e.line_id, e.amount)
            for e in (await s.execute(sa.select(PointsEntry).order_by(PointsEntry.id))).scalars()
        ]
    assert sorted(entries, key=lambda e: (e[0], e[1] or 0)) == [
        ("earn", 11, 100), ("earn", 21, 40), ("earn", 22, 30), ("earn", 31, 20),
        ("reverse", 11, -50), ("reverse", 21, -10), ("reverse", 31, -20),
    ]  # fmt: skip
    await _verify(tongcrm_db)


async def test_refunds_of_lots_the_same_apply_posts_read_no_lot_on_postgresql(
    tongcrm_db: TestDatabase,
) -> None:
    """On PostgreSQL the follow-up takes the lots the posting's statement just inserted as it inserted them
    (``ledger.posted_lot``): when every reversal falls on those, it reads no lot. What it stores is what the
    read led to: the same lots, draws and entries on both databases."""
    (m, _) = await _members(tongcrm_db)
    c = ctx(Clock(), BASE)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sa.event.listen(tongcrm_db.engine.sync_engine, "before_cursor_execute", count)
    try:
        await _apply(
            tongcrm_db,
            c,
            [
                order(2, m, [(21, 4_000, 1_000), (22, 3_000)], paid_at=PAID),  # a quarter of a line refunded
                order(3, m, [(31, 2_000, 2_000)], status="refunded", paid_at=PAID),  # refunded in full
            ],
        )
    finally:
        sa.event.remove(tongcrm_db.engine.sync_engine, "before_cursor_execute", count)
    reads = [s for s in statements if s.lstrip().startswith("SELECT") and "FROM points_lots" in s]
    if tongcrm_db.backend == "postgresql":
        assert reads == []
    assert await _balance(tongcrm_db, m) == (40 - 10 + 30, 0, 0, 0)
    async with tongcrm_db.sessions() as s:
        lots = [
            (lot.line_id, lot.amount, lot.remaining, lot.reversed, lot.status, lot.expires_at, lot.earned_at)
            for lot in (await s.execute(sa.select(PointsLot).order_by(PointsLot.line_id))).scalars()
        ]
        draws = (
            await s.execute(
                sa.select(PointsLot.line_id, PointsEntry.kind, ledger.DRAWS.c.kind, ledger.DRAWS.c.amount)
                .join(PointsLot, PointsLot.id == ledger.DRAWS.c.lot_id)
                .join(PointsEntry, PointsEntry.id == ledger.DRAWS.c.entry_id)
                .order_by(PointsLot.line_id)
            )
        ).all()
    assert lots == [
        (21, 40, 30, 10, "available", None, PAID),
        (22, 30, 30, 0, "available", None, PAID),
        (31, 20, 0, 20, "available", None, PAID),
    ]
    assert [tuple(d) for d in draws] == [(21, "reverse", "reverse", 10), (31, "reverse", "reverse", 20)]
    await _verify(tongcrm_db)


@pytest.mark.parametrize("policy", ["debt", "clawback"])
async def test_refund_of_spent_points_follows_the_policy(tongcrm_db: TestDatabase, policy: str) -> None:
    (m, _) = await _members(tongcrm_db)
    doc = {**BASE, "reversal_policy": policy}
    c = ctx(Clock(), doc)
    await _apply(tongcrm_db, c, [order(1, m, [(11, 10_000)], paid_at=PAID)])
    async with tongcrm_db.sessions() as s, s.begin():
        await service.redeem(s, c, m, 80, key="spend-80")
    await _apply(tongcrm_db, c, [order(1, m, [(11, 10_000, 10_000)], status="refunded", paid_at=PAID)])
    if policy == "debt":
        assert await _balance(tongcrm_db, m) == (-80, 0, 80, 0)
    else:
        assert await _balance(tongcrm_db, m) == (0, 0, 0, 80)
    await _verify(tongcrm_db)
    # the next 50 points pay the debt / clawback first
    await _apply(tongcrm_db, c, [order(2, m, [(21, 5_000)], paid_at=PAID)])
    if policy == "debt":
        assert await _balance(tongcrm_db, m) == (-30, 0, 30, 0)
    else:
        assert await _balance(tongcrm_db, m) == (0, 0, 0, 30)
    await _verify(tongcrm_db)
    await _apply(tongcrm_db, c, [order(3, m, [(31, 10_000)], paid_at=PAID)])
    assert await _balance(tongcrm_db, m) == (70, 0, 0, 0)
    with pytest.raises(Conflict):
        async with tongcrm_db.sessions() as s, s.begin():
            await service.redeem(s, c, m, 71, key="too-much")
    await _verify(tongcrm_db)


async def test_expiry_happens_at_the_shanghai_midnight(tongcrm_db: TestDatabase) -> None:
    (m, _) = await _members(tongcrm_db)
    doc = {**BASE, "expiry": {"kind": "end_of_month", "months": 0}}
    clock = Clock(datetime(2026, 3, 31, 15, 30, tzinfo=UTC))  # 23:30 on 31 March in Shanghai
    c = ctx(clock, doc)
    earned_at = clock.now
    await _apply(tongcrm_db, c, [order(1, m, [(11, 10_000)], paid_at=earned_at)])
    async with tongcrm_db.sessions() as s:
        lot = (await s.execute(sa.select(PointsLot))).scalar_one()
    assert lot.expires_at == datetime(2026, 4, 1, 0, 0, tzinfo=SHANGHAI)  # = 2026-03-31 16:00 UTC
    clock.now = datetime(2026, 3, 31, 15, 59, 59, tzinfo=UTC)
    async with tongcrm_db.sessions() as s, s.begin():
        assert await ledger.expire_due(s, now=clock()) == 0
    clock.now = datetime(2026, 3, 31, 16, 0, tzinfo=UTC)
    async with tongcrm_db.sessions() as s, s.begin():
        assert await ledger.expire_due(s, now=clock()) == 1
    async with tongcrm_db.sessions() as s, s.begin():
        assert await ledger.expire_due(s, now=clock()) == 0  # once
    assert await _balance(tongcrm_db, m) == (0, 0, 0, 0)
    await _verify(tongcrm_db)


async def test_redemption_draws_fifo_by_expiry_then_age(tongcrm_db: TestDatabase) -> None:
    (m, _) = await _members(tongcrm_db)
    clock = Clock()
    c = ctx(clock, BASE)
    async with tongcrm_db.sessions() as s, s.begin():
        never = await service.adjust(s, c, m, 50, key="a", reason="goodwill")
        soon = await service.adjust(
            s, c, m, 30, key="b", reason="goodwill", expires=clock.now + timedelta(days=3)
        )
        later = await service.adjust(
            s, c, m, 40, key="c", reason="goodwill", expires=clock.now + timedelta(days=9)
        )
        result = await service.redeem(s, c, m, 60, key="r")
    assert [(d.lot_id, d.amount) for d in result.draws] == [(soon.entry_id, 30), (later.entry_id, 30)]
    assert never.entry_id not in {d.lot_id for d in result.draws}
    assert result.balance.available == 60
    await _verify(tongcrm_db)


async def test_transfer_is_one_atomic_pair(tongcrm_db: TestDatabase) -> None:
    a, b = await _members(tongcrm_db)
    c = ctx(Clock(), BASE)
    async with tongcrm_db.sessions() as s, s.begin():
        await service.adjust(s, c, a, 100, key="seed", reason="seed")
        result = await service.transfer(s, c, a, b, 70, key="t1")
    assert result.balance.available == 30 and result.counterpart_balance is not None
    assert result.counterpart_balance.available == 70
    with pytest.raises(Conflict):
        async with tongcrm_db.sessions() as s, s.begin():
            await service.transfer(s, c, a, b, 31, key="t2")
    assert await _balance(tongcrm_db, a) == (30, 0, 0, 0)
    assert await _balance(tongcrm_db, b) == (70, 0, 0, 0)
    async with tongcrm_db.sessions() as s:
        kinds = sorted(e.kind for e in (await s.execute(sa.select(PointsEntry))).scalars())
    assert kinds == ["adjust", "transfer_in", "transfer_out"]
    await _verify(tongcrm_db)


async def test_stacking_priority_exclusions_tier_multiplier_and_caps(tongcrm_db: TestDatabase) -> None:
    (m, other) = await _members(tongcrm_db)
    doc = {
        "rules": [
            {
                "type": "spend",
                "code": "beauty-x3",
                "priority": 10,
                "points_per_yuan": "3",
                "stacking": "exclusive",
                "categories": ["beauty"],
                "release": "paid",
                "tier_multiplier": False,
                "cap": {"points": 500, "period": "month"},
            },
            {
                "type": "spend",
                "code": "base",
                "priority": 100,
                "points_per_yuan": "1.5",
                "rounding": "half_up",
                "exclude_channels": ["jd"],
                "release": "paid",
                "tier_multiplier": True,
            },
            {"type": "event", "code": "first", "priority": 1, "event": "first_purchase", "points": 20},
        ]
    }
    async with tongcrm_db.sessions() as s, s.begin():
        stored = await service.create_rule_set(s, doc, now=PAID, activate=True)
    c = ctx(Clock())  # the active, stored version

    async def gold(session: Any, ids: Any, at: Any) -> dict[int, TierInfo]:
        return {m: TierInfo("gold", 200)}

    previous = multipliers._resolver  # the tiers module's resolver, when it is loaded
    set_tier_resolver(gold)
    try:
        await _apply(
            tongcrm_db,
            c,
            [
                order(1, m, [(11, 1_001)], paid_at=PAID),  # 10.01 yuan × 1.5 × 2 = 30.03 → 30
                order(2, m, [(21, 20_000)], paid_at=PAID, category="beauty"),  # 200 × 3 = 600 → capped at 500
                order(3, m, [(31, 10_000)], paid_at=PAID, channel="jd"),  # excluded channel
                order(4, other, [(41, 10_000)], paid_at=PAID, category="beauty"),
            ],
        )
    finally:
        set_tier_resolver(previous)
    assert await _balance(tongcrm_db, m) == (30 + 500 + 20, 0, 0, 0)
    assert await _balance(tongcrm_db, other) == (300 + 20, 0, 0, 0)
    async with tongcrm_db.sessions() as s:
        st = await service.statement(s, m, tz=SHANGHAI)
    capped = next(e for e in st.entries if e.rule_code == "beauty-x3")
    assert "capped from 600" in capped.explanation and capped.rule is not None
    assert capped.rule["points_per_yuan"] == "3" and capped.rule_version == stored.version
    await _verify(tongcrm_db)


async def test_rule_changes_never_re_award_an_old_order(tongcrm_db: TestDatabase) -> None:
    (m, _) = await _members(tongcrm_db)
    facts = [order(1, m, [(11, 10_000)], paid_at=PAID)]
    await _apply(tongcrm_db, ctx(Clock(), BASE, version=1), facts)
    doubled = {
        "rules": [
            {"type": "spend", "code": "double", "priority": 1, "points_per_yuan": "2", "release": "paid"}
        ]
    }
    await _apply(tongcrm_db, ctx(Clock(), doubled, version=2), facts)
    assert await _balance(tongcrm_db, m) == (100, 0, 0, 0)


async def test_a_line_awarded_before_earns_nothing_again_not_even_its_buyers_first_purchase(
    tongcrm_db: TestDatabase,
) -> None:
    """The award gate decides what is posted (on PostgreSQL in the posting's own statement): a line's credits
    only when its award is claimed now, a buyer's first-purchase credit only when one of its lines is."""
    m, other = await _members(tongcrm_db)
    await _apply(tongcrm_db, ctx(Clock(), BASE, version=1), [order(1, other, [(11, 10_000)], paid_at=PAID)])
    with_bonus = {
        "rules": [
            *BASE["rules"],
            {"type": "event", "code": "first", "priority": 1, "event": "first_purchase", "points": 20},
        ]
    }
    c = ctx(Clock(), with_bonus, version=2)
    # other's line was awarded under version 1: neither it nor other's first purchase earns under version 2;
    # m's lines (one worth nothing: its award is still claimed) earn, with m's first purchase once
    page = [
        order(1, other, [(11, 10_000)], paid_at=PAID),
        order(2, m, [(21, 5_000), (22, 50)], paid_at=PAID),
        order(3, m, [(31, 2_000)], paid_at=PAID),
    ]
    for _ in range(2):  # a replay changes nothing
        await _apply(tongcrm_db, c, page)
        assert await _balance(tongcrm_db, other) == (100, 0, 0, 0)
        assert await _balance(tongcrm_db, m) == (50 + 20 + 20, 0, 0, 0)
    async with tongcrm_db.sessions() as s:
        keys = (await s.execute(sa.select(PointsEntry.idempotency_key).order_by(PointsEntry.id))).scalars()
        awards = (
            await s.execute(
                sa.select(PointsLineAward.line_id, PointsLineAward.rule_version, PointsLineAward.points)
            )
        ).all()
        events = (await s.execute(sa.select(OutboxEvent.payload).order_by(OutboxEvent.id))).scalars().all()
    assert list(keys) == ["earn:11:base", "earn:21:base", "earn:31:base", f"event:first_purchase:{m}:first"]
    assert sorted(awards) == [(11, 1, 100), (21, 2, 50), (22, 2, 0), (31, 2, 20)]
    assert events[-1] == {"member_id": m, "delta": 90, "available": 90, "pending": 0}
    await _verify(tongcrm_db)


async def test_points_changed_events_go_through_the_outbox(tongcrm_db: TestDatabase) -> None:
    (m, _) = await _members(tongcrm_db)
    await _apply(tongcrm_db, ctx(Clock(), BASE), [order(1, m, [(11, 10_000)], paid_at=PAID)])
    async with tongcrm_db.sessions() as s:
        events = (await s.execute(sa.select(OutboxEvent))).scalars().all()
    assert [(e.name, e.payload) for e in events] == [
        ("points_changed", {"member_id": m, "delta": 100, "available": 100, "pending": 0})
    ]


async def test_merge_listener_recomputes_balances(tongcrm_db: TestDatabase) -> None:
    from tongcrm.audit.service import SYSTEM
    from tongcrm.members.references import MergeContext, notify, references

    a, b = await _members(tongcrm_db)
    c = ctx(Clock(), {**BASE, "reversal_policy": "debt"})
    await _apply(
        tongcrm_db, c, [order(1, a, [(11, 10_000)], paid_at=PAID), order(2, b, [(21, 5_000)], paid_at=PAID)]
    )
    async with tongcrm_db.sessions() as s, s.begin():
        await service.redeem(s, c, b, 50, key="spend")
    await _apply(tongcrm_db, c, [order(2, b, [(21, 5_000, 5_000)], status="refunded", paid_at=PAID)])
    assert await _balance(tongcrm_db, b) == (-50, 0, 50, 0)
    tables = {r.table for r in references()}
    assert {"points_entries", "points_lots", "points_line_awards"} <= tables
    async with (
        tongcrm_db.sessions() as s,
        s.begin(),
    ):  # what the members module does: move rows, call listeners
        for ref in references():
            if ref.table.startswith("points_"):
                await s.execute(
                    sa.text(f"UPDATE {ref.table} SET {ref.column} = :a WHERE {ref.column} = :b"),  # noqa: S608 - names from the registry
                    {"a": a, "b": b},
                )
        await notify(s, a, (b,), MergeContext(PAID, SHANGHAI, 0, False, SYSTEM))
    assert await _balance(tongcrm_db, a) == (50, 0, 0, 0)  # the survivor's points paid the absorbed debt
    assert await _balance(tongcrm_db, b) == (0, 0, 0, 0)
    await _verify(tongcrm_db)


async def test_caps_count_what_a_merged_member_used_and_undo_gives_it_back(tongcrm_db: TestDatabase) -> None:
    from tongcrm.audit.service import SYSTEM
    from tongcrm.members.merge import merge_members, undo_merge
    from tongcrm.points.models import PointsRuleUsage

    a, b = await _members(tongcrm_db)
    capped = {
        "rules": [
            {
                "type": "spend",
                "code": "beauty-x3",
                "priority": 10,
                "points_per_yuan": "3",
                "categories": ["beauty"],
                "release": "paid",
                "tier_multiplier": False,
                "cap": {"points": 500, "period": "month"},
            }
        ]
    }
    c = ctx(Clock(), capped)
    # the same person as two members: 300 of the month's 500 used as b
    await _apply(tongcrm_db, c, [order(1, b, [(11, 10_000)], paid_at=PAID, category="beauty")])
    async with tongcrm_db.sessions() as s, s.begin():
        merge = await merge_members(s, a, b, actor=SYSTEM, reason="same mobile", at=PAID)
    await _apply(tongcrm_db, c, [order(2, a, [(21, 20_000)], paid_at=PAID, category="beauty")])
    assert await _balance(tongcrm_db, a) == (300 + 200, 0, 0, 0)  # 600 capped at the 200 left
    async with tongcrm_db.sessions() as s, s.begin():
        await undo_merge(s, merge.id, actor=SYSTEM, at=PAID)
    async with tongcrm_db.sessions() as s:
        usage = {
            (r.member_id, r.period): r.points for r in (await s.execute(sa.select(PointsRuleUsage))).scalars()
        }
    assert usage == {(b, "month:2026-03"): 300, (a, "month:2026-03"): 200}
    assert await _balance(tongcrm_db, b) == (300, 0, 0, 0)
    assert await _balance(tongcrm_db, a) == (200, 0, 0, 0)
    await _verify(tongcrm_db)


async def test_verify_reports_drift(tongcrm_db: TestDatabase) -> None:
    (m, _) = await _members(tongcrm_db)
    await _apply(tongcrm_db, ctx(Clock(), BASE), [order(1, m, [(11, 10_000)], paid_at=PAID)])
    async with tongcrm_db.sessions() as s, s.begin():
        await s.execute(sa.text("UPDATE points_balances SET available = available + 5"))
    async with tongcrm_db.sessions() as s:
        drifts = await ledger.verify(s)
    assert drifts and drifts[0].member_id == m and "available=105" in drifts[0].problem


async def test_concurrent_replays_of_the_same_page_post_once(tongcrm_db: TestDatabase) -> None:
    members = await _members(tongcrm_db, 5)
    c = ctx(Clock(), BASE)
    facts = [
        order(i, members[i % 5], [(i * 10 + 1, 1_000 + i), (i * 10 + 2, 500)], paid_at=PAID)
        for i in range(1, 40)
    ]
    from tongcrm.db.engine import create_engine, session_factory

    engines = [create_engine(tongcrm_db.url) for _ in range(3)]
    try:

        async def one(engine: Any) -> None:
            async with session_factory(engine)() as s, s.begin():
                await service.apply_orders(s, c, facts)

        await asyncio.gather(*(one(e) for e in engines))
    finally:
        for e in engines:
            await e.dispose()
    expected = sum((1_000 + i) // 100 + 5 for i in range(1, 40))
    total = 0
    for mid in members:
        total += (await _balance(tongcrm_db, mid))[0]
    assert total == expected
    await _verify(tongcrm_db)


async def test_lock_takes_a_balance_another_transaction_created_after_its_snapshot(
    tongcrm_db: TestDatabase,
) -> None:
    """PostgreSQL locks in one statement that cannot see a balance row committed after it started (its insert
    waits for that row, then does nothing): it must still lock and read that row."""
    if tongcrm_db.backend != "postgresql":
        pytest.skip("the race needs two real connections to PostgreSQL (SQLite serialises writers)")
    now = datetime(2026, 3, 1, tzinfo=UTC)
    async with tongcrm_db.sessions() as s, s.begin():
        (member,) = await make_members(s, 1)
    balances = ledger.BALANCES
    async with tongcrm_db.sessions() as other, tongcrm_db.sessions() as watcher:
        await other.begin()
        await other.execute(
            sa.insert(balances).values(member_id=member, available=7, pending=2, owed=0, updated_at=now)
        )

        async def lock() -> ledger.Balance:
            async with tongcrm_db.sessions() as s, s.begin():
                book = ledger.Book(s, now=now)
                await book.lock([member])
                return book.balance(member)

        locking = asyncio.create_task(lock())
        waiting = sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        for _ in range(500):  # until the lock's insert waits on the uncommitted row
            waits = (await watcher.execute(waiting)).scalar_one()
            await watcher.rollback()  # pg_stat_activity is read once per transaction
            if waits:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the lock never waited on the other transaction's row")
        await other.commit()
        got = await locking
    assert (got.available, got.pending, got.owed) == (7, 2, 0)


async def test_posted_credits_keep_their_instants_and_a_naive_datetime_is_refused(
    tongcrm_db: TestDatabase,
) -> None:
    """PostgreSQL binds a posting's credits as one JSON text (msgspec writes a datetime with its offset): the
    entry and lot hold the same instants and values as SQLite's, a detail or reason that merely looks like a
    naive timestamp is stored as it is, and a naive datetime is refused as the columns' type refuses it."""
    (member,) = await _members(tongcrm_db, 1)
    east = timezone(timedelta(hours=8))
    occurred = datetime(2026, 3, 1, 10, 30, 15, 123456, tzinfo=east)
    looks_naive = "2026-03-01T10:30:15.123456"
    pending = ledger.Credit(
        member, "t:pending", "earn", 7, occurred, occurred + timedelta(days=7), datetime(2027, 1, 1, tzinfo=east),
        status=ledger.PENDING, release_on="completed", return_window_days=7, rule_code="base", rule_version=1,
        reason=looks_naive, detail={"at": looks_naive, "n": 2**62},
    )  # fmt: skip
    available = ledger.Credit(member, "t:available", "earn", 5, occurred, occurred, None)
    now = datetime(2026, 3, 2, tzinfo=UTC)
    async with tongcrm_db.sessions() as s, s.begin():
        posted = await ledger.post_credits(s, [pending, available], now=now)
    assert set(posted) == {"t:pending", "t:available"}
    async with tongcrm_db.sessions() as s:
        entries = {e.idempotency_key: e for e in (await s.execute(sa.select(PointsEntry))).scalars()}
        lots = {lot.id: lot for lot in (await s.execute(sa.select(PointsLot))).scalars()}
    e = entries["t:pending"]
    assert (e.amount, e.occurred_at, e.available_from, e.expires_at) == (
        7,
        occurred,
        None,
        pending.expires_at,
    )
    assert (e.reason, e.detail, e.created_at, e.rule_version) == (looks_naive, pending.detail, now, 1)
    lot = lots[e.id]
    assert (lot.status, lot.available_at, lot.release_on, lot.return_window_days) == (
        ledger.PENDING, pending.available_at, "completed", 7,
    )  # fmt: skip
    a = entries["t:available"]
    assert (a.available_from, a.expires_at, lots[a.id].available_at) == (occurred, None, occurred)
    assert await _balance(tongcrm_db, member) == (5, 7, 0, 0)

    naive = ledger.Credit(member, "t:naive", "earn", 3, occurred.replace(tzinfo=None), None, None)
    with pytest.raises((ValueError, sa.exc.StatementError), match="naive datetime"):
        async with tongcrm_db.sessions() as s, s.begin():
            await ledger.post_credits(s, [naive], now=now)
    async with tongcrm_db.sessions() as s:
        count = (await s.execute(sa.select(sa.func.count()).select_from(PointsEntry))).scalar_one()
    assert count == 2
    await _verify(tongcrm_db)


async def test_a_books_flush_keeps_instants_and_details_and_refuses_a_naive_datetime(
    tongcrm_db: TestDatabase,
) -> None:
    """PostgreSQL binds a flush's entries, lots, draws and balances as one JSON text each: an entry's instant
    given in another zone, a detail that merely looks like a naive timestamp and an exact 62-bit integer are
    stored as SQLite stores them, the balance's ``points_changed`` event says what moved, and a naive datetime
    is refused (nothing of the flush is written)."""
    (member,) = await _members(tongcrm_db, 1)
    east = timezone(timedelta(hours=8))
    at = datetime(2026, 3, 1, 10, 30, 15, 123456, tzinfo=east)
    looks_naive = "2026-03-01T10:30:15.123456"
    now = datetime(2026, 3, 2, tzinfo=UTC)
    async with tongcrm_db.sessions() as s, s.begin():
        book = ledger.Book(s, now=now)
        await book.lock([member])
        lot = book.new_lot(
            ledger.Credit(member, "f:seed", "adjust", 9, at, at, None, reason=looks_naive,
                          detail={"at": looks_naive, "n": 2**62})
        )  # fmt: skip
        book.entry(member, "redeem", -4, "f:spend", occurred_at=at)
        book.draw(lot, "f:spend", 4, "redeem")
        book.balance(member).available -= 4
        await book.flush()
    async with tongcrm_db.sessions() as s:
        entries = {e.idempotency_key: e for e in (await s.execute(sa.select(PointsEntry))).scalars()}
        lots = list((await s.execute(sa.select(PointsLot))).scalars())
        events = [e.payload for e in (await s.execute(sa.select(OutboxEvent))).scalars()]
    seed = entries["f:seed"]
    assert (seed.occurred_at, seed.available_from, seed.reason, seed.detail, seed.created_at) == (
        at, at, looks_naive, {"at": looks_naive, "n": 2**62}, now,
    )  # fmt: skip
    assert [(x.id, x.amount, x.remaining, x.earned_at) for x in lots] == [(seed.id, 9, 5, at)]
    assert await _balance(tongcrm_db, member) == (5, 0, 0, 0)
    assert {"member_id": member, "delta": 5, "available": 5, "pending": 0} in events

    async def flush_naive() -> None:
        async with tongcrm_db.sessions() as s, s.begin():
            book = ledger.Book(s, now=now)
            await book.lock([member])
            book.entry(member, "adjust", 1, "f:naive", occurred_at=at.replace(tzinfo=None))
            await book.flush()

    with pytest.raises((ValueError, sa.exc.StatementError), match="naive datetime"):
        await flush_naive()
    assert await _balance(tongcrm_db, member) == (5, 0, 0, 0)
    await _verify(tongcrm_db)
