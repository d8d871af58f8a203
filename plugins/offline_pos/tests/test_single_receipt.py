"""A till's receipt on the counter's single-order path (tongcrm.counter_sale): several receipts of one member at
once, one receipt uploaded twice at once, and returns after earning — the ledger stays whole and nothing is
earned twice, on every database backend."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from tongcrm.points import ledger
from tongcrm.points.models import PointsBalance, PointsEntry
from tongcrm.testing.plugin import ApiClient

from .conftest import Receipts, enrol


async def _balance(pos: ApiClient, member_id: int) -> tuple[int, int]:
    async with pos.db.sessions() as session:
        assert await ledger.verify(session) == []
        available = (
            await session.execute(
                sa.select(PointsBalance.available).where(PointsBalance.member_id == member_id)
            )
        ).scalar_one_or_none() or 0  # no row until the member's first points
        earned = (
            await session.execute(
                sa.select(sa.func.count()).where(
                    PointsEntry.member_id == member_id, PointsEntry.kind == "earn"
                )
            )
        ).scalar_one()
    return int(available), int(earned)


async def test_receipts_of_one_member_at_several_tills_at_once_all_earn(
    pos: ApiClient, receipts: Receipts
) -> None:
    member = await enrol(pos, "13800138010")
    ref = {"member_id": member["member_id"]}
    start, _ = await _balance(pos, member["member_id"])
    bodies = [receipts.sale((10_000 * (n + 1),), member=ref, till=("T01", "T02")[n % 2]) for n in range(6)]
    answers = await asyncio.gather(*(pos.post("/pos/v1/receipts", json=b) for b in bodies))
    assert [a.status_code for a in answers] == [201] * 6, [a.text for a in answers]
    assert sorted(a.json()["points_earned"] for a in answers) == [100, 200, 300, 400, 500, 600]
    available, earns = await _balance(pos, member["member_id"])
    assert available == start + 2_100 and earns == 6
    assert max(a.json()["points_available"] for a in answers) == available


async def test_one_receipt_uploaded_twice_at_once_earns_once(pos: ApiClient, receipts: Receipts) -> None:
    member = await enrol(pos, "13800138011")
    start, _ = await _balance(pos, member["member_id"])
    body = receipts.sale((25_000, 5_000), member={"member_id": member["member_id"]})
    first, second = await asyncio.gather(
        pos.post("/pos/v1/receipts", json=body), pos.post("/pos/v1/receipts", json=body)
    )
    assert sorted((first.status_code, second.status_code)) == [200, 201], (first.text, second.text)
    assert first.json()["points_earned"] == second.json()["points_earned"] == 300
    again = await pos.post("/pos/v1/receipts", json=body)  # and a retry later: the first answer again
    assert again.status_code == 200 and again.json()["replayed"] is True
    available, earns = await _balance(pos, member["member_id"])
    assert available == start + 300 and earns == 2


async def test_returns_after_earning_and_paying_with_points_settle_exactly(
    pos: ApiClient, receipts: Receipts
) -> None:
    member = await enrol(pos, "13800138012")
    ref = {"member_id": member["member_id"]}
    start, _ = await _balance(pos, member["member_id"])
    first = await pos.post("/pos/v1/receipts", json=receipts.sale((60_000,), member=ref))
    assert first.json()["points_earned"] == 600
    # 300 yuan, 200 points paid as 20 yuan: the 280 yuan left earn per line, 186.67 + 93.33 yuan → 186 + 93
    sale = receipts.sale((20_000, 10_000), member=ref, points=200, points_fen=2_000)
    paid = await pos.post("/pos/v1/receipts", json=sale)
    assert paid.status_code == 201, paid.text
    assert (paid.json()["points_redeemed"], paid.json()["points_earned"]) == (200, 279)
    back = await pos.post("/pos/v1/receipts", json=receipts.ret(sale, {2: 10_000}))
    assert back.status_code == 201, back.text
    assert back.json()["points_reversed"] + back.json()["points_refunded"] > 0
    rest = await pos.post("/pos/v1/receipts", json=receipts.ret(sale, {1: 20_000}))
    assert rest.status_code == 201, rest.text
    available, _ = await _balance(pos, member["member_id"])
    # everything of the second sale came back: its 279 points are gone, its 200 points are back
    assert available == start + 600


async def test_receipts_at_once_with_a_duplicate_and_a_refusal_among_them(
    pos: ApiClient, receipts: Receipts
) -> None:
    """Receipts arriving together (on SQLite, joining one group commit): a receipt sent twice among them earns
    once and both get its answer, a sale refused among them (points the member lacks) is answered 409 and
    leaves nothing, the others earn; every answer given was committed (on SQLite every writing unit of work
    is counted by the group commits that made it durable)."""
    member = await enrol(pos, "13800138013")
    ref = {"member_id": member["member_id"]}
    start, _ = await _balance(pos, member["member_id"])
    group = pos.app.state.counter.group
    before = group.committed_units
    sales = [receipts.sale((10_000 * (n + 1),), member=ref, till=("T01", "T02")[n % 2]) for n in range(5)]
    refused = receipts.sale((10_000,), member=ref, points=100_000, points_fen=1_000)
    bodies = [sales[0], sales[1], refused, sales[2], sales[1], sales[3], sales[4]]
    answers = await asyncio.gather(*(pos.post("/pos/v1/receipts", json=b) for b in bodies))
    codes = [a.status_code for a in answers]
    assert codes[2] == 409 and answers[2].json()["reason"] == "insufficient_points", answers[2].text
    assert sorted((codes[1], codes[4])) == [200, 201]
    assert [codes[i] for i in (0, 3, 5, 6)] == [201] * 4
    assert answers[1].json()["points_earned"] == answers[4].json()["points_earned"] == 200
    gone = await pos.get(f"/pos/v1/receipts/S1/T01/{refused['business_day']}/{refused['sequence']}")
    assert gone.status_code == 404
    available, earns = await _balance(pos, member["member_id"])
    assert available == start + 1_500 and earns == 5
    if pos.db.backend == "sqlite":
        assert group.committed_units - before == 6  # the 409 was rolled back to its savepoint, not committed


def test_a_receipts_key_writes_its_day_as_strftime_does() -> None:
    """The key a receipt is stored and found under is unchanged by its formatting without strftime (tillcpu17)."""
    from datetime import date, timedelta

    from tongcrm_offline_pos.receipts import receipt_key

    for day in (date(1000, 1, 1), date(2025, 3, 14), date(2026, 12, 7), date(9999, 12, 31)):
        for later in (day, day - timedelta(days=300) if day.year > 1000 else day + timedelta(days=300)):
            assert receipt_key("S1", "T01", later, 7) == f"S1:T01:{later.strftime('%Y%m%d')}:7"
    assert receipt_key("S1", "T01", date(2025, 3, 14), 1) == "S1:T01:20250314:1"
