"""The calendar on both databases: runs that happened, planned runs from the schedules, marked days, care flows,
and clashes (two campaigns to the same segment on one local day)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from campaign_kit import CAMPAIGN, segment_of, tag
from messaging_kit import SECRET_KEY, Clock, World, fake_gateway, sms_host
from tongcrm.campaigns import service
from tongcrm.config import Settings
from tongcrm.messaging import flows
from tongcrm.testing.database import TestDatabase

SH = ZoneInfo("Asia/Shanghai")


@pytest.mark.asyncio
async def test_calendar_runs_plans_marks_and_clashes(
    tongcrm_db: TestDatabase, make_client: Callable[..., Any]
) -> None:
    today = datetime.now(UTC).astimezone(SH).date()
    first, last = today + timedelta(days=1), today + timedelta(days=14)
    clock = Clock(datetime.now(UTC))
    host = sms_host()
    async with make_client(host=host, role="admin") as api:
        w = World(
            api.db.sessions, Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault(), host, clock
        )
        with fake_gateway(clock) as (_fake, url):
            await w.setup(url)
        members = [await w.member(i) for i in range(4)]
        await tag(w, members[:2], "vip")
        await tag(w, members[2:], "new")
        for name in ("vip", "new"):
            assert (
                await api.post("/api/segments", json={"name": name, "definition": segment_of(name)})
            ).status_code == 201
        plans = {
            "daily-vip": ("vip", {"kind": "daily", "time": "10:00", "from": first.isoformat()}),
            "weekly-vip": (
                "vip",
                {"kind": "weekly", "time": "11:00", "weekdays": [3], "from": first.isoformat()},
            ),
            "daily-new": ("new", {"kind": "daily", "time": "10:00", "from": first.isoformat()}),
        }
        for name, (segment, schedule) in plans.items():
            made = await api.post("/api/campaigns", json={**CAMPAIGN, "name": name, "segment": segment})
            assert made.status_code == 201, made.text
            done = await api.post(f"/api/campaigns/{name}/schedule", json={"schedule": schedule})
            assert done.status_code == 200, done.text
        # the first daily runs happen (time machine to their moment: both daily campaigns are due)
        async with api.db.sessions() as session:
            due = (await service.get(session, "daily-vip")).next_run_at
        assert due is not None
        assert len(await service.run_due(api.db.sessions, host, now=due, tz=SH)) == 2

        mark = await api.post(
            "/api/calendar/marks",
            json={"on": (first + timedelta(days=2)).isoformat(), "name": "会员日", "kind": "member_day"},
        )
        assert mark.status_code == 201, mark.text
        dup = await api.post(
            "/api/calendar/marks",
            json={"on": (first + timedelta(days=2)).isoformat(), "name": "会员日", "kind": "member_day"},
        )
        assert dup.status_code == 409
        bad = await api.post(
            "/api/calendar/marks", json={"on": first.isoformat(), "name": "x", "kind": "party"}
        )
        assert bad.status_code == 422 and "unknown" in bad.json()["detail"]

        got = await api.get(f"/api/calendar?from={first.isoformat()}&to={last.isoformat()}")
        assert got.status_code == 200, got.text
        cal = got.json()
        entries = cal["entries"]
        assert cal["timezone"] == "Asia/Shanghai"
        assert cal["care_flows"] == sorted(flows.FLOWS)
        days = [first + timedelta(days=i) for i in range(14)]
        wednesdays = [d for d in days if d.isoweekday() == 3]
        happened = [e for e in entries if e["kind"] == "run"]
        assert sorted((e["campaign"], e["day"], e["status"]) for e in happened) == [
            ("daily-new", first.isoformat(), "queued"),
            ("daily-vip", first.isoformat(), "queued"),
        ]
        planned = [(e["campaign"], e["day"]) for e in entries if e["kind"] == "planned_run"]
        assert sorted(d for c, d in planned if c == "daily-vip") == [d.isoformat() for d in days[1:]]
        assert sorted(d for c, d in planned if c == "daily-new") == [d.isoformat() for d in days[1:]]
        assert sorted(d for c, d in planned if c == "weekly-vip") == [d.isoformat() for d in wednesdays]
        assert [(e["name"], e["status"]) for e in entries if e["kind"] == "mark"] == [
            ("会员日", "member_day")
        ]
        # same segment, same day: daily-vip and weekly-vip on Wednesdays; daily-new has its own audience
        assert [(c["day"], c["campaigns"]) for c in cal["clashes"]] == [
            (d.isoformat(), ["daily-vip", "weekly-vip"]) for d in wednesdays
        ]
        assert [e["day"] for e in entries] == sorted(e["day"] for e in entries)

        assert (
            await api.get(f"/api/calendar?from={last.isoformat()}&to={first.isoformat()}")
        ).status_code == 422
        too_long = await api.get(
            f"/api/calendar?from={first.isoformat()}&to={(first + timedelta(days=400)).isoformat()}"
        )
        assert too_long.status_code == 422 and "366" in too_long.json()["detail"]
        assert (await api.delete(f"/api/calendar/marks/{mark.json()['id']}")).status_code == 204
        again = (await api.get(f"/api/calendar?from={first.isoformat()}&to={last.isoformat()}")).json()
        assert [e for e in again["entries"] if e["kind"] == "mark"] == []
        assert isinstance(date.fromisoformat(again["start"]), date)
