"""Returns of goods paid partly with points give the points back; returns in another store of the brand — on
both databases."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import sqlalchemy as sa
from tongcrm.app import create_app
from tongcrm.channels.models import ChannelAccount
from tongcrm.config import Settings
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.points import ledger
from tongcrm.points.models import EntryKind, PointsEntry
from tongcrm.testing.plugin import ApiClient
from tongcrm.testing.servers import serve_in_thread
from tongcrm_offline_pos.models import PosReceipt

from .conftest import FakeClock, Receipts, add_store, enrol


async def _ledger(api: ApiClient, member_id: int) -> dict[str, int]:
    """Σ points per entry kind of a member, after checking every ledger invariant."""
    async with api.db.sessions() as session:
        assert await ledger.verify(session) == []
        rows = (
            await session.execute(
                sa.select(PointsEntry.kind, sa.func.sum(PointsEntry.amount))
                .where(PointsEntry.member_id == member_id)
                .group_by(PointsEntry.kind)
            )
        ).all()
    return {kind: int(total) for kind, total in rows}


async def _refunds(api: ApiClient) -> list[tuple[int, int | None, str]]:
    async with api.db.sessions() as session:
        redemption = sa.select(PointsEntry.id).where(PointsEntry.kind == EntryKind.REDEEM).scalar_subquery()
        rows = (
            await session.execute(
                sa.select(PointsEntry.amount, PointsEntry.ref_entry_id, PointsEntry.idempotency_key)
                .where(PointsEntry.kind == EntryKind.REFUND, PointsEntry.ref_entry_id == redemption)
                .order_by(PointsEntry.id)
            )
        ).all()
    return [(int(r[0]), r[1], r[2]) for r in rows]


async def test_a_return_gives_back_the_points_its_goods_were_paid_with(
    pos: ApiClient, receipts: Receipts
) -> None:
    member = await enrol(pos, "13800138000")
    ref = {"member_id": member["member_id"]}
    assert (await pos.post("/pos/v1/receipts", json=receipts.sale((100_000,), member=ref))).status_code == 201
    # 500 yuan, 100 of it paid with 1,000 points: the points are 600 / 400 over the lines by their amounts
    sale = receipts.sale((30_000, 20_000), member=ref, points=1_000, points_fen=10_000)
    paid = (await pos.post("/pos/v1/receipts", json=sale)).json()
    assert paid["points_redeemed"] == 1_000 and paid["points_earned"] == 240 + 160
    assert paid["points_available"] == 1_000 - 1_000 + 400

    half_of_line_2 = receipts.ret(sale, {2: 10_000}, quantities={2: 0})
    first = (await pos.post("/pos/v1/receipts", json=half_of_line_2)).json()
    assert (first["points_reversed"], first["points_refunded"]) == (80, 200)
    assert first["points_available"] == 400 - 80 + 200

    rest_of_2_and_a_third_of_1 = receipts.ret(sale, {2: 10_000, 1: 10_000}, quantities={1: 0})
    second = (await pos.post("/pos/v1/receipts", json=rest_of_2_and_a_third_of_1)).json()
    # line 2 now fully back (400 in all), line 1: floor(600 × 1/3) = 200 — 600 due, 200 given already
    assert (second["points_reversed"], second["points_refunded"]) == (80 + 80, 400)
    replay = await pos.post("/pos/v1/receipts", json=rest_of_2_and_a_third_of_1)
    assert replay.status_code == 200 and replay.json()["replayed"] is True
    assert replay.json()["points_refunded"] == 400

    last = (await pos.post("/pos/v1/receipts", json=receipts.ret(sale, {1: 20_000}))).json()
    assert (last["points_reversed"], last["points_refunded"]) == (160, 400)
    assert last["points_available"] == 1_000  # everything came back: as before the second sale
    over = await pos.post("/pos/v1/receipts", json=receipts.ret(sale, {1: 1}, quantities={1: 0}))
    assert over.status_code == 422 and over.json()["reason"] == "return_exceeds_original"

    refunds = await _refunds(pos)
    assert [amount for amount, _, _ in refunds] == [200, 400, 400]  # the replay added nothing
    assert all(key.startswith("refund:pos:S1:T01:") for _, _, key in refunds)
    assert await _ledger(pos, member["member_id"]) == {
        "earn": 1_000 + 400,
        "redeem": -1_000,
        "reverse": -400,
        "refund": 1_000,
    }


async def test_an_offline_return_after_the_points_were_spent_still_gives_them_back(
    pos: ApiClient, receipts: Receipts
) -> None:
    member = await enrol(pos, "13800138001")
    ref = {"member_id": member["member_id"]}
    await pos.post("/pos/v1/receipts", json=receipts.sale((30_000,), member=ref))
    sale = receipts.sale((10_000,), member=ref, points=300, points_fen=3_000)
    spend_the_rest = receipts.sale((20_000,), member=ref, points=70, points_fen=700)
    back = receipts.ret(sale, {1: 10_000})
    batch = await pos.post("/pos/v1/receipts/batch", json={"receipts": [sale, spend_the_rest, back]})
    results = batch.json()["results"]
    assert [r["status"] for r in results] == ["applied"] * 3, results
    assert results[2]["points_refunded"] == 300 and results[2]["offline"] is True
    # the sale earned 70 on its 70 yuan paid in money: taken back; 300 redeemed points given back
    assert results[2]["points_reversed"] == 70
    assert await _ledger(pos, member["member_id"]) == {
        "earn": 300 + 70 + 193,
        "redeem": -370,
        "reverse": -70,
        "refund": 300,
    }


async def test_goods_come_back_in_another_store_of_the_brand(
    make_client: Callable[..., AbstractAsyncContextManager[ApiClient]],
    pos_host: PluginHost,
    tongcrm_settings: Settings,
    clock: FakeClock,
) -> None:
    async with make_client(host=pos_host, role="pos", store_code="S2") as s2:
        await add_store(s2, pos_host, tongcrm_settings, "S1", ("T01",))
        await add_store(s2, pos_host, tongcrm_settings, "S2", ("T01",))
        await add_store(s2, pos_host, tongcrm_settings, "S3", ("T01",), allow_cross_store_returns="false")
        as_s1 = {"Authorization": f"Bearer {await s2.create_key('pos', store_code='S1')}"}
        as_s3 = {"Authorization": f"Bearer {await s2.create_key('pos', store_code='S3')}"}
        at_s1, at_s2, at_s3 = (Receipts(clock, store=code) for code in ("S1", "S2", "S3"))
        member = await enrol(s2, "13900139000")
        ref = {"member_id": member["member_id"]}

        async def post(body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
            return await s2.post("/pos/v1/receipts", json=body, headers=headers)

        assert (await post(at_s1.sale((50_000,), member=ref), as_s1)).status_code == 201
        sale = at_s1.sale((30_000, 20_000), member=ref, points=500, points_fen=5_000)
        assert (await post(sale, as_s1)).json()["points_redeemed"] == 500

        line_1_at_s2 = at_s2.ret(sale, {1: 30_000})
        assert line_1_at_s2["original"]["store"] == "S1"
        taken = await post(line_1_at_s2)
        assert taken.status_code == 201, taken.text
        # line 1 earned 270 (300 yuan less its 30 paid with points); its share of the 500 points is 300
        assert taken.json()["points_reversed"] == 270 and taken.json()["points_refunded"] == 300
        assert taken.json()["member_id"] == member["member_id"]

        own = await s2.get(
            f"/pos/v1/receipts/S2/T01/{line_1_at_s2['business_day']}/{line_1_at_s2['sequence']}"
        )
        assert own.status_code == 200
        assert (
            own.json()["original_key"] == f"S1:T01:{sale['business_day'].replace('-', '')}:{sale['sequence']}"
        )
        theirs = f"/pos/v1/receipts/S1/T01/{sale['business_day']}/{sale['sequence']}"
        assert (await s2.get(theirs)).status_code == 404  # receipt queries stay store-scoped
        view = (await s2.get(theirs, headers=as_s1)).json()
        assert view["returned_fen"] == {"1": 30_000}

        again_at_s1 = await post(at_s1.ret(sale, {1: 30_000}), as_s1)
        assert again_at_s1.status_code == 422 and again_at_s1.json()["reason"] == "return_exceeds_original"
        again_at_s2 = await post(at_s2.ret(sale, {1: 1}, quantities={1: 0}))
        assert again_at_s2.status_code == 422 and again_at_s2.json()["reason"] == "return_exceeds_original"

        refused = await post(at_s3.ret(sale, {2: 20_000}), as_s3)
        assert refused.status_code == 403 and refused.json()["reason"] == "cross_store_return_refused"
        nowhere = dict(at_s2.ret(sale, {2: 1}, quantities={2: 0}))
        nowhere["original"] = dict(nowhere["original"], store="S9")
        missing = await post(nowhere)
        assert missing.status_code == 404 and missing.json()["reason"] == "original_not_found"

        half_at_s1 = await post(at_s1.ret(sale, {2: 10_000}, quantities={2: 0}), as_s1)
        assert half_at_s1.json()["points_refunded"] == 100
        offline = await s2.post("/pos/v1/receipts/batch", json={"receipts": [at_s2.ret(sale, {2: 10_000})]})
        [result] = offline.json()["results"]
        assert result["status"] == "applied" and result["points_refunded"] == 100, result

        async with s2.db.sessions() as session:
            order = (
                await session.execute(
                    sa.select(Order.status, ChannelAccount.name)
                    .join(ChannelAccount, ChannelAccount.id == Order.account_id)
                    .where(Order.external_id.like("S1:T01:%:2"))
                )
            ).one()
            kept = (
                await session.execute(
                    sa.select(ChannelAccount.name, PosReceipt.kind, sa.func.count())
                    .join(ChannelAccount, ChannelAccount.id == PosReceipt.account_id)
                    .where(PosReceipt.status == "applied")
                    .group_by(ChannelAccount.name, PosReceipt.kind)
                )
            ).all()
        assert tuple(order) == ("refunded", "S1")  # the sale stays the first store's order
        assert sorted(tuple(k) for k in kept) == [("S1", "return", 1), ("S1", "sale", 2), ("S2", "return", 2)]
        assert await _ledger(s2, member["member_id"]) == {
            "earn": 500 + 450,
            "redeem": -500,
            "reverse": -450,
            "refund": 500,
        }


async def test_two_stores_taking_back_the_same_line_at_once_take_it_once(
    make_client: Callable[..., AbstractAsyncContextManager[ApiClient]],
    pos_host: PluginHost,
    tongcrm_settings: Settings,
    clock: FakeClock,
) -> None:
    async with make_client(host=pos_host, role="pos", store_code="S1") as s1:
        await add_store(s1, pos_host, tongcrm_settings, "S1", ("T01", "T02"))
        await add_store(s1, pos_host, tongcrm_settings, "S2", ("T01",))
        as_s2 = {"Authorization": f"Bearer {await s1.create_key('pos', store_code='S2')}"}
        member = await enrol(s1, "13700137000")
        at_s1, at_s2 = Receipts(clock, store="S1"), Receipts(clock, store="S2")
        ref = {"member_id": member["member_id"]}
        await s1.post("/pos/v1/receipts", json=at_s1.sale((400_000,), member=ref))
        sales = [at_s1.sale((20_000, 10_000), member=ref, points=300, points_fen=3_000) for _ in range(4)]
        for sale in sales:
            assert (await s1.post("/pos/v1/receipts", json=sale)).status_code == 201
        # a real server, so that the two stores' requests really overlap
        with serve_in_thread(
            create_app(tongcrm_settings, pos_host, run_jobs=False, configure_logs=False)
        ) as url:
            async with (
                httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {s1.key}"}) as till_1,
                httpx.AsyncClient(base_url=url, headers=as_s2) as till_2,
            ):
                for sale in sales:
                    answers = await asyncio.gather(
                        till_1.post("/pos/v1/receipts", json=at_s1.ret(sale, {1: 20_000}, till="T02")),
                        till_2.post("/pos/v1/receipts", json=at_s2.ret(sale, {1: 20_000})),
                    )
                    assert sorted(a.status_code for a in answers) == [201, 422], [a.text for a in answers]
                    [taken] = [a.json() for a in answers if a.status_code == 201]
                    assert (taken["points_reversed"], taken["points_refunded"]) == (180, 200)
        assert await _ledger(s1, member["member_id"]) == {
            "earn": 4_000 + 4 * 270,
            "redeem": -4 * 300,
            "reverse": -4 * 180,
            "refund": 4 * 200,
        }
