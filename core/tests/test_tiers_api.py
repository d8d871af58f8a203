"""The tier and entitlement HTTP API, including bad input as problem details."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import time_machine
from tongcrm.tiers import service as tiers
from tongcrm.tiers import testing as kit

NOW = datetime(2026, 3, 10, 4, 0, tzinfo=UTC)


async def _seed(api: Any) -> tuple[int, int]:
    async with api.db.sessions() as s, s.begin():
        a, b = await kit.members(s, 2)
        await kit.order(s, a, 130_000, NOW - timedelta(days=300))
        await kit.order(s, b, 10_000, NOW - timedelta(days=3))
    return a, b


async def test_ladder_lifecycle_member_tier_and_projection(make_client: Any) -> None:
    with time_machine.travel(NOW, tick=False):
        async with make_client() as api:
            missing = await api.get("/api/tiers/ladder")
            assert missing.status_code == 404 and missing.headers["content-type"].startswith(
                "application/problem+json"
            )
            a, b = await _seed(api)

            preview = await api.post("/api/tiers/preview", json={"ladder": kit.LADDER})
            assert preview.status_code == 200, preview.text
            body = preview.json()
            assert body["up"] == 1 and body["down"] == 0
            assert body["moves"] == [
                {"from_tier": "member", "to_tier": "silver", "members": 1, "when": "now"}
            ]

            applied = await api.put("/api/tiers/ladder", json={"ladder": kit.LADDER, "reason": "launch"})
            assert applied.status_code == 201, applied.text
            assert applied.json()["version"] == 1
            assert (await api.get("/api/tiers/ladder")).json()["definition"]["tiers"][1]["code"] == "silver"
            assert [v["version"] for v in (await api.get("/api/tiers/ladder/versions")).json()] == [1]

            # the upgrade pass the apply enqueued
            await tiers.upgrade_all(api.db.sessions, tiers.TierContext(NOW))
            tier = await api.get(f"/api/members/{a}/tier")
            assert tier.status_code == 200, tier.text
            t = tier.json()
            assert t["tier"]["code"] == "silver" and t["review_on"] == "2027-03-10"
            assert {"metric": "spend_fen", "months": 12, "value": 130_000} in t["metrics"]
            assert t["next_tier"]["tier"]["code"] == "gold"
            # the one order is older than 6 months, so it does not count towards the order-count path
            assert t["next_tier"]["message"] == "¥3700 more or 10 orders more to reach Gold"
            # the order of 300 days ago is out of the window on the review day
            assert t["keep"]["safe"] is False
            assert t["keep"]["message"] == "will drop to Member on 2027-03-10 unless ¥1000 more"
            assert {e["kind"] for e in t["entitlements"]} == {"points_multiplier", "birthday_points"}

            other = (await api.get(f"/api/members/{b}/tier")).json()
            assert other["tier"]["code"] == "member" and other["keep"] is None
            assert other["next_tier"]["needs"][0][0]["missing"] == 90_000

            history = (await api.get(f"/api/members/{a}/tier/history")).json()
            assert [(h["from_tier"], h["to_tier"], h["reason"]) for h in history] == [
                ("member", "silver", "upgrade")
            ]


async def test_overrides_over_http(make_client: Any) -> None:
    with time_machine.travel(NOW, tick=False):
        async with make_client() as api:
            a, _ = await _seed(api)
            await api.put("/api/tiers/ladder", json={"ladder": kit.LADDER, "reason": "launch"})
            ok = await api.put(
                f"/api/members/{a}/tier/override",
                json={"tier": "gold", "until": "2026-06-30", "reason": "apology"},
            )
            assert ok.status_code == 200, ok.text
            assert ok.json()["tier"] == "gold"
            t = (await api.get(f"/api/members/{a}/tier")).json()
            assert t["tier"]["code"] == "gold" and t["override"]["reason"] == "apology"
            assert t["held_tier"]["code"] == "member"
            bad = await api.put(
                f"/api/members/{a}/tier/override", json={"tier": "gold", "until": "2026-03-10", "reason": "x"}
            )
            assert bad.status_code == 422 and "beyond today" in bad.json()["detail"]
            unknown = await api.put(
                f"/api/members/{a}/tier/override", json={"tier": "zinc", "until": "2026-06-30", "reason": "x"}
            )
            assert unknown.status_code == 422
            malformed = await api.put(
                f"/api/members/{a}/tier/override", json={"tier": "gold", "until": "soon"}
            )
            assert malformed.status_code == 400
            gone = await api.put(
                "/api/members/999999/tier/override",
                json={"tier": "gold", "until": "2026-06-30", "reason": "x"},
            )
            assert gone.status_code == 404
            cleared = await api.delete(f"/api/members/{a}/tier/override", params={"reason": "resolved"})
            assert cleared.status_code == 204
            assert (
                await api.delete(f"/api/members/{a}/tier/override", params={"reason": "again"})
            ).status_code == 404
            assert (await api.get(f"/api/members/{a}/tier")).json()["tier"]["code"] == "member"


async def test_bad_ladders_are_problems_naming_tier_and_entitlement(make_client: Any) -> None:
    async with make_client() as api:
        unfair = copy.deepcopy(kit.LADDER)
        unfair["tiers"][2]["entitlements"] = [
            e for e in unfair["tiers"][2]["entitlements"] if e["kind"] != "birthday_points"
        ]
        for path, send in (("/api/tiers/preview", api.post), ("/api/tiers/ladder", api.put)):
            refused = await send(path, json={"ladder": unfair, "reason": "oops"})
            assert refused.status_code == 422, refused.text
            problem = refused.json()
            assert "tier 'gold' lacks entitlement 'birthday_points'" in problem["detail"]
            assert problem["tier"] == "gold" and problem["entitlement"] == "birthday_points"
        assert (
            await api.put("/api/tiers/ladder", json={"ladder": kit.LADDER})
        ).status_code == 422  # no reason
        assert (await api.post("/api/tiers/preview", json={"nope": 1})).status_code == 400
        assert (await api.get("/api/members/1/tier")).status_code == 404  # no ladder yet
        assert (await api.get("/api/tiers/ladder")).status_code == 404


async def test_roles(make_client: Any) -> None:
    async with make_client(role="analyst") as api:
        assert (await api.get("/api/entitlements/catalogue")).status_code == 200
        assert (
            await api.put("/api/tiers/ladder", json={"ladder": kit.LADDER, "reason": "x"})
        ).status_code == 403
        assert (await api.post("/api/tiers/preview", json={"ladder": kit.LADDER})).status_code == 200
    async with make_client(role="operator") as api:
        assert (
            await api.put("/api/tiers/ladder", json={"ladder": kit.LADDER, "reason": "x"})
        ).status_code == 403


async def test_member_view_carries_the_tier(make_client: Any) -> None:
    with time_machine.travel(NOW, tick=False):
        async with make_client() as api:
            a, _ = await _seed(api)
            await api.put("/api/tiers/ladder", json={"ladder": kit.LADDER, "reason": "launch"})
            await tiers.upgrade_all(api.db.sessions, tiers.TierContext(NOW))
            view = await api.get(f"/api/members/{a}")
            assert view.status_code == 200, view.text
            assert view.json()["sections"]["tier"]["code"] == "silver"
