"""Undoing a merge after the merged member used the points (issue #18, defect 1), on every database backend.

The rule under test ("draws follow the lot", :func:`tongcrm.points.ledger.split_after_undo`): every lot goes back
as it is; entries about a row that goes back (its expiry, its refund reversal) go back with it; one pair of
``merge_split`` entries moves the rest so that each member's balance equals its own open lots, owed points never go
negative and every total stays exact.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from points_helpers import Clock, ctx, make_members, order
from tongcrm.audit.service import SYSTEM
from tongcrm.cli import Context, build_cli
from tongcrm.errors import Conflict
from tongcrm.members.merge import merge_members, undo_merge
from tongcrm.plugin.host import PluginHost
from tongcrm.points import ledger, service
from tongcrm.points.models import EntryKind, PointsEntry, PointsLot
from tongcrm.testing.database import TestDatabase

BASE = {"rules": [{"type": "spend", "code": "base", "priority": 100, "release": "paid"}]}
T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


async def _members(db: TestDatabase, n: int) -> list[int]:
    async with db.sessions() as s, s.begin():
        return await make_members(s, n)


async def _earn(db: TestDatabase, c: Any, order_id: int, member: int, fen: int, paid_at: datetime) -> None:
    async with db.sessions() as s, s.begin():
        await service.apply_orders(s, c, [order(order_id, member, [(order_id * 10, fen)], paid_at=paid_at)])


async def _merge(db: TestDatabase, survivor: int, absorbed: int) -> int:
    async with db.sessions() as s, s.begin():
        return (await merge_members(s, survivor, absorbed, actor=SYSTEM, reason="same mobile", at=T0)).id


async def _undo(db: TestDatabase, merge_id: int) -> None:
    async with db.sessions() as s, s.begin():
        await undo_merge(s, merge_id, actor=SYSTEM, at=T0 + timedelta(days=1))


async def _redeem(db: TestDatabase, c: Any, member: int, points: int, key: str) -> None:
    async with db.sessions() as s, s.begin():
        await service.redeem(s, c, member, points, key=key)


async def _balance(db: TestDatabase, member_id: int) -> tuple[int, int, int, int]:
    async with db.sessions() as s:
        b = await service.balance(s, member_id)
    return b.available, b.pending, b.debt, b.owed


async def _open_lots(db: TestDatabase, member_id: int) -> int:
    async with db.sessions() as s:
        return int(
            (
                await s.execute(
                    sa.select(sa.func.coalesce(sa.func.sum(PointsLot.remaining), 0)).where(
                        PointsLot.member_id == member_id
                    )
                )
            ).scalar_one()
        )


async def _entries_total(db: TestDatabase) -> int:
    async with db.sessions() as s:
        return int((await s.execute(sa.select(sa.func.sum(PointsEntry.amount)))).scalar_one())


async def _verify(db: TestDatabase) -> None:
    async with db.sessions() as s:
        assert await ledger.verify(s) == []


async def _splits(db: TestDatabase) -> dict[int, tuple[int, int, dict[str, Any]]]:
    async with db.sessions() as s:
        rows = (
            await s.execute(sa.select(PointsEntry).where(PointsEntry.kind == EntryKind.MERGE_SPLIT))
        ).scalars()
        return {e.member_id: (e.amount, e.shortfall, dict(e.detail or {})) for e in rows}


def _cli_verify(url: str) -> Any:
    host = PluginHost(autoload=False)
    return CliRunner().invoke(build_cli(host), ["verify"], obj=Context(host), catch_exceptions=False)


async def test_issue_18_redeem_on_the_survivor_then_undo(
    tongcrm_db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reproduction: A (73) merged into B; B redeems 50 (from A's older lot); the merge is undone. Before the
    fix A's cached balance stayed 73 over 23 points of open lots: `tongcrm verify` exited 1 and A's redemption
    of 60 answered "lots do not cover the balance"."""
    a, b = await _members(tongcrm_db, 2)
    c = ctx(Clock(T0), BASE)
    await _earn(tongcrm_db, c, 1, a, 7_300, T0 - timedelta(days=2))
    await _earn(tongcrm_db, c, 2, b, 10_000, T0 - timedelta(days=1))
    merge_id = await _merge(tongcrm_db, b, a)
    await _redeem(tongcrm_db, c, b, 50, "after-merge")
    total = await _entries_total(tongcrm_db)
    await _undo(tongcrm_db, merge_id)

    assert await _balance(tongcrm_db, a) == (23, 0, 0, 0) and await _open_lots(tongcrm_db, a) == 23
    assert await _balance(tongcrm_db, b) == (100, 0, 0, 0) and await _open_lots(tongcrm_db, b) == 100
    assert await _entries_total(tongcrm_db) == total  # the split moves points, it creates none
    splits = await _splits(tongcrm_db)
    assert splits[a][:2] == (-50, 0) and splits[b][:2] == (50, 0)
    assert splits[a][2]["merge_id"] == merge_id and splits[a][2]["counterpart_id"] == b
    await _verify(tongcrm_db)
    monkeypatch.setenv("TONGCRM_DATABASE_URL", tongcrm_db.url)
    monkeypatch.setenv("TONGCRM_SECRET_KEY", "merge-undo-test-secret-0123456789")
    result = await asyncio.to_thread(_cli_verify, tongcrm_db.url)
    assert result.exit_code == 0 and "agree" in result.output

    async with tongcrm_db.sessions() as s, s.begin():
        with pytest.raises(Conflict, match="has 23 points available; 60 requested"):
            await service.redeem(s, c, a, 60, key="too-much")
    await _redeem(tongcrm_db, c, a, 23, "all-of-it")
    assert await _balance(tongcrm_db, a) == (0, 0, 0, 0)
    async with tongcrm_db.sessions() as s:
        explained = (await service.statement(s, a, tz=c.tz)).entries
    split_line = next(e for e in explained if e.kind == EntryKind.MERGE_SPLIT)
    assert split_line.explanation == (
        f"undo of merge {merge_id}: 50 points of this member's lots went to member {b} while merged"
    )
    await _verify(tongcrm_db)


async def test_earn_on_the_survivor_after_the_merge_stays_with_it(tongcrm_db: TestDatabase) -> None:
    a, b = await _members(tongcrm_db, 2)
    c = ctx(Clock(T0), BASE)
    await _earn(tongcrm_db, c, 1, a, 7_300, T0 - timedelta(days=2))
    merge_id = await _merge(tongcrm_db, b, a)
    await _earn(tongcrm_db, c, 2, b, 4_000, T0)  # B's own order, after the merge
    await _redeem(tongcrm_db, c, b, 100, "r")  # 73 from A's lot (older), 27 from B's
    await _undo(tongcrm_db, merge_id)
    assert await _balance(tongcrm_db, a) == (0, 0, 0, 0)
    assert await _balance(tongcrm_db, b) == (13, 0, 0, 0) and await _open_lots(tongcrm_db, b) == 13
    assert (await _splits(tongcrm_db))[a][:2] == (-73, 0)
    await _verify(tongcrm_db)


async def test_refund_of_an_absorbed_members_order_after_the_merge_follows_its_lot(
    tongcrm_db: TestDatabase,
) -> None:
    """Debt policy: the merged member spends 120 (A's 100 and 20 of B's 40), then A's order is refunded: the
    reversal takes B's last 20 and records 80 as debt. On undo the reversal goes back with A's lot; each member
    ends with what its own entries say (A earned and lost 100; B earned 40 and spent 120) and no drift."""
    a, b = await _members(tongcrm_db, 2)
    c = ctx(Clock(T0), {**BASE, "reversal_policy": "debt"})
    await _earn(tongcrm_db, c, 1, a, 10_000, T0 - timedelta(days=2))
    await _earn(tongcrm_db, c, 2, b, 4_000, T0 - timedelta(days=1))
    merge_id = await _merge(tongcrm_db, b, a)
    await _redeem(tongcrm_db, c, b, 120, "r")
    async with tongcrm_db.sessions() as s, s.begin():  # the order now belongs to the survivor
        refunded = order(1, b, [(10, 10_000, 10_000)], status="refunded", paid_at=T0 - timedelta(days=2))
        await service.apply_orders(s, c, [refunded])
    assert await _balance(tongcrm_db, b) == (-80, 0, 80, 0)
    await _undo(tongcrm_db, merge_id)
    async with tongcrm_db.sessions() as s:
        reversal = (
            await s.execute(sa.select(PointsEntry).where(PointsEntry.kind == EntryKind.REVERSE))
        ).scalar_one()
    assert reversal.member_id == a  # about A's lot: it went back with it
    assert await _balance(tongcrm_db, a) == (0, 0, 0, 0)
    assert await _balance(tongcrm_db, b) == (-80, 0, 80, 0)
    assert await _splits(tongcrm_db) == {}  # A's lot lost 100 to B, B's lots 20 to A and 80 of debt: even
    await _verify(tongcrm_db)
    await _earn(tongcrm_db, c, 3, b, 10_000, T0)  # B's next earnings pay its debt
    assert await _balance(tongcrm_db, b) == (20, 0, 0, 0) and await _open_lots(tongcrm_db, b) == 20
    await _verify(tongcrm_db)


async def test_clawback_policy_owed_points_follow_the_members_who_owe_them(tongcrm_db: TestDatabase) -> None:
    """Clawback policy: A's refund reversal while merged could only take 50 (owed 50); B's next earnings clawed
    back 30 of it. On undo the clawback that paid A's debt moves back as owed points: A still owes 20, B owes
    nothing and has no negative owed points."""
    a, b = await _members(tongcrm_db, 2)
    c = ctx(Clock(T0), {**BASE, "reversal_policy": "clawback"})
    await _earn(tongcrm_db, c, 1, a, 10_000, T0 - timedelta(days=2))
    await _earn(tongcrm_db, c, 2, b, 5_000, T0 - timedelta(days=1))
    merge_id = await _merge(tongcrm_db, b, a)
    await _redeem(tongcrm_db, c, b, 100, "r")  # all of A's lot
    async with tongcrm_db.sessions() as s, s.begin():
        refunded = order(1, b, [(10, 10_000, 10_000)], status="refunded", paid_at=T0 - timedelta(days=2))
        await service.apply_orders(s, c, [refunded])
    assert await _balance(tongcrm_db, b) == (0, 0, 0, 50)
    await _earn(tongcrm_db, c, 3, b, 3_000, T0)  # clawed back at once
    assert await _balance(tongcrm_db, b) == (0, 0, 0, 20)
    total = await _entries_total(tongcrm_db)
    await _undo(tongcrm_db, merge_id)
    assert await _balance(tongcrm_db, a) == (0, 0, 0, 20)
    assert await _balance(tongcrm_db, b) == (0, 0, 0, 0)
    splits = await _splits(tongcrm_db)
    assert splits[a][:2] == (-50, -30) and splits[b][:2] == (50, 30)
    assert await _entries_total(tongcrm_db) == total
    await _verify(tongcrm_db)


async def test_expiry_after_the_merge_goes_back_with_the_lot(tongcrm_db: TestDatabase) -> None:
    a, b = await _members(tongcrm_db, 2)
    clock = Clock(T0)
    doc = {
        "rules": [
            {"type": "spend", "code": "short", "priority": 10, "release": "paid", "channels": ["jd"],
             "expiry": {"kind": "days_after", "days": 2}},
            {"type": "spend", "code": "base", "priority": 100, "release": "paid", "exclude_channels": ["jd"]},
        ]
    }  # fmt: skip
    c = ctx(clock, doc)
    async with tongcrm_db.sessions() as s, s.begin():
        await service.apply_orders(s, c, [order(1, a, [(10, 7_300)], paid_at=T0, channel="jd")])
    await _earn(tongcrm_db, c, 2, b, 10_000, T0)
    merge_id = await _merge(tongcrm_db, b, a)
    await _redeem(tongcrm_db, c, b, 50, "r")  # from A's lot: it expires first
    clock.advance(days=4)
    async with tongcrm_db.sessions() as s, s.begin():
        assert await ledger.expire_due(s, now=clock.now) == 1
    assert await _balance(tongcrm_db, b) == (100, 0, 0, 0)
    await _undo(tongcrm_db, merge_id)
    async with tongcrm_db.sessions() as s:
        expiry = (
            await s.execute(sa.select(PointsEntry).where(PointsEntry.kind == EntryKind.EXPIRE))
        ).scalar_one()
    assert expiry.member_id == a and expiry.amount == -23
    assert await _balance(tongcrm_db, a) == (0, 0, 0, 0)
    assert await _balance(tongcrm_db, b) == (100, 0, 0, 0)
    assert (await _splits(tongcrm_db))[a][:2] == (-50, 0)
    await _verify(tongcrm_db)


async def test_transfers_after_the_merge(tongcrm_db: TestDatabase) -> None:
    a, b, other = await _members(tongcrm_db, 3)
    c = ctx(Clock(T0), BASE)
    await _earn(tongcrm_db, c, 1, a, 7_300, T0 - timedelta(days=2))
    await _earn(tongcrm_db, c, 2, b, 10_000, T0 - timedelta(days=1))
    merge_id = await _merge(tongcrm_db, b, a)
    async with tongcrm_db.sessions() as s, s.begin():
        await service.transfer(s, c, b, other, 60, key="out")  # from A's lot
        await service.transfer(s, c, other, b, 10, key="in")  # a new lot of the survivor's
    await _undo(tongcrm_db, merge_id)
    assert await _balance(tongcrm_db, a) == (13, 0, 0, 0) and await _open_lots(tongcrm_db, a) == 13
    assert await _balance(tongcrm_db, b) == (110, 0, 0, 0) and await _open_lots(tongcrm_db, b) == 110
    assert await _balance(tongcrm_db, other) == (50, 0, 0, 0)
    await _verify(tongcrm_db)


async def test_debt_brought_into_the_merge_and_paid_by_the_survivors_points_stays_paid(
    tongcrm_db: TestDatabase,
) -> None:
    """A arrives with 50 points of debt; the merge settles it from B's lot. The lots stay as they are after the
    undo: B's lot paid A's debt, so A owes nothing and B keeps what its lot holds."""
    a, b = await _members(tongcrm_db, 2)
    c = ctx(Clock(T0), {**BASE, "reversal_policy": "debt"})
    await _earn(tongcrm_db, c, 1, a, 5_000, T0 - timedelta(days=2))
    await _redeem(tongcrm_db, c, a, 50, "spent")
    async with tongcrm_db.sessions() as s, s.begin():
        await service.apply_orders(
            s, c, [order(1, a, [(10, 5_000, 5_000)], status="refunded", paid_at=T0 - timedelta(days=2))]
        )
    await _earn(tongcrm_db, c, 2, b, 10_000, T0 - timedelta(days=1))
    assert await _balance(tongcrm_db, a) == (-50, 0, 50, 0)
    merge_id = await _merge(tongcrm_db, b, a)
    assert await _balance(tongcrm_db, b) == (50, 0, 0, 0)
    await _undo(tongcrm_db, merge_id)
    assert await _balance(tongcrm_db, a) == (0, 0, 0, 0)
    assert await _balance(tongcrm_db, b) == (50, 0, 0, 0) and await _open_lots(tongcrm_db, b) == 50
    splits = await _splits(tongcrm_db)
    assert splits[a][:2] == (50, 0) and splits[b][:2] == (-50, 0)
    await _verify(tongcrm_db)


async def test_chained_merges_undone_last_in_first_out(tongcrm_db: TestDatabase) -> None:
    a, b, z = await _members(tongcrm_db, 3)
    c = ctx(Clock(T0), BASE)
    await _earn(tongcrm_db, c, 1, a, 7_300, T0 - timedelta(days=3))
    await _earn(tongcrm_db, c, 2, b, 10_000, T0 - timedelta(days=2))
    await _earn(tongcrm_db, c, 3, z, 2_000, T0 - timedelta(days=1))
    first = await _merge(tongcrm_db, b, a)
    second = await _merge(tongcrm_db, z, b)
    await _redeem(tongcrm_db, c, z, 50, "r")  # from A's lot, two merges deep
    total = await _entries_total(tongcrm_db)
    await _undo(tongcrm_db, second)
    assert await _balance(tongcrm_db, b) == (123, 0, 0, 0) and await _open_lots(tongcrm_db, b) == 123
    assert await _balance(tongcrm_db, z) == (20, 0, 0, 0)
    await _verify(tongcrm_db)
    await _undo(tongcrm_db, first)
    assert await _balance(tongcrm_db, a) == (23, 0, 0, 0) and await _open_lots(tongcrm_db, a) == 23
    assert await _balance(tongcrm_db, b) == (100, 0, 0, 0)
    assert await _balance(tongcrm_db, z) == (20, 0, 0, 0)
    assert await _entries_total(tongcrm_db) == total
    await _verify(tongcrm_db)


async def test_merge_undo_and_merge_again(tongcrm_db: TestDatabase) -> None:
    """A second merge and undo of the same two members settles only what happened the second time."""
    a, b = await _members(tongcrm_db, 2)
    c = ctx(Clock(T0), BASE)
    await _earn(tongcrm_db, c, 1, a, 7_300, T0 - timedelta(days=2))
    await _earn(tongcrm_db, c, 2, b, 10_000, T0 - timedelta(days=1))
    await _redeem(tongcrm_db, c, b, 10, "before")
    first = await _merge(tongcrm_db, b, a)
    await _redeem(tongcrm_db, c, b, 50, "one")
    await _undo(tongcrm_db, first)
    second = await _merge(tongcrm_db, b, a)
    await _redeem(tongcrm_db, c, b, 20, "two")
    await _undo(tongcrm_db, second)
    assert await _balance(tongcrm_db, a) == (3, 0, 0, 0) and await _open_lots(tongcrm_db, a) == 3
    assert await _balance(tongcrm_db, b) == (90, 0, 0, 0) and await _open_lots(tongcrm_db, b) == 90
    await _verify(tongcrm_db)


async def test_issue_18_over_http(make_client: Any) -> None:
    """The reproduction as an operator meets it: after the undo A's redemption of 60 is refused for want of
    points (409 naming the 23 available), not for lots that do not cover the balance; 23 can be redeemed."""
    async with make_client() as api:
        async with api.db.sessions() as s, s.begin():
            a, b = await make_members(s, 2)
        for member, points in ((a, 73), (b, 100)):  # A's lot first: redemptions draw it first
            r = await api.post(
                f"/api/members/{member}/points/adjustments",
                json={"points": points, "reason": "opening balance"},
                headers={"Idempotency-Key": f"seed-{member}"},
            )
            assert r.status_code == 201, r.text
        merge = await api.post(
            "/api/merges", json={"survivor_id": b, "absorbed_id": a, "reason": "same mobile"}
        )
        assert merge.status_code == 201, merge.text
        spent = await api.post(
            f"/api/members/{b}/points/redemptions", json={"points": 50}, headers={"Idempotency-Key": "after"}
        )
        assert spent.status_code == 201 and spent.json()["draws"][0]["lot_id"] != spent.json()["entry_id"]
        undone = await api.post(f"/api/merges/{merge.json()['id']}/undo")
        assert undone.status_code == 200, undone.text
        refused = await api.post(
            f"/api/members/{a}/points/redemptions", json={"points": 60}, headers={"Idempotency-Key": "a-60"}
        )
        assert refused.status_code == 409 and refused.headers["content-type"].startswith(
            "application/problem"
        )
        assert refused.json()["available"] == 23 and "has 23 points available" in refused.json()["detail"]
        ok = await api.post(
            f"/api/members/{a}/points/redemptions", json={"points": 23}, headers={"Idempotency-Key": "a-23"}
        )
        assert ok.status_code == 201 and ok.json()["balance"]["available"] == 0
        statement = (await api.get(f"/api/members/{b}/points")).json()
        assert statement["balance"]["available"] == 100
        assert statement["entries"][0]["kind"] == "merge_split" and statement["entries"][0]["amount"] == 50
    async with api.db.sessions() as s:
        assert await ledger.verify(s) == []


async def test_refund_of_an_absorbed_members_redemption_goes_back_with_it(tongcrm_db: TestDatabase) -> None:
    """A redeemed 30 before the merge; the points come back while merged (a lot on the survivor that names A's
    redemption) and the merged member spends 10 of them. On undo the refund follows the redemption to A, with
    its lot as it is; A's balance is its lots."""
    a, b = await _members(tongcrm_db, 2)
    c = ctx(Clock(T0), BASE)
    await _earn(tongcrm_db, c, 1, a, 10_000, T0 - timedelta(days=2))
    await _earn(tongcrm_db, c, 2, b, 5_000, T0 - timedelta(days=1))
    await _redeem(tongcrm_db, c, a, 30, "goods")
    merge_id = await _merge(tongcrm_db, b, a)
    async with tongcrm_db.sessions() as s, s.begin():
        await service.refund_redemption(s, c, "goods", 30, key="returned")
    await _redeem(tongcrm_db, c, b, 130, "spend")  # A's 70, B's 50, then 10 of the refund lot
    await _undo(tongcrm_db, merge_id)
    async with tongcrm_db.sessions() as s:
        refund = (
            await s.execute(sa.select(PointsEntry).where(PointsEntry.kind == EntryKind.REFUND))
        ).scalar_one()
        lot = await s.get(PointsLot, refund.id)
        assert (await service.redemption_state(s, "goods")) is not None
    assert refund.member_id == a and lot is not None and lot.member_id == a and lot.remaining == 20
    assert await _balance(tongcrm_db, a) == (20, 0, 0, 0) and await _open_lots(tongcrm_db, a) == 20
    assert await _balance(tongcrm_db, b) == (0, 0, 0, 0) and await _open_lots(tongcrm_db, b) == 0
    assert (await _splits(tongcrm_db))[a][:2] == (-80, 0)  # A's lots lost 70 + 10 to B's redemption
    await _verify(tongcrm_db)
