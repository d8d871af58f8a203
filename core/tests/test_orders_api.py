"""``GET /api/orders`` and ``GET /api/orders/{id}``: filters, keyset pages that neither skip nor repeat (also
with orders sharing a placed time), masked tracking numbers, roles and 4xx problems for bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tongcrm.channels.models import ChannelAccount
from tongcrm.members.models import Member
from tongcrm.orders.models import Order, OrderLine
from tongcrm.testing.database import TestDatabase

T0 = datetime(2026, 11, 1, 2, tzinfo=UTC)


async def _seed(db: TestDatabase) -> dict[str, Any]:
    async with db.sessions() as session, session.begin():
        tmall = ChannelAccount(channel="taobao", name="tmall", settings={}, secret_names=[], status="active")
        jd = ChannelAccount(channel="jd", name="jd-pop", settings={}, secret_names=[], status="active")
        alice, bob = Member(), Member()
        session.add_all([tmall, jd, alice, bob])
        await session.flush()
        orders = []
        for n in range(12):
            account = tmall if n % 3 else jd
            orders.append(
                Order(
                    account_id=account.id,
                    external_id=f"E{n}",
                    member_id=alice.id if n % 2 else bob.id,
                    channel=account.channel,
                    status="paid" if n % 4 else "completed",
                    total_fen=10_000 + n,
                    paid_fen=10_000 + n,
                    # orders 4 and 5 share a placed time, so the keyset needs the id to break the tie
                    placed_at=T0 + timedelta(hours=min(n, 4) if n in (4, 5) else n),
                    modified_at=T0 + timedelta(hours=n),
                )
            )
        orders[7].shipments = [
            {
                "tracking_number": "SF1234567890",
                "carrier_name": "顺丰",
                "carrier_code": "SF",
                "shipped_at": "2026-11-02T01:00:00+00:00",
                "line_ids": ["L1"],
            }
        ]
        session.add_all(orders)
        await session.flush()
        session.add(
            OrderLine(
                order_id=orders[7].id,
                external_id="L1",
                title="保温杯",
                quantity=2,
                unit_price_fen=5_000,
                amount_fen=10_000,
            )
        )
        return {
            "tmall": tmall.id,
            "jd": jd.id,
            "alice": alice.id,
            "bob": bob.id,
            "orders": [o.id for o in orders],
        }


async def _all_pages(api: Any, url: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(50):
        sep = "&" if "?" in url else "?"
        page = await api.get(f"{url}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        assert page.status_code == 200, page.text
        items.extend(page.json()["items"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


async def test_listing_pages_and_filters(tongcrm_db: TestDatabase, make_client: Any) -> None:
    seed = await _seed(tongcrm_db)
    ids = seed["orders"]
    async with make_client(role="analyst") as api:
        everything = await _all_pages(api, "/api/orders", 5)
        assert (
            len(everything) == 12 and len({o["id"] for o in everything}) == 12
        )  # nothing skipped or repeated
        placed = [(o["placed_at"], o["id"]) for o in everything]
        assert placed == sorted(placed, reverse=True)  # newest first, ties by id
        assert [o["id"] for o in everything[-6:-4]] == [ids[5], ids[4]]
        assert await _all_pages(api, "/api/orders", 1) == everything

        mine = await _all_pages(api, f"/api/orders?member_id={seed['alice']}", 2)
        assert sorted(o["id"] for o in mine) == [ids[n] for n in range(12) if n % 2]
        jd = await _all_pages(api, f"/api/orders?account_id={seed['jd']}", 50)
        assert sorted(o["id"] for o in jd) == [ids[n] for n in (0, 3, 6, 9)]
        assert await _all_pages(api, "/api/orders?account=jd-pop", 3) == jd
        done = await _all_pages(api, "/api/orders?status=completed", 50)
        assert sorted(o["id"] for o in done) == [ids[n] for n in (0, 4, 8)]
        window = await _all_pages(
            api,
            "/api/orders?placed_from=2026-11-01T13:00:00%2B08:00&placed_to=2026-11-01T16:00:00%2B08:00",
            50,
        )  # 05:00 (inclusive) to 08:00 (exclusive) UTC: orders 3 (05:00), 4 and 5 (06:00); order 6 is at 08:00
        assert sorted(o["id"] for o in window) == [ids[3], ids[4], ids[5]]
        combined = await _all_pages(
            api, f"/api/orders?member_id={seed['alice']}&account=tmall&status=paid", 50
        )
        assert sorted(o["id"] for o in combined) == [ids[n] for n in (1, 5, 7, 11)]
        assert everything[0]["total_fen"] == 10_011 and everything[0]["channel"] == "taobao"


async def test_one_order_with_lines_and_masked_parcels(tongcrm_db: TestDatabase, make_client: Any) -> None:
    seed = await _seed(tongcrm_db)
    async with make_client(role="analyst") as api:
        got = await api.get(f"/api/orders/{seed['orders'][7]}")
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["account_name"] == "tmall" and body["order"]["external_id"] == "E7"
        assert [(line["title"], line["quantity"], line["amount_fen"]) for line in body["lines"]] == [
            ("保温杯", 2, 10_000)
        ]
        assert body["parcels"][0]["tracking_number"] == "********7890"
        assert "SF1234567890" not in got.text
        missing = await api.get("/api/orders/999999")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith(
            "application/problem"
        )


async def test_bad_input_gets_a_problem_and_pos_keys_are_refused(
    tongcrm_db: TestDatabase, make_client: Any
) -> None:
    await _seed(tongcrm_db)
    async with make_client(role="analyst") as api:
        for url, says in (
            ("/api/orders?status=lost", "not one of"),
            ("/api/orders?placed_from=2026-11-01T00:00:00", "needs a time zone"),
            ("/api/orders?cursor=bm9wZQ", "not a next_cursor"),
            ("/api/orders?account=nowhere", "no channel account named"),
        ):
            bad = await api.get(url)
            assert bad.status_code in (400, 422), (url, bad.text)  # statuses the OpenAPI document lists
            assert says in bad.json()["detail"], (url, bad.text)
        assert (await api.get("/api/orders?limit=0")).status_code == 400
    async with make_client(role="pos", store_code="SH001") as till:
        assert (await till.get("/api/orders")).status_code == 403
