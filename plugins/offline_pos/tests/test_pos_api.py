"""The POS API end to end on both databases: checkout, points payment, returns, lookups, enrolment, scoping,
member codes, rate limits and request validation."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import sqlalchemy as sa
from tongcrm.config import Settings
from tongcrm.consent.models import ConsentEvent
from tongcrm.members.models import Member
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.testing.plugin import ApiClient
from tongcrm_offline_pos.api import PosConfig
from tongcrm_offline_pos.models import PosReceipt

from .conftest import FakeClock, Receipts, add_store, enrol, make_host

MOBILE = "13800138000"


async def test_enrol_records_consent_and_lookup_shows_only_masked_data(pos: ApiClient) -> None:
    member = await enrol(pos, MOBILE)
    assert member["created"] is True
    assert member["mobile"] == "138****8000" and member["name"] == "王**"
    again = await pos.post(
        "/pos/v1/members",
        json={"till": "T01", "mobile": "+86 138 0013 8000", "consent": {"marketing": False}},
    )
    assert again.status_code == 200 and again.json()["member_id"] == member["member_id"]
    found = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "mobile": "138-0013-8000"})
    assert found.status_code == 200
    assert set(found.json()) == {
        "member_id", "name", "mobile", "tier", "entitlements", "points_available", "created",
    }  # fmt: skip
    assert found.json()["member_id"] == member["member_id"]
    async with pos.db.sessions() as session:
        member_row = await session.get(Member, member["member_id"])
        assert member_row is not None and member_row.source_channel == "offline_pos"
        assert member_row.source_store == "S1"
        events = (
            await session.execute(
                sa.select(ConsentEvent.purpose, ConsentEvent.status, ConsentEvent.source).order_by(
                    ConsentEvent.id
                )
            )
        ).all()
    assert ("marketing", "opt_in", "pos:S1:T01") in events
    assert events[-2:] == [("marketing", "opt_out", "pos:S1:T01"), ("service", "opt_in", "pos:S1:T01")]
    missing = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "mobile": "13900139000"})
    assert missing.status_code == 404


async def test_checkout_earns_points_and_a_replay_changes_nothing(pos: ApiClient, receipts: Receipts) -> None:
    member = await enrol(pos, MOBILE)
    body = receipts.sale((12_345, 6_000), member={"member_id": member["member_id"]})
    first = await pos.post("/pos/v1/receipts", json=body)
    assert first.status_code == 201, first.text
    result = first.json()
    assert result["status"] == "applied" and result["points_earned"] == 123 + 60
    assert result["member_id"] == member["member_id"] and result["offline"] is False
    again = await pos.post("/pos/v1/receipts", json=body)
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert again.json()["points_available"] == result["points_available"]
    changed = dict(body, total_fen=1, lines=body["lines"][:1])
    changed["lines"] = [dict(body["lines"][0], amount_fen=1, unit_price_fen=1)]
    changed["payments"] = [{"method": "cash", "amount_fen": 1}]
    reused = await pos.post("/pos/v1/receipts", json=changed)
    assert reused.status_code == 409 and reused.json()["reason"] == "key_reused"
    view = await pos.get(f"/pos/v1/receipts/S1/T01/{body['business_day']}/{body['sequence']}")
    assert view.status_code == 200 and view.json()["result"]["points_earned"] == 183
    # a malformed business day is a 400 naming the parameter and the form, not a path no route matches
    for day in ("notaday", "20261201", "2026-W49-1", "2026-02-30", "0999-01-01"):
        bad = await pos.get(f"/pos/v1/receipts/S1/T01/{day}/{body['sequence']}")
        assert bad.status_code == 400, (day, bad.text)
        problem = bad.json()
        assert problem["errors"][0]["key"] == "business_day" and problem["errors"][0]["source"] == "path"
        assert problem["detail"].startswith("business_day: ")
    assert (
        "expected a date as YYYY-MM-DD"
        in (await pos.get("/pos/v1/receipts/S1/T01/notaday/1")).json()["detail"]
    )
    async with pos.db.sessions() as session:
        assert (await session.execute(sa.select(sa.func.count()).select_from(Order))).scalar_one() == 1


async def test_paying_with_points_is_a_redemption_in_the_same_call(
    pos: ApiClient, receipts: Receipts
) -> None:
    member = await enrol(pos, MOBILE)
    ref = {"member_id": member["member_id"]}
    earned = (await pos.post("/pos/v1/receipts", json=receipts.sale((50_000,), member=ref))).json()
    assert earned["points_earned"] == 500
    too_much = receipts.sale((10_000,), member=ref, points=600, points_fen=600)
    refused = await pos.post("/pos/v1/receipts", json=too_much)
    assert refused.status_code == 409 and refused.json()["reason"] == "insufficient_points"
    gone = await pos.get(f"/pos/v1/receipts/S1/T01/{too_much['business_day']}/{too_much['sequence']}")
    assert gone.status_code == 404  # nothing of a refused online receipt is kept
    paid = await pos.post(
        "/pos/v1/receipts",
        json=receipts.sale((10_000,), member=ref, points=400, points_fen=4_000, seq=too_much["sequence"]),
    )
    assert paid.status_code == 201, paid.text
    out = paid.json()
    # 100 yuan, 40 paid with points: 60 yuan earns 60 points
    assert out["points_redeemed"] == 400 and out["points_earned"] == 60
    assert out["points_available"] == 500 - 400 + 60


async def test_a_return_reverses_points_line_by_line(pos: ApiClient, receipts: Receipts) -> None:
    member = await enrol(pos, MOBILE)
    sale = receipts.sale((30_000, 20_000), member={"member_id": member["member_id"]})
    assert (await pos.post("/pos/v1/receipts", json=sale)).json()["points_earned"] == 500
    half = await pos.post("/pos/v1/receipts", json=receipts.ret(sale, {2: 10_000}, quantities={2: 0}))
    assert half.status_code == 201, half.text
    assert half.json()["points_reversed"] == 100 and half.json()["points_available"] == 400
    rest = await pos.post("/pos/v1/receipts", json=receipts.ret(sale, {2: 10_000, 1: 30_000}))
    assert rest.status_code == 201, rest.text
    assert rest.json()["points_reversed"] == 400 and rest.json()["points_available"] == 0
    over = await pos.post("/pos/v1/receipts", json=receipts.ret(sale, {1: 1}))
    assert over.status_code == 422 and over.json()["reason"] == "return_exceeds_original"
    unknown = dict(
        receipts.ret(sale, {1: 1}),
        original={"till": "T01", "business_day": sale["business_day"], "sequence": 999},
    )
    assert (await pos.post("/pos/v1/receipts", json=unknown)).json()["reason"] == "original_not_found"
    async with pos.db.sessions() as session:
        order = (await session.execute(sa.select(Order))).scalar_one()
    assert order.status == "refunded" and order.refunded_fen == 50_000


async def test_a_key_sees_only_its_own_store(
    make_client: Callable[..., AbstractAsyncContextManager[ApiClient]],
    pos_host: object,
    tongcrm_settings: Settings,
    clock: FakeClock,
) -> None:
    from tongcrm.plugin.host import PluginHost

    assert isinstance(pos_host, PluginHost)
    async with make_client(host=pos_host, role="pos", store_code="S2") as s2:
        await add_store(s2, pos_host, tongcrm_settings, "S1", ("T01",))
        await add_store(s2, pos_host, tongcrm_settings, "S2", ("T01",))
        b_receipts = Receipts(clock, store="S2")
        sale = b_receipts.sale()
        assert (await s2.post("/pos/v1/receipts", json=sale)).status_code == 201
        path = f"/pos/v1/receipts/S2/T01/{sale['business_day']}/{sale['sequence']}"
        assert (await s2.get(path)).status_code == 200
        s1_key = await s2.create_key("pos", store_code="S1")
        as_s1 = {"Authorization": f"Bearer {s1_key}"}
        denied = await s2.get(path, headers=as_s1)
        assert denied.status_code == 404 and "S2" in denied.json()["detail"]
        assert (await s2.get(path.replace("S2", "S9"), headers=as_s1)).status_code == 404
        assert (await s2.post("/pos/v1/receipts", json=b_receipts.sale(), headers=as_s1)).status_code == 404
        batch = {"receipts": [b_receipts.sale()]}
        assert (await s2.post("/pos/v1/receipts/batch", json=batch, headers=as_s1)).status_code == 404
        admin_key = await s2.create_key("admin")
        forbidden = await s2.get(path, headers={"Authorization": f"Bearer {admin_key}"})
        assert forbidden.status_code == 403
        unregistered = Receipts(clock, store="S2", till="T99").sale()
        refused = await s2.post("/pos/v1/receipts", json=unregistered)
        assert refused.status_code == 404 and refused.json()["reason"] == "unknown_till"


async def test_member_code_is_single_use_and_expires(
    pos: ApiClient, clock: FakeClock, tongcrm_settings: Settings
) -> None:
    member = await enrol(pos, MOBILE)
    admin_key = await pos.create_key("admin")
    issued = await pos.post(
        "/pos/v1/member-codes",
        json={"member_id": member["member_id"]},
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    assert issued.status_code == 201
    code = issued.json()["code"]
    assert len(code) == 18 and code.isdigit()
    assert (
        await pos.post("/pos/v1/member-codes", json={"member_id": member["member_id"]})
    ).status_code == 403
    first = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "code": code})
    assert first.status_code == 200 and first.json()["member_id"] == member["member_id"]
    second = await pos.post("/pos/v1/members/lookup", json={"till": "T02", "code": code})
    assert second.status_code == 409
    stale = (
        await pos.post(
            "/pos/v1/member-codes",
            json={"member_id": member["member_id"]},
            headers={"Authorization": f"Bearer {admin_key}"},
        )
    ).json()["code"]
    clock.advance(61)
    expired = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "code": stale})
    assert expired.status_code == 404
    forged = code[:-1] + str((int(code[-1]) + 1) % 10)
    assert (await pos.post("/pos/v1/members/lookup", json={"till": "T01", "code": forged})).status_code == 404
    both = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "code": code, "mobile": MOBILE})
    assert both.status_code == 422


async def test_a_till_key_over_its_rate_gets_429_with_retry_after(
    make_client: Callable[..., AbstractAsyncContextManager[ApiClient]],
    tongcrm_settings: Settings,
    clock: FakeClock,
) -> None:
    host = make_host(PosConfig(clock=clock, rate_per_second=0.5, burst=3))
    async with make_client(host=host, role="pos", store_code="S1") as api:
        await add_store(api, host, tongcrm_settings, "S1", ("T01",))
        statuses = []
        for _ in range(5):
            response = await api.post("/pos/v1/members/lookup", json={"till": "T01", "mobile": MOBILE})
            statuses.append(response.status_code)
        assert statuses[:3] == [404, 404, 404]
        assert statuses[3:] == [429, 429]
        assert response.headers["Retry-After"] == "2"
        assert response.headers["content-type"].startswith("application/problem+json")
        other = await api.create_key("pos", store_code="S1")  # another till key has its own bucket
        ok = await api.post(
            "/pos/v1/members/lookup",
            json={"till": "T01", "mobile": MOBILE},
            headers={"Authorization": f"Bearer {other}"},
        )
        assert ok.status_code == 404


async def test_oversize_and_malformed_requests_get_clear_4xx(pos: ApiClient, receipts: Receipts) -> None:
    too_many = {"receipts": [receipts.sale(seq=i + 1) for i in range(201)]}
    big = await pos.post("/pos/v1/receipts/batch", json=too_many)
    assert big.status_code == 413 and big.json()["max_batch"] == 200
    huge = await pos.post("/pos/v1/receipts", content=b"{" + b" " * (3 * 1024 * 1024) + b"}",
                          headers={"content-type": "application/json"})  # fmt: skip
    assert huge.status_code == 413
    missing = receipts.sale()
    del missing["total_fen"]
    bad = await pos.post("/pos/v1/receipts", json=missing)
    assert bad.status_code == 400 and "total_fen" in bad.json()["detail"]
    negative = receipts.sale()
    negative["lines"][0]["amount_fen"] = -5
    assert (await pos.post("/pos/v1/receipts", json=negative)).status_code == 400
    naive = receipts.sale()
    naive["occurred_at"] = naive["occurred_at"][:19]
    refused = await pos.post("/pos/v1/receipts", json=naive)
    assert refused.status_code == 422 and refused.json()["reason"] == "invalid_receipt"
    wrong_sum = receipts.sale((100, 200))
    wrong_sum["total_fen"] = 250
    assert (await pos.post("/pos/v1/receipts", json=wrong_sum)).status_code == 422
    assert (
        await pos.post("/pos/v1/receipts", content=b"not json", headers={"content-type": "application/json"})
    ).status_code == 400
    in_batch = await pos.post("/pos/v1/receipts/batch", json={"receipts": [wrong_sum, receipts.sale()]})
    assert in_batch.status_code == 200
    assert [r["status"] for r in in_batch.json()["results"]] == ["rejected", "applied"]
    async with pos.db.sessions() as session:
        kept = (await session.execute(sa.select(PosReceipt.status))).scalars().all()
    assert kept == ["applied"]


async def test_a_merge_moves_receipts_to_the_survivor_and_undo_moves_them_back(
    pos: ApiClient, receipts: Receipts
) -> None:
    from datetime import UTC, datetime

    from tongcrm.audit.service import SYSTEM
    from tongcrm.members.merge import merge_members, undo_merge

    first = (await enrol(pos, MOBILE))["member_id"]
    second = (await enrol(pos, "13900139000"))["member_id"]
    for member in (first, second):
        sale = await pos.post("/pos/v1/receipts", json=receipts.sale((5_000,), member={"member_id": member}))
        assert sale.status_code == 201, sale.text

    async def owners() -> list[int | None]:
        async with pos.db.sessions() as session:
            return list(
                (await session.execute(sa.select(PosReceipt.member_id).order_by(PosReceipt.id))).scalars()
            )

    assert await owners() == [first, second]
    at = datetime(2025, 3, 14, 8, tzinfo=UTC)
    async with pos.db.sessions() as session, session.begin():
        merge = await merge_members(session, first, second, actor=SYSTEM, reason="same shopper", at=at)
        assert merge.moved[PosReceipt.__tablename__] != []
    assert await owners() == [first, first]
    async with pos.db.sessions() as session, session.begin():
        await undo_merge(session, merge.id, actor=SYSTEM, at=at)
    assert await owners() == [first, second]


async def test_a_membership_card_finds_its_member_at_the_till_and_names_a_buyer(
    pos: ApiClient,
    receipts: Receipts,
    pos_host: PluginHost,
    make_client: Callable[..., AbstractAsyncContextManager[ApiClient]],
) -> None:
    enrolled = await pos.post(
        "/pos/v1/members",
        json={"till": "T01", "mobile": MOBILE, "card": "8801 2345-6789", "consent": {"marketing": False}},
    )
    assert enrolled.status_code == 201, enrolled.text
    member = enrolled.json()["member_id"]
    for typed in ("880123456789", " 8801-2345-6789 "):
        found = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "card": typed})
        assert found.status_code == 200 and found.json()["member_id"] == member
    async with make_client(host=pos_host, role="admin") as admin:  # the card is an identity like any other
        by_identity = await admin.get("/api/members/lookup", params={"identity": "pos.card:880123456789"})
        assert by_identity.status_code == 200 and by_identity.json()["id"] == member

    # a card that names another member is refused, and nothing of the enrolment is written
    taken = await pos.post(
        "/pos/v1/members",
        json={"till": "T01", "mobile": "13900139000", "card": "880123456789", "consent": {"marketing": True}},
    )
    assert taken.status_code == 409 and f"member {member}" in taken.json()["detail"]
    missing = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "mobile": "13900139000"})
    assert missing.status_code == 404
    unknown = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "card": "0000111122"})
    assert unknown.status_code == 404 and unknown.json()["detail"] == "no member has this card"
    for bad in ({"card": "!!"}, {"card": "12345", "mobile": MOBILE}):
        refused = await pos.post("/pos/v1/members/lookup", json={"till": "T01", **bad})
        assert refused.status_code == 422, refused.text

    # a sale names its buyer by the card; a card nobody has yet makes a member, as a new mobile does
    sale = await pos.post(
        "/pos/v1/receipts", json=receipts.sale((10_000,), member={"card": "8801 2345 6789"})
    )
    assert sale.status_code == 201 and sale.json()["member_id"] == member, sale.text
    assert sale.json()["points_earned"] == 100
    fresh = await pos.post("/pos/v1/receipts", json=receipts.sale((5_000,), member={"card": "77-77-77-77"}))
    assert fresh.status_code == 201, fresh.text
    assert fresh.json()["member_id"] not in (None, member)
    found = await pos.post("/pos/v1/members/lookup", json={"till": "T01", "card": "77777777"})
    assert found.json()["member_id"] == fresh.json()["member_id"]
    bad_card = await pos.post("/pos/v1/receipts", json=receipts.sale((5_000,), member={"card": "x"}))
    assert bad_card.status_code == 422 and bad_card.json()["reason"] == "invalid_receipt"
    assert "member.card" in bad_card.json()["detail"]


async def test_a_key_of_another_role_is_refused_for_its_role_not_rate_limited(
    make_client: Callable[..., AbstractAsyncContextManager[ApiClient]],
    tongcrm_settings: Settings,
    clock: FakeClock,
) -> None:
    """The role check comes before the till's rate limit: an admin key is no till, and is told so however
    often it asks (it is not counted against a bucket meant for tills)."""
    host = make_host(PosConfig(clock=clock, rate_per_second=0.5, burst=2))
    async with make_client(host=host, role="admin") as api:
        await add_store(api, host, tongcrm_settings, "S1", ("T01",))
        statuses = [
            (await api.post("/pos/v1/members/lookup", json={"till": "T01", "mobile": MOBILE})).status_code
            for _ in range(5)
        ]
        assert statuses == [403] * 5
        till = await api.create_key("pos", store_code="S1")
        as_till = {"Authorization": f"Bearer {till}"}
        tills = [
            (
                await api.post(
                    "/pos/v1/members/lookup", json={"till": "T01", "mobile": MOBILE}, headers=as_till
                )
            ).status_code
            for _ in range(3)
        ]
        assert tills == [404, 404, 429]
