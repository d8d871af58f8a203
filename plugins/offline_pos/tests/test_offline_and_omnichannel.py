"""Offline uploads converge on the in-order result; a Taobao buyer is the same member at the till."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from tongcrm.audit.service import SYSTEM
from tongcrm.channels import service as accounts
from tongcrm.channels.models import ChannelAccount
from tongcrm.config import Settings
from tongcrm.ingest.apply import IngestContext, apply_orders_page
from tongcrm.members.service import lookup as lookup_member
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import IdentityClaim, NormalisedOrder, OrderLine, OrderStatus
from tongcrm.points.models import PointsEntry
from tongcrm.testing.plugin import ApiClient
from tongcrm.tiers import service as tiers
from tongcrm.tiers.testing import LADDER
from tongcrm_offline_pos.models import PosReceipt

from .conftest import FakeClock, Receipts, add_store

TZ = ZoneInfo("Asia/Shanghai")


def _day(receipts: Receipts, mobiles: tuple[str, str]) -> list[dict[str, Any]]:
    """Eight receipts of one till's day: six sales, a return of the second, a sale paid with points."""
    a, b = ({"mobile": m} for m in mobiles)
    day = [
        receipts.sale((12_000,), member=a, minutes_ago=50),
        receipts.sale((30_000, 8_000), member=a, minutes_ago=45),
        receipts.sale((5_000,), member=b, minutes_ago=40),
        receipts.sale((9_900,), minutes_ago=35),  # an anonymous customer
        receipts.sale((20_000,), member=b, minutes_ago=30),
        receipts.sale((7_000,), member=a, minutes_ago=25),
    ]
    day.append(receipts.ret(day[1], {1: 30_000}))
    day.append(receipts.sale((10_000,), member=a, points=150, points_fen=1_500, minutes_ago=5))
    return day


async def _state(
    api: ApiClient, host: PluginHost, settings: Settings, store: str, mobiles: tuple[str, str]
) -> Any:
    """What a store's day left behind, in terms that do not depend on ids or arrival order."""
    vault = settings.vault()
    out: dict[str, Any] = {}
    async with api.db.sessions() as session:
        for i, mobile in enumerate(mobiles):
            member = await lookup_member(session, vault, host, mobile=mobile)
            kinds = (
                await session.execute(
                    sa.select(PointsEntry.kind, sa.func.sum(PointsEntry.amount))
                    .where(PointsEntry.member_id == member.id)
                    .group_by(PointsEntry.kind)
                )
            ).all()
            out[f"member{i}"] = sorted((k, int(v)) for k, v in kinds)
        rows = (
            await session.execute(
                sa.select(PosReceipt.sequence, PosReceipt.status)
                .join(ChannelAccount, ChannelAccount.id == PosReceipt.account_id)
                .where(ChannelAccount.name == store)
                .order_by(PosReceipt.sequence)
            )
        ).all()
        out["receipts"] = [(r[0], r[1]) for r in rows]
    return out


async def test_offline_batches_twice_out_of_order_and_overlapping_equal_one_upload_in_order(
    make_client: Callable[..., AbstractAsyncContextManager[ApiClient]],
    pos_host: PluginHost,
    tongcrm_settings: Settings,
    clock: FakeClock,
) -> None:
    mobiles_in_order = ("13700137001", "13700137002")
    mobiles_messy = ("13600136001", "13600136002")
    async with make_client(host=pos_host, role="pos", store_code="S1") as s1:
        await add_store(s1, pos_host, tongcrm_settings, "S1", ("T01",))
        await add_store(s1, pos_host, tongcrm_settings, "S2", ("T01",))
        s2_key = await s1.create_key("pos", store_code="S2")
        sent_at = clock().isoformat()

        # the reference: store S2 uploads its day once, in order
        reference = _day(Receipts(clock, store="S2"), mobiles_in_order)
        once = await s1.post(
            "/pos/v1/receipts/batch",
            json={"receipts": reference, "sent_at": sent_at},
            headers={"Authorization": f"Bearer {s2_key}"},
        )
        assert once.status_code == 200, once.text
        assert [r["status"] for r in once.json()["results"]] == ["applied"] * 8
        assert all(r["offline"] for r in once.json()["results"])

        # store S1 has the same day, but: two receipts went through online first, the later half is uploaded
        # before the earlier half, then everything once more
        messy = _day(Receipts(clock, store="S1"), mobiles_messy)
        for online in (messy[2], messy[4]):
            assert (await s1.post("/pos/v1/receipts", json=online)).status_code == 201
        late_first = await s1.post("/pos/v1/receipts/batch", json={"receipts": messy[4:], "sent_at": sent_at})
        results = late_first.json()["results"]
        assert results[0]["replayed"] is True  # the overlap with the online receipt
        by_seq = {r["sequence"]: r for r in results}
        assert by_seq[7]["status"] == "rejected" and by_seq[7]["reason"] == "original_not_found"
        assert by_seq[8]["status"] == "rejected" and by_seq[8]["reason"] == "insufficient_points"
        early = await s1.post(
            "/pos/v1/receipts/batch", json={"receipts": messy[:4][::-1], "sent_at": sent_at}
        )
        assert [r["status"] for r in early.json()["results"]] == ["applied"] * 4
        again = await s1.post("/pos/v1/receipts/batch", json={"receipts": messy[::-1], "sent_at": sent_at})
        statuses = {r["sequence"]: (r["status"], r["replayed"]) for r in again.json()["results"]}
        assert statuses[7] == ("applied", False) and statuses[8] == ("applied", False)
        assert all(statuses[s] == ("applied", True) for s in range(1, 7))
        final = await s1.post("/pos/v1/receipts/batch", json={"receipts": messy, "sent_at": sent_at})
        assert final.json()["replayed"] == 8 and final.json()["applied"] == 0

        reference_state = await _state(s1, pos_host, tongcrm_settings, "S2", mobiles_in_order)
        messy_state = await _state(s1, pos_host, tongcrm_settings, "S1", mobiles_messy)
        assert messy_state == reference_state
        assert reference_state["member0"] == [
            ("earn", 120 + 380 + 70 + 85),
            ("redeem", -150),
            ("reverse", -300),
        ]


async def test_skew_is_tolerated_and_recorded(pos: ApiClient, receipts: Receipts, clock: FakeClock) -> None:
    fast_till = (clock() + timedelta(minutes=10)).isoformat()  # the till's clock runs 10 minutes ahead
    body = receipts.sale(minutes_ago=-9)  # "9 minutes from now" on the server: 1 minute ago on the till
    result = await pos.post("/pos/v1/receipts/batch", json={"receipts": [body], "sent_at": fast_till})
    out = result.json()["results"][0]
    assert out["status"] == "applied" and out["clock_skew_seconds"] == -600
    view = (await pos.get(f"/pos/v1/receipts/S1/T01/{body['business_day']}/{body['sequence']}")).json()
    assert view["effective_at"] < view["till_time"]
    assert view["result"]["offline"] is True


async def test_a_taobao_buyer_is_the_same_member_at_the_till(
    pos: ApiClient, pos_host: PluginHost, tongcrm_settings: Settings, clock: FakeClock, receipts: Receipts
) -> None:
    vault = tongcrm_settings.vault()
    paid = clock() - timedelta(days=20)
    async with pos.db.sessions() as session, session.begin():
        await tiers.apply_ladder(session, tiers.TierContext(clock()), LADDER, reason="test", actor=SYSTEM)
        shop = await accounts.create_account(
            session, pos_host, vault, "taobao", "tb-shop", {"app_key": "1", "app_secret": "s", "session": "x"}
        )
        order = NormalisedOrder(
            external_id="TB-1",
            status=OrderStatus.COMPLETED,
            created_at=paid,
            modified_at=paid,
            paid_at=paid,
            completed_at=paid,
            total_fen=80_000,
            paid_fen=80_000,
            claims=(IdentityClaim("taobao.open_uid", "AAE-buyer-1"), IdentityClaim("mobile", "13800138000")),
            lines=(OrderLine("1", "online item", 1, 80_000, 80_000),),
        )
        ctx = IngestContext(host=pos_host, vault=vault, clock=clock, tz=TZ)
        await apply_orders_page(session, ctx, shop.id, "taobao", [order])
    found = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "mobile": "13800138000"})
    assert found.status_code == 200
    online = found.json()
    assert online["points_available"] == 800 and online["tier"] == {"code": "member", "name": "Member"}
    # 300 yuan in store, 100 of it paid with 1,000 online points: 200 yuan earns points, and 80,000 + 20,000
    # fen of spend crosses Silver's 100,000
    body = receipts.sale((30_000,), member={"member_id": online["member_id"]}, points=800, points_fen=10_000)
    paid_in_store = await pos.post("/pos/v1/receipts", json=body)
    assert paid_in_store.status_code == 201, paid_in_store.text
    assert paid_in_store.json()["points_redeemed"] == 800
    after = (await pos.post("/pos/v1/members/lookup", json={"till": "T01", "mobile": "13800138000"})).json()
    assert after["member_id"] == online["member_id"]
    assert after["tier"] == {"code": "silver", "name": "Silver"}
    assert {e["kind"] for e in after["entitlements"]} >= {"points_multiplier"}
    assert after["points_available"] == paid_in_store.json()["points_earned"]
