"""The member 360 view carries a ``points`` block: balance, the points expiring soon and the newest entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from points_helpers import make_members


async def _adjust(
    api: Any, member_id: int, key: str, points: int, expires_at: datetime | None = None
) -> None:
    body: dict[str, Any] = {"points": points, "reason": f"gift {key}"}
    if expires_at is not None:
        body["expires_at"] = expires_at.isoformat()
    r = await api.post(
        f"/api/members/{member_id}/points/adjustments", json=body, headers={"Idempotency-Key": key}
    )
    assert r.status_code == 201, r.text


async def test_member_view_has_a_points_block(make_client: Any) -> None:
    async with make_client(role="operator") as api:
        async with api.db.sessions() as s, s.begin():
            m, quiet = await make_members(s, 2)
        soon = datetime.now(UTC) + timedelta(days=10)
        later = datetime.now(UTC) + timedelta(days=20)
        await _adjust(api, m, "a", 100, soon)
        await _adjust(api, m, "b", 20, soon)
        await _adjust(api, m, "c", 40, later)
        await _adjust(api, m, "d", 50, datetime.now(UTC) + timedelta(days=90))  # not soon
        await _adjust(api, m, "e", 7)  # never expires
        redeemed = await api.post(
            f"/api/members/{m}/points/redemptions", json={"points": 30}, headers={"Idempotency-Key": "r"}
        )
        assert redeemed.status_code == 201, redeemed.text
        view = await api.get(f"/api/members/{m}")
        assert view.status_code == 200, view.text
        points = view.json()["sections"]["points"]
        assert {k: points[k] for k in ("available", "pending", "debt", "owed")} == {
            "available": 187,
            "pending": 0,
            "debt": 0,
            "owed": 0,
        }
        # the redemption drew on the soonest-expiring points first: 90 of the 120 due in 10 days are left
        expiring = points["expiring_soon"]
        assert expiring["within_days"] == 30 and expiring["points"] == 130
        assert [d["points"] for d in expiring["by_date"]] == [90, 40]
        assert datetime.fromisoformat(expiring["by_date"][0]["expires_at"]) < datetime.fromisoformat(
            expiring["by_date"][1]["expires_at"]
        )
        assert [(e["kind"], e["amount"]) for e in points["recent_entries"]] == [
            ("redeem", -30),
            ("adjust", 7),
            ("adjust", 50),
            ("adjust", 40),
            ("adjust", 20),
        ]
        empty = (await api.get(f"/api/members/{quiet}")).json()["sections"]["points"]
        assert empty["available"] == 0 and empty["expiring_soon"]["points"] == 0
        assert empty["recent_entries"] == []
