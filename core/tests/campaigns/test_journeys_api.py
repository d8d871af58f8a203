"""The journeys API and the campaign benefit fields, on both databases: create (201), refusals (422 with the
reason), list, one, pause and resume (409 when already so), the report; analysts read but never write. A journey
triggered through the outbox reaches its member's message end to end."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from campaign_kit import CAMPAIGN, segment_of, tag
from messaging_kit import SECRET_KEY, Clock, World, sms_host
from tongcrm.config import Settings
from tongcrm.jobs.outbox import emit
from tongcrm.testing.database import TestDatabase

JOURNEY: dict[str, Any] = {
    "name": "welcome-back",
    "trigger": {"kind": "lifecycle_changed", "to": "dormant"},
    "steps": {"wait_hours": 0, "condition": "vip", "then": {"template": "promo", "points": 20}, "else": None},
    "response": {"kind": "order", "within_days": 14},
    "control_percent": 0,
    "budget_points": 1000,
}


@pytest.mark.asyncio
async def test_journeys_over_http(tongcrm_db: TestDatabase, make_client: Callable[..., Any]) -> None:
    host = sms_host()
    clock = Clock(datetime.now(UTC))
    async with make_client(host=host, role="admin") as api:
        w = World(
            api.db.sessions, Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault(), host, clock
        )
        await w.setup("http://127.0.0.1:9")
        members = [await w.member(i) for i in range(2)]
        await tag(w, members[:1])
        assert (
            await api.post("/api/segments", json={"name": "vip", "definition": segment_of("vip")})
        ).status_code == 201
        created = await api.post("/api/journeys", json=JOURNEY)
        assert created.status_code == 201, created.text
        assert created.json()["status"] == "active" and created.json()["steps"]["then"]["points"] == 20
        again = await api.post("/api/journeys", json=JOURNEY)
        assert again.status_code == 409
        bad = await api.post("/api/journeys", json={**JOURNEY, "name": "x", "trigger": {"kind": "tier_changed",
                                                                                      "direction": "sideways"}})  # fmt: skip
        assert bad.status_code == 422 and "direction" in bad.text
        negative = await api.post("/api/journeys", json={**JOURNEY, "name": "y", "budget_points": -1})
        assert negative.status_code == 400
        assert [j["name"] for j in (await api.get("/api/journeys")).json()] == ["welcome-back"]
        assert (await api.post("/api/journeys/welcome-back/pause")).json()["status"] == "paused"
        assert (await api.post("/api/journeys/welcome-back/pause")).status_code == 409
        assert (await api.post("/api/journeys/welcome-back/resume")).json()["status"] == "active"
        assert (await api.get("/api/journeys/nope")).status_code == 404

        async with w.sessions() as session, session.begin():
            for m in members:
                emit(session, "lifecycle_changed", {"member_id": m, "from": "repeat", "to": "dormant"})
        for _ in range(3):
            await w.drain(w.runner(), rounds=20)
        one = (await api.get("/api/journeys/welcome-back")).json()
        assert one["participants"] == {"done": 2}
        report = (await api.get("/api/journeys/welcome-back/report")).json()
        assert report["branches"] == {"then": 1, "else": 1} and report["total"]["points_granted"] == 20
        assert [m.member_id for m in await w.messages(flow="journey.welcome-back")] == members[:1]

        benefit = await api.post(
            "/api/campaigns", json={**CAMPAIGN, "benefit_points": 50, "budget_points": 500}
        )
        assert benefit.status_code == 201, benefit.text
        assert (benefit.json()["benefit_points"], benefit.json()["budget_points"]) == (50, 500)
    async with make_client(host=host, role="analyst") as analyst:
        assert (await analyst.get("/api/journeys/welcome-back/report")).status_code == 200
        assert (await analyst.post("/api/journeys/welcome-back/pause")).status_code == 403
        assert (await analyst.post("/api/journeys", json={**JOURNEY, "name": "z"})).status_code == 403
