"""The points API: Idempotency-Key semantics, 409 on unaffordable redemptions, the explained statement, rules and
their dry run; and concurrent redemptions that must never overdraw — on every database backend."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from points_helpers import Clock, ctx, make_members, order
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.errors import Conflict
from tongcrm.points import ledger, service
from tongcrm.points.models import PointsEntry
from tongcrm.testing.database import TestDatabase


async def _member(api: Any) -> int:
    async with api.db.sessions() as s, s.begin():
        return (await make_members(s, 1))[0]


async def _seed(api: Any, member_id: int, points: int) -> None:
    r = await api.post(
        f"/api/members/{member_id}/points/adjustments",
        json={"points": points, "reason": "opening balance"},
        headers={"Idempotency-Key": f"seed-{member_id}"},
    )
    assert r.status_code == 201, r.text


async def test_redemption_idempotency_key_semantics(make_client: Any) -> None:
    async with make_client(role="operator") as api:
        m = await _member(api)
        await _seed(api, m, 100)
        url = f"/api/members/{m}/points/redemptions"
        first = await api.post(
            url, json={"points": 30, "reason": "coupon"}, headers={"Idempotency-Key": "r-1"}
        )
        assert first.status_code == 201 and first.headers["idempotent-replayed"] == "false"
        assert first.json()["balance"]["available"] == 70
        again = await api.post(
            url, json={"points": 30, "reason": "coupon"}, headers={"Idempotency-Key": "r-1"}
        )
        assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        other = await api.post(
            url, json={"points": 31, "reason": "coupon"}, headers={"Idempotency-Key": "r-1"}
        )
        assert other.status_code == 422 and "different request" in other.json()["detail"]
        missing = await api.post(url, json={"points": 1})
        assert missing.status_code == 400 and "Idempotency-Key" in missing.json()["detail"]
        broke = await api.post(url, json={"points": 71}, headers={"Idempotency-Key": "r-2"})
        assert broke.status_code == 409 and broke.json()["available"] == 70
        bad = await api.post(url, json={"points": 0}, headers={"Idempotency-Key": "r-3"})
        assert bad.status_code == 422
        unknown = await api.post(
            "/api/members/999999/points/redemptions", json={"points": 1}, headers={"Idempotency-Key": "r-4"}
        )
        assert unknown.status_code == 404
        st = (await api.get(f"/api/members/{m}/points")).json()
    assert st["balance"] == {"member_id": m, "available": 70, "pending": 0, "debt": 0, "owed": 0}
    assert [e["kind"] for e in st["entries"]] == ["redeem", "adjust"]
    assert st["entries"][0]["draws"] == [{"lot_id": st["entries"][1]["id"], "amount": 30, "kind": "redeem"}]
    assert st["entries"][0]["explanation"] == "redeemed 30 points: coupon"


async def test_adjustments_need_a_reason_and_the_right_role(make_client: Any) -> None:
    async with make_client(role="analyst") as api:
        m = await _member(api)
        r = await api.post(
            f"/api/members/{m}/points/adjustments",
            json={"points": 5, "reason": "x"},
            headers={"Idempotency-Key": "a"},
        )
        assert r.status_code == 403
    async with make_client(role="admin") as api:
        m = await _member(api)
        r = await api.post(
            f"/api/members/{m}/points/adjustments",
            json={"points": 5, "reason": " "},
            headers={"Idempotency-Key": "a"},
        )
        assert r.status_code == 422
        r = await api.post(
            f"/api/members/{m}/points/adjustments",
            json={"points": -5, "reason": "fix"},
            headers={"Idempotency-Key": "b"},
        )
        assert r.status_code == 409


async def test_a_reason_longer_than_the_ledger_keeps_is_a_400_naming_it(make_client: Any) -> None:
    """The ledger keeps 500 characters of a reason: a longer one is refused before anything runs, on every
    write route that takes one (it was a 500 on PostgreSQL and stored whole on SQLite)."""
    async with make_client(role="admin") as api:
        m, other = await _member(api), await _member(api)
        await _seed(api, m, 100)
        base = f"/api/members/{m}/points"
        for path, body in (
            ("/adjustments", {"points": 5}),
            ("/redemptions", {"points": 5}),
            ("/transfers", {"points": 5, "to_member_id": other}),
        ):
            r = await api.post(
                base + path, json={**body, "reason": "长" * 501}, headers={"Idempotency-Key": f"long{path}"}
            )
            assert r.status_code == 400, (path, r.text)
            assert "reason" in r.text and "500" in r.text, r.text
            r = await api.post(
                base + path, json={**body, "reason": "长" * 500}, headers={"Idempotency-Key": f"fits{path}"}
            )
            assert r.status_code == 201, (path, r.text)
        r = await api.post("/api/points/rules", json={"document": {"rules": []}, "note": "x" * 501})
        assert r.status_code == 400 and "note" in r.text, r.text


async def test_explain_preview_and_rule_versions(make_client: Any) -> None:
    doc = {
        "reversal_policy": "clawback",
        "expiry": {"kind": "end_of_year", "months": 12},
        "rules": [
            {
                "type": "spend",
                "code": "base",
                "priority": 100,
                "points_per_yuan": "1",
                "release": "completed",
            },
            {
                "type": "spend",
                "code": "store-bonus",
                "priority": 50,
                "points_per_yuan": "0.5",
                "stores": ["SH001"],
            },
        ],
    }
    async with make_client(role="admin") as api:
        created = await api.post(
            "/api/points/rules", json={"document": doc, "note": "spring", "activate": True}
        )
        assert created.status_code == 201, created.text
        version = created.json()["version"]
        bad = await api.post(
            "/api/points/rules",
            json={
                "document": {
                    "rules": [
                        {"type": "spend", "code": "a", "priority": 1},
                        {"type": "spend", "code": "b", "priority": 1},
                    ]
                }
            },
        )
        assert bad.status_code == 422 and "same priority" in bad.json()["detail"]
        preview_order = {
            "channel": "offline_pos",
            "store_code": "SH001",
            "lines": [{"external_id": "1", "amount_fen": 10_050}],
        }
        p = (await api.post("/api/points/rules/preview", json={"order": preview_order})).json()
        assert p["rule_version"] == version and p["total"] == 50 + 100
        draft = {
            "rules": [
                {"type": "spend", "code": "triple", "priority": 1, "points_per_yuan": "3", "rounding": "up"}
            ]
        }
        p2 = (
            await api.post("/api/points/rules/preview", json={"order": preview_order, "rules": draft})
        ).json()
        assert p2["draft"] is True and p2["total"] == 302  # 100.50 × 3 = 301.5 → up
        # a member that does not exist was previewed as "no tier" (200), a negative id too: walk16
        unknown = await api.post(
            "/api/points/rules/preview", json={"order": {**preview_order, "member_id": 999_999}}
        )
        assert unknown.status_code == 404 and "no member 999999" in unknown.json()["detail"], unknown.text
        for bad_id in (-1, 0):
            r = await api.post(
                "/api/points/rules/preview", json={"order": {**preview_order, "member_id": bad_id}}
            )
            assert r.status_code == 400 and "member_id" in r.json()["detail"], r.text
        m = await _member(api)
        async with api.db.sessions() as s, s.begin():
            await service.apply_orders(
                s,
                service.PointsContext(clock=lambda: datetime.now(UTC), tz=ctx(Clock()).tz),
                [order(1, m, [(11, 10_050)], paid_at=datetime(2026, 3, 1, tzinfo=UTC), store_code="SH001")],
            )
            assert (await s.execute(sa.select(sa.func.count()).select_from(PointsEntry))).scalar_one() == 2
        st = (await api.get(f"/api/members/{m}/points")).json()
        assert st["balance"]["pending"] == 150
        base = next(e for e in st["entries"] if e["rule_code"] == "base")
        assert base["rule_version"] == version and base["rule"]["code"] == "base"
        assert base["explanation"].startswith("100 points under rule 'base' v")
        assert "pending until the order's completed" in base["explanation"]
        assert base["expires_at"].startswith("2027-12-31T16:00:00")  # end of next year, Shanghai midnight
        listed = (await api.get("/api/points/rules")).json()
        assert listed[0]["version"] == version and listed[0]["status"] == "active"


async def test_transfer_api(make_client: Any) -> None:
    async with make_client(role="admin") as api:
        a, b = await _member(api), await _member(api)
        await _seed(api, a, 50)
        r = await api.post(
            f"/api/members/{a}/points/transfers",
            json={"to_member_id": b, "points": 20},
            headers={"Idempotency-Key": "t"},
        )
        assert r.status_code == 201
        body = r.json()
        assert body["balance"]["available"] == 30 and body["counterpart_balance"]["available"] == 20


async def test_concurrent_redemptions_never_overdraw(tongcrm_db: TestDatabase) -> None:
    """32 redemptions of 10 on separate connections against a balance of 155: exactly 15 succeed."""
    clock = Clock()
    c = ctx(clock, {"rules": []})
    async with tongcrm_db.sessions() as s, s.begin():
        (m,) = await make_members(s, 1)
        for i, points in enumerate((50, 60, 45)):  # three lots
            await service.adjust(s, c, m, points, key=f"seed-{i}", reason="seed")
    engine = create_engine(tongcrm_db.url, pool_size=32)
    sessions = session_factory(engine)
    start = asyncio.Event()

    async def attempt(i: int) -> str:
        await start.wait()
        try:
            async with sessions() as s, s.begin():
                await service.idempotent(
                    s,
                    key=f"red-{i}",
                    kind="redemption",
                    member_id=m,
                    body={"points": 10},
                    now=clock(),
                    action=lambda: service.redeem(s, c, m, 10, key=f"red-{i}"),
                )
        except Conflict:
            return "409"
        return "ok"

    try:
        tasks = [asyncio.create_task(attempt(i)) for i in range(32)]
        await asyncio.sleep(0.05)
        start.set()
        outcomes = await asyncio.gather(*tasks)
    finally:
        await engine.dispose()
    assert outcomes.count("ok") == 15 and outcomes.count("409") == 17
    async with tongcrm_db.sessions() as s:
        assert (await service.balance(s, m)).available == 5
        assert await ledger.verify(s) == []


async def test_an_adjustment_is_audited_once_with_who_the_member_the_points_and_the_reason(
    make_client: Any,
) -> None:
    """Keys, consents and erasures were in the audit log and a hand-made points change was not: the log now
    answers who moved how many points of which member and why, once per Idempotency-Key (a retry is not a
    second entry), and a refused adjustment leaves none."""
    async with make_client(role="operator") as api:
        m = await _member(api)
        url = f"/api/members/{m}/points/adjustments"
        body = {"points": 40, "reason": "补偿：快递延误"}
        first = await api.post(url, json=body, headers={"Idempotency-Key": "audit-1"})
        assert first.status_code == 201, first.text
        again = await api.post(url, json=body, headers={"Idempotency-Key": "audit-1"})
        assert again.headers["idempotent-replayed"] == "true"
        refused = await api.post(
            url, json={"points": -500, "reason": "x"}, headers={"Idempotency-Key": "a-2"}
        )
        assert refused.status_code == 409
        taken = await api.post(
            url, json={"points": -15, "reason": "扣回"}, headers={"Idempotency-Key": "a-3"}
        )
        assert taken.status_code == 201
    async with make_client(role="admin") as admin:
        log = await admin.get("/api/audit", params={"action": "points.adjust"})
        assert log.status_code == 200, log.text
    entries = [e for e in log.json()["items"] if e["action"] == "points.adjust"]
    assert [(e["object_type"], e["object_id"], e["role"]) for e in entries] == [
        ("member", str(m), "operator")
    ] * 2
    assert [(e["after"]["points"], e["after"]["reason"]) for e in entries] == [
        (-15, "扣回"),
        (40, "补偿：快递延误"),
    ]
    assert entries[1]["after"]["entry_id"] == first.json()["entry_id"]
    assert all(e["actor"].startswith("key:") for e in entries)
