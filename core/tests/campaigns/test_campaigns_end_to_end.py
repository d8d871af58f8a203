"""End to end on both databases: segment → campaign → messages through the SMS fake → orders → report, and
the refusals (nothing queued) with their reasons."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any
from xml.etree import ElementTree
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from campaign_kit import CAMPAIGN, segment_of, tag
from messaging_kit import SECRET_KEY, Clock, World, fake_gateway, sms_host
from tongcrm.campaigns import control, service
from tongcrm.config import Settings
from tongcrm.messaging.models import Message, MessageTemplate
from tongcrm.testing.database import TestDatabase

SH = ZoneInfo("Asia/Shanghai")


def next_beijing_ten(after: datetime) -> datetime:
    """The first 10:00 in Shanghai after ``after``: inside the default marketing window."""
    local = after.astimezone(SH)
    moment = datetime.combine(local.date(), time(10), tzinfo=SH)
    if moment <= local:
        moment += timedelta(days=1)
    return moment.astimezone(UTC)


@pytest.mark.asyncio
async def test_segment_campaign_messages_orders_report(
    tongcrm_db: TestDatabase, make_client: Callable[..., Any]
) -> None:
    run_at = next_beijing_ten(datetime.now(UTC) + timedelta(minutes=10))
    clock = Clock(run_at - timedelta(minutes=5))
    host = sms_host()
    async with make_client(host=host, role="admin") as api:
        w = World(
            api.db.sessions, Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault(), host, clock
        )
        with fake_gateway(clock) as (fake, url):
            await w.setup(url)
            consenting = [await w.member(i) for i in range(160)]
            silent = [await w.member(500 + i, marketing=False) for i in range(10)]
            outsider = await w.member(900)
            await tag(w, consenting + silent)
            seg = await api.post("/api/segments", json={"name": "vip", "definition": segment_of("vip")})
            assert seg.status_code == 201, seg.text
            created = await api.post("/api/campaigns", json=CAMPAIGN)
            assert created.status_code == 201, created.text
            campaign_id = created.json()["id"]
            assert created.json()["status"] == "draft" and created.json()["control_percent"] == 25

            schedule = {"schedule": {"kind": "once", "at": run_at.isoformat()}}
            done = await api.post("/api/campaigns/spring/schedule", json=schedule)
            assert done.status_code == 200, done.text
            assert done.json()["status"] == "scheduled"
            assert datetime.fromisoformat(done.json()["next_run_at"]) == run_at

            clock.now = run_at
            sessions = api.db.sessions
            assert await service.run_due(sessions, host, now=clock(), tz=SH) != []
            assert await service.run_due(sessions, host, now=clock(), tz=SH) == []  # once: no second run
            await w.dispatcher().run()

        audience = consenting + silent
        held = set(control.split(campaign_id, audience, 2500, "2026"))
        treated_ok = [m for m in consenting if m not in held]
        control_ok = [m for m in consenting if m in held]
        assert treated_ok and len(control_ok) >= 30
        messages = await w.messages(flow="campaign.spring")
        assert sorted(m.member_id for m in messages) == sorted(audience)  # one each, the outsider none
        assert {m.member_id for m in messages if m.held_out} == held
        assert len(fake.accepted) == len(treated_ok)
        assert outsider not in {m.member_id for m in messages}

        # orders: 40 treated respond (one of them twice), 4 control; one too small; the outsider and a silent
        # member (not eligible) buy too
        clock.advance(days=1)
        for i, m in enumerate(treated_ok[:40]):
            await w.order(m, f"t{i}", status="paid", paid_fen=9900)
        await w.order(treated_ok[0], "t-again", status="completed", paid_fen=20000)
        await w.order(treated_ok[40], "t-small", status="paid", paid_fen=1000)
        await w.order(treated_ok[41], "t-closed", status="closed", paid_fen=9900)
        for i, m in enumerate(control_ok[:4]):
            await w.order(m, f"c{i}", status="paid", paid_fen=9900)
        await w.order(outsider, "o", status="paid", paid_fen=9900)
        await w.order(silent[0], "s", status="paid", paid_fen=9900)

        report = await api.get("/api/campaigns/spring/report")
        assert report.status_code == 200, report.text
        total = report.json()["total"]
        assert report.json()["interval"] == "newcombe-95" and len(report.json()["runs"]) == 1
        assert total["audience"] == len(audience) and total["control"] == len(held)
        assert (total["sent"], total["failed"], total["pending"]) == (len(treated_ok), 0, 0)
        assert total["refused"] == {"no_consent": len(silent)}
        assert total["treated"] == {
            "eligible": len(treated_ok),
            "responders": 40,
            "response_rate": 40 / len(treated_ok),
            "orders": 41,
            "revenue_fen": 40 * 9900 + 20000,
        }
        assert total["control_group"]["eligible"] == len(control_ok)
        assert (total["control_group"]["responders"], total["control_group"]["orders"]) == (4, 4)
        p_t, p_c = 40 / len(treated_ok), 4 / len(control_ok)
        assert total["uplift"] == pytest.approx(p_t - p_c)
        assert total["uplift_low"] < p_t - p_c < total["uplift_high"]
        assert total["relative_uplift"] == pytest.approx((p_t - p_c) / p_c)
        inc = (41 / len(treated_ok) - 4 / len(control_ok)) * len(treated_ok)
        assert total["incremental_orders"] == pytest.approx(round(inc, 2))
        assert total["cost_fen"] == len(treated_ok) * 5
        assert total["cost_per_incremental_order_fen"] == round(len(treated_ok) * 5 / round(inc, 2))
        assert total["too_small"] is None or "expected" in total["too_small"]

        # the report refreshes as orders arrive
        await w.order(control_ok[10], "c-late", status="paid", paid_fen=9900)
        again = (await api.get("/api/campaigns/spring/report")).json()["total"]
        assert again["control_group"]["responders"] == 5

        svg = await api.get("/api/campaigns/spring/report.svg")
        assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
        assert svg.text.startswith("<svg") and "spring" in svg.text and "total" in svg.text
        _assert_chart_legible(svg.text)

        runs = (await api.get("/api/campaigns/spring/runs")).json()
        assert [(r["status"], r["audience"], r["control"]) for r in runs] == [
            ("queued", len(audience), len(held))
        ]
        assert (await api.get("/api/campaigns/spring")).json()["status"] == "running"
        clock.advance(days=7)
        await service.run_due(api.db.sessions, host, now=clock(), tz=SH)
        assert (await api.get("/api/campaigns/spring")).json()["status"] == "finished"
        # its run is over too: it used to say queued for good, nothing moved it after its start
        runs = (await api.get("/api/campaigns/spring/runs")).json()
        assert [(r["status"], r["audience"], r["control"]) for r in runs] == [
            ("finished", len(audience), len(held))
        ]
        assert (runs[0]["reason"], runs[0]["reason_code"], runs[0]["reason_params"]) == ("", None, None)
        # a finished run's figures are read as before, and it still counts against the budgets
        final = (await api.get("/api/campaigns/spring/report")).json()
        assert final["runs"][0]["run"]["status"] == "finished"
        assert (
            final["total"]["sent"] == len(treated_ok) and final["total"]["control_group"]["responders"] == 5
        )
        assert "run 1" in (await api.get("/api/campaigns/spring/report.svg")).text
        audit = (await api.get("/api/audit?object_type=campaign")).json()
        actions = [e["action"] for e in (audit["items"] if isinstance(audit, dict) else audit)]
        assert {"campaign.create", "campaign.schedule", "campaign.run", "campaign.finish"} <= set(actions)


@pytest.mark.asyncio
async def test_bad_input_is_refused_with_the_reason_and_nothing_is_sent(
    tongcrm_db: TestDatabase, make_client: Callable[..., Any]
) -> None:
    clock = Clock(datetime.now(UTC))
    host = sms_host()
    async with make_client(host=host, role="admin") as api:
        w = World(
            api.db.sessions, Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault(), host, clock
        )
        with fake_gateway(clock) as (_fake, url):
            await w.setup(url)
        vip = [await w.member(i) for i in range(20)]
        await tag(w, vip)
        for name, value in (("vip", "vip"), ("nobody", "no-such-tag")):
            made = await api.post("/api/segments", json={"name": name, "definition": segment_of(value)})
            assert made.status_code == 201, made.text

        async def refused(path: str, body: dict[str, Any], says: str, status: int = 422) -> None:
            response = await api.post(path, json=body)
            assert response.status_code == status, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert says in response.json()["detail"], response.json()

        await refused("/api/campaigns", {**CAMPAIGN, "control_percent": 60}, "between 0 and 50")
        await refused("/api/campaigns", {**CAMPAIGN, "control_percent": -1}, "between 0 and 50")
        await refused(
            "/api/campaigns", {**CAMPAIGN, "template": "order_notice"}, "a campaign sends marketing"
        )
        await refused("/api/campaigns", {**CAMPAIGN, "response": {"kind": "order"}}, "within_days")
        await refused(
            "/api/campaigns", {**CAMPAIGN, "response": {"kind": "visit", "within_days": 3}}, "unknown"
        )
        await refused("/api/campaigns", {**CAMPAIGN, "segment": "missing"}, "no segment", 404)
        # a marketing template whose text lost its opt-out wording (saved before the rule, or edited in place)
        async with w.sessions() as session, session.begin():
            await session.execute(
                sa.update(MessageTemplate)
                .where(MessageTemplate.name == "promo")
                .values(text="618大促全场五折")
            )
        await refused("/api/campaigns", CAMPAIGN, "opt-out wording")
        async with w.sessions() as session, session.begin():
            await session.execute(
                sa.update(MessageTemplate)
                .where(MessageTemplate.name == "promo")
                .values(text="618大促全场五折，拒收请回复R")
            )
        assert (await api.post("/api/campaigns", json=CAMPAIGN)).status_code == 201
        await refused("/api/campaigns", CAMPAIGN, "already exists", 409)
        empty = await api.post("/api/campaigns", json={**CAMPAIGN, "name": "empty", "segment": "nobody"})
        tight = await api.post("/api/campaigns", json={**CAMPAIGN, "name": "tight", "budget_messages": 5})
        assert empty.status_code == tight.status_code == 201

        future = {"kind": "once", "at": (datetime.now(UTC) + timedelta(days=1)).isoformat()}
        past_at = datetime(2020, 1, 1, 2, 0, tzinfo=UTC)
        past = {"kind": "once", "at": past_at.isoformat()}
        await refused("/api/campaigns/spring/schedule", {"schedule": past}, "in the past")
        # in the programme's zone, to the minute, as typed (not UTC with microseconds)
        await refused("/api/campaigns/spring/schedule", {"schedule": past}, "(2020-01-01 10:00 is before now")
        await refused("/api/campaigns/spring/schedule", {"schedule": past}, ", Asia/Shanghai)")
        await refused("/api/campaigns/spring/schedule", {"schedule": {"kind": "daily"}}, "'time'")
        await refused("/api/campaigns/empty/schedule", {"schedule": future}, "audience is empty")
        await refused("/api/campaigns/tight/schedule", {"schedule": future}, "budget exceeded")
        for name in ("spring", "empty", "tight"):
            assert (await api.get(f"/api/campaigns/{name}")).json()["status"] == "draft"
        assert await w.messages() == []
        cancelled = await api.post("/api/campaigns/spring/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        await refused("/api/campaigns/spring/cancel", {}, "already cancelled", 409)
        await refused("/api/campaigns/spring/schedule", {"schedule": future}, "cancelled", 409)

    async with api.db.sessions() as session:
        assert (await session.execute(sa.select(sa.func.count()).select_from(Message))).scalar_one() == 0


@pytest.mark.asyncio
async def test_a_refused_run_answers_its_reason_code_and_figures(
    tongcrm_db: TestDatabase, make_client: Callable[..., Any]
) -> None:
    """``GET /api/campaigns/{name}/runs`` carries what the console's campaign page words a refusal from
    (``reason_code``, ``reason_params``) beside the English ``reason``, null for a run that was not refused."""
    clock = Clock(datetime.now(UTC))
    host = sms_host()
    async with make_client(host=host, role="admin") as api:
        w = World(
            api.db.sessions, Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault(), host, clock
        )
        await w.setup("http://127.0.0.1:9")
        await tag(w, [await w.member(i) for i in range(10)])
        made = await api.post("/api/segments", json={"name": "vip", "definition": segment_of("vip")})
        assert made.status_code == 201, made.text
        body = {**CAMPAIGN, "name": "daily", "control_percent": 0, "budget_messages": 15}  # one run of 10
        assert (await api.post("/api/campaigns", json=body)).status_code == 201
        scheduled = await api.post(
            "/api/campaigns/daily/schedule", json={"schedule": {"kind": "daily", "time": "10:30"}}
        )
        assert scheduled.status_code == 200, scheduled.text
        for _ in range(2):
            due = (await api.get("/api/campaigns/daily")).json()["next_run_at"]
            clock.now = datetime.fromisoformat(due)
            await service.run_due(api.db.sessions, host, now=clock(), tz=SH)
        runs = (await api.get("/api/campaigns/daily/runs")).json()
        assert [(r["status"], r["audience"]) for r in runs][1] == ("refused", 10) and len(runs) == 2
        assert (runs[0]["reason_code"], runs[0]["reason_params"]) == (None, None)
        assert runs[1]["reason"].startswith("budget exceeded")  # the English text stays
        assert (runs[1]["reason_code"], runs[1]["reason_params"]) == (
            "campaign.over_budget_messages",
            {"treated": 10, "left": 5, "budget": 15},
        )
        report = (await api.get("/api/campaigns/daily/report")).json()
        assert report["runs"][1]["run"]["reason_code"] == "campaign.over_budget_messages"


def _assert_chart_legible(svg: str) -> None:
    """The legend has its own row under the title, above every rate written over a bar (it was drawn over the
    tallest bars' rates), and the drawing is wide enough for its title (which was cut off at its edge)."""
    root = ElementTree.fromstring(svg)  # noqa: S314 - our own server's drawing
    texts = [(float(t.get("y", "0")), t.text or "") for t in root.iter("{http://www.w3.org/2000/svg}text")]
    legend_y = max(y for y, text in texts if text in ("treated", "control"))
    rates = [y for y, text in texts if text.endswith("%")]
    assert rates and min(rates) - 10 >= legend_y, texts
    title = texts[0][1]
    assert "treated vs control" in title
    assert float(root.get("width", "0")) >= 20 + len(title) * 13 * 0.6
