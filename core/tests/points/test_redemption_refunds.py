"""Giving redeemed points back (goods paid with points were returned): a new entry referencing the redemption,
a new lot under the programme's expiry, the balance in the same transaction, idempotent by key, and never more
than was redeemed — on every database backend."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from points_helpers import Clock, ctx, make_members
from tongcrm.errors import Conflict, NotFound, Unprocessable
from tongcrm.points import ledger, service
from tongcrm.points.models import EntryKind, PointsEntry, PointsLot
from tongcrm.points.rules import expires_at, parse_document
from tongcrm.testing.database import TestDatabase

#: Points expire at the end of the year twelve months after the one they were earned in.
RULES = {
    "rules": [{"type": "spend", "code": "base", "priority": 100, "release": "paid"}],
    "expiry": {"kind": "end_of_year", "months": 12},
}


async def _redeemed(db: TestDatabase, clock: Clock) -> int:
    c = ctx(clock, RULES)
    async with db.sessions() as s, s.begin():
        [m] = await make_members(s, 1)
        await service.adjust(s, c, m, 500, key="seed", reason="seed")
        await service.redeem(s, c, m, 300, key="sale-1", reason="paid at the till")
    return m


async def test_a_refund_is_a_new_lot_referencing_the_redemption(tongcrm_db: TestDatabase) -> None:
    clock = Clock()
    m = await _redeemed(tongcrm_db, clock)
    clock.advance(days=40)
    c = ctx(clock, RULES)
    async with tongcrm_db.sessions() as s, s.begin():
        result = await service.refund_redemption(s, c, "sale-1", 120, key="return-1", reason="goods back")
    assert result.kind == EntryKind.REFUND and result.points == 120
    assert result.balance.available == 200 + 120
    async with tongcrm_db.sessions() as s:
        redemption = (
            await s.execute(sa.select(PointsEntry).where(PointsEntry.idempotency_key == "redeem:sale-1"))
        ).scalar_one()
        refund = await s.get(PointsEntry, result.entry_id)
        lot = await s.get(PointsLot, result.entry_id)
        state = await service.redemption_state(s, "sale-1")
        statement = await service.statement(s, m, tz=c.tz)
        assert await ledger.verify(s) == []
    assert refund is not None and lot is not None
    assert refund.ref_entry_id == redemption.id and refund.amount == 120 and refund.member_id == m
    assert redemption.amount == -300  # the redemption itself is never edited
    expected_expiry = expires_at(parse_document(RULES).expiry, clock.now, c.tz)
    assert lot.status == "available" and lot.remaining == 120 and lot.expires_at == expected_expiry
    assert state == service.RedemptionState(redemption.id, m, 300, 120)
    assert statement.entries[0].explanation.startswith("120 redeemed points given back")


async def test_refunds_are_idempotent_by_key_and_never_exceed_the_redemption(
    tongcrm_db: TestDatabase,
) -> None:
    clock = Clock()
    m = await _redeemed(tongcrm_db, clock)
    c = ctx(clock, RULES)
    async with tongcrm_db.sessions() as s, s.begin():
        first = await service.refund_redemption(s, c, "sale-1", 200, key="r1")
    async with tongcrm_db.sessions() as s, s.begin():
        again = await service.refund_redemption(s, c, "sale-1", 200, key="r1")
    assert again.entry_id == first.entry_id and again.balance.available == 400
    with pytest.raises(Conflict, match="already used"):
        async with tongcrm_db.sessions() as s, s.begin():
            await service.refund_redemption(s, c, "sale-1", 50, key="r1")
    with pytest.raises(Conflict, match="only 100 of the 300"):
        async with tongcrm_db.sessions() as s, s.begin():
            await service.refund_redemption(s, c, "sale-1", 101, key="r2")
    async with tongcrm_db.sessions() as s, s.begin():
        await service.refund_redemption(s, c, "sale-1", 100, key="r2")
    with pytest.raises(Conflict, match="only 0 of the 300"):
        async with tongcrm_db.sessions() as s, s.begin():
            await service.refund_redemption(s, c, "sale-1", 1, key="r3")
    with pytest.raises(NotFound):
        async with tongcrm_db.sessions() as s, s.begin():
            await service.refund_redemption(s, c, "no-such-sale", 1, key="r4")
    with pytest.raises(Unprocessable):
        async with tongcrm_db.sessions() as s, s.begin():
            await service.refund_redemption(s, c, "sale-1", 0, key="r5")
    async with tongcrm_db.sessions() as s:
        kinds = (
            await s.execute(
                sa.select(PointsEntry.kind, sa.func.sum(PointsEntry.amount))
                .where(PointsEntry.member_id == m)
                .group_by(PointsEntry.kind)
            )
        ).all()
        assert await ledger.verify(s) == []
        balance = await service.balance(s, m)
    assert dict(kinds) == {"adjust": 500, "redeem": -300, "refund": 300}
    assert balance.available == 500


async def test_refunded_points_can_be_spent_and_expire_like_others(tongcrm_db: TestDatabase) -> None:
    clock = Clock()
    m = await _redeemed(tongcrm_db, clock)
    c = ctx(clock, RULES)
    async with tongcrm_db.sessions() as s, s.begin():
        await service.refund_redemption(s, c, "sale-1", 300, key="back")
        spent = await service.redeem(s, c, m, 450, key="sale-2")
    assert spent.balance.available == 50
    clock.now += timedelta(days=3 * 365)
    async with tongcrm_db.sessions() as s, s.begin():
        assert await ledger.expire_due(s, now=clock()) >= 1
    async with tongcrm_db.sessions() as s:
        assert (await service.balance(s, m)).available == 0
        assert await ledger.verify(s) == []
