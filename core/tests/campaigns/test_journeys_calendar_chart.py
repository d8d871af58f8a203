"""Journeys on the calendar and as a chart, on both databases: each journey once on the first day of the range it
is active, a day-triggered journey on each day it scanned and each day it will scan (none once paused), an
event-triggered one without scans; ``GET /api/journeys/{name}/report.svg`` draws the report."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from campaign_kit import segment_of
from messaging_kit import SECRET_KEY, Clock, World, sms_host
from tongcrm.audit.service import SYSTEM
from tongcrm.campaigns import journeys
from tongcrm.campaigns.models import Journey
from tongcrm.config import Settings
from tongcrm.testing.database import TestDatabase

SH = ZoneInfo("Asia/Shanghai")
RESPONSE = {"kind": "order", "within_days": 7}
STEPS = {"wait_hours": 0, "condition": None, "then": {"template": "promo", "points": 0}, "else": None}


@pytest.mark.asyncio
async def test_journeys_on_the_calendar_and_as_a_chart(
    tongcrm_db: TestDatabase, make_client: Callable[..., Any]
) -> None:
    # created 23:30 on 9 March in Shanghai (15:30 UTC): the journey's first day is the 9th, not the 10th
    created = datetime(2026, 3, 9, 15, 30, tzinfo=UTC)
    host = sms_host()
    async with make_client(host=host, role="admin") as api:
        w = World(
            api.db.sessions, Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault(), host,
            Clock(created),
        )  # fmt: skip
        await w.setup("http://127.0.0.1:9")
        assert (
            await api.post("/api/segments", json={"name": "vip", "definition": segment_of("vip")})
        ).status_code == 201
        async with w.sessions() as session, session.begin():
            for name, trigger in (
                ("birthdays", {"kind": "birthday"}),
                ("welcome", {"kind": "first_order"}),
                ("sleepy", {"kind": "days_after_last_order", "days": 30}),
            ):
                draft = journeys.Draft(name, trigger, STEPS, RESPONSE, control_percent=10)
                await journeys.create(session, draft, SYSTEM, now=created)
            await session.execute(
                sa.update(Journey).where(Journey.name == "birthdays").values(scanned_on=date(2026, 3, 11))
            )
            await journeys.set_status(session, SYSTEM, "sleepy", "paused", now=created)
        got = await api.get("/api/calendar?from=2026-03-08&to=2026-03-13")
        assert got.status_code == 200, got.text
        entries = [e for e in got.json()["entries"] if e["journey"]]
        by = {(e["journey"], e["kind"]): [x["day"] for x in entries if (x["journey"], x["kind"]) == (e["journey"], e["kind"])] for e in entries}  # fmt: skip
        assert by == {
            ("birthdays", "journey"): ["2026-03-09"],
            ("birthdays", "journey_scan"): ["2026-03-09", "2026-03-10", "2026-03-11"],
            ("birthdays", "planned_scan"): ["2026-03-12", "2026-03-13"],
            ("welcome", "journey"): ["2026-03-09"],
            ("sleepy", "journey"): ["2026-03-09"],
        }
        first = next(e for e in entries if e["journey"] == "birthdays" and e["kind"] == "journey")
        assert first["status"] == "active" and first["detail"] == "trigger birthday, active since 2026-03-09"
        paused = next(e for e in entries if e["journey"] == "sleepy")
        assert paused["status"] == "paused" and "paused" in paused["detail"]
        # a range starting after the creation day shows the journey on its first day
        later = (await api.get("/api/calendar?from=2026-03-12&to=2026-03-12")).json()["entries"]
        assert sorted((e["journey"], e["kind"]) for e in later) == [
            ("birthdays", "journey"), ("birthdays", "planned_scan"), ("sleepy", "journey"), ("welcome", "journey"),
        ]  # fmt: skip
        # before the journeys existed: nothing of them
        assert (await api.get("/api/calendar?from=2026-03-01&to=2026-03-08")).json()["entries"] == []

        svg = await api.get("/api/journeys/birthdays/report.svg")
        assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
        assert svg.text.startswith("<svg") and "birthdays: response rate" in svg.text
        assert "all participants" in svg.text and "too small" in svg.text
        assert (await api.get("/api/journeys/nope/report.svg")).status_code == 404
