"""RFM scores: a hand-checked population (ties at quintile edges, refunds, unpaid orders, the window edge, a
merged member counted once, the Asia/Shanghai day boundary), the incremental run against the last full run's
edges, the channel scope, the API, the 360 view, segments and the CLI."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from tongcrm.cli import Context, build_cli
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.errors import Unprocessable
from tongcrm.jobs.models import Job
from tongcrm.members.models import Member
from tongcrm.orders.models import Order
from tongcrm.plugin.host import PluginHost
from tongcrm.rfm import service
from tongcrm.rfm.models import RfmPolicy, RfmRun, RfmScore
from tongcrm.testing.database import TestDatabase
from tongcrm.tiers import testing as kit

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai on 2026-11-20
AN_HOUR_AGO = datetime.now(UTC) - timedelta(hours=1)


def local(day_offset: int, hour: int, minute: int, second: int = 0, micro: int = 0) -> datetime:
    """A Shanghai wall-clock time ``day_offset`` local days before NOW's local date."""
    day = NOW.astimezone(SH).date() - timedelta(days=day_offset)
    return datetime(day.year, day.month, day.day, hour, minute, second, micro, tzinfo=SH)


async def _population(s: Any) -> list[int]:
    """Ten scored members (m0..m9) and five that are not: see the table in test_full_run_hand_checked."""
    ids = await kit.members(s, 14)
    m = ids
    # m0: one order at local midnight today (0 days); a fully refunded order does not count
    await kit.order(s, m[0], 1_000, local(0, 0, 0))
    await kit.order(s, m[0], 9_000, local(0, 9, 0), refunded_fen=9_000, status="refunded")
    # m1: 23:59 yesterday in Shanghai is 15:59 UTC yesterday: 1 day; an unpaid order does not count
    await kit.order(s, m[1], 1_000, local(1, 23, 59))
    await kit.order(s, m[1], 7_000, local(0, 8, 0), status="created", paid=False)
    await kit.order(s, m[2], 2_000, local(1, 12, 0))
    # half a second after midnight five local days ago: still five days (the fraction is not a day)
    await kit.order(s, m[3], 3_000, local(5, 0, 0, 0, 500_000))
    await kit.order(s, m[4], 4_000, local(10, 12, 0))
    await kit.order(s, m[5], 6_000, local(10, 18, 0), refunded_fen=1_000)  # net 5,000
    for _ in range(2):
        await kit.order(s, m[6], 3_000, local(30, 12, 0))
    await kit.order(s, m[7], 5_000, local(60, 12, 0))
    # m7's second order came with the member merged into m7: the merge moved it; the tombstone is not scored
    moved = await kit.order(s, m[7], 5_000, local(61, 12, 0))
    tomb = m[10]
    (await s.get(Order, moved)).origin_member_id = tomb
    row = await s.get(Member, tomb)
    row.status, row.merged_into_id = "merged", m[7]
    for _ in range(3):
        await kit.order(s, m[8], 1_000, local(100, 12, 0))
    # m9: five orders, the latest 364 local days old (the window's first day); one more 365 days old: outside
    for _ in range(5):
        await kit.order(s, m[9], 2_000, local(364, 0, 0))
    await kit.order(s, m[9], 50_000, local(365, 23, 59))
    await kit.order(s, m[11], 50_000, local(365, 23, 59))  # only outside the window: no score
    # m12: no order; m13: an order after the run's moment does not count yet
    await kit.order(s, m[13], 1_000, NOW + timedelta(minutes=1))
    # every order changed an hour ago: an incremental run after the full one finds only what changes later
    await s.execute(sa.update(Order).values(updated_at=AN_HOUR_AGO))
    return ids


async def _scores(db: TestDatabase) -> dict[int, RfmScore]:
    async with db.sessions() as s:
        return {r.member_id: r for r in (await s.execute(sa.select(RfmScore))).scalars()}


EXPECTED = {
    # index: (days, F, M fen, R, F, M, cell)
    0: (0, 1, 1_000, 5, 1, 1, "general_develop"),
    1: (1, 1, 1_000, 4, 1, 1, "general_develop"),
    2: (1, 1, 2_000, 4, 1, 2, "general_develop"),
    3: (5, 1, 3_000, 4, 1, 2, "general_develop"),
    4: (10, 1, 4_000, 3, 1, 3, "important_develop"),
    5: (10, 1, 5_000, 3, 1, 4, "important_develop"),
    6: (30, 2, 6_000, 2, 4, 4, "important_retain"),
    7: (60, 2, 10_000, 2, 4, 5, "important_retain"),
    8: (100, 3, 3_000, 1, 5, 2, "general_retain"),
    9: (364, 5, 10_000, 1, 5, 5, "important_retain"),
}


async def test_full_run_hand_checked(tongcrm_db: TestDatabase) -> None:
    """By hand, n = 10 and score = 1 + 5 * (members strictly worse) // 10:

    F values 1,1,1,1,1,1,2,2,3,5: the six 1s score 1 together; 2 has 6 below: 4; 3 and 5: 5 (no F of 2 or 3).
    M values 1000,1000,2000,3000,3000,4000,5000,6000,10000,10000: ties share 1, 2 and 5.
    R days 0,1,1,5,10,10,30,60,100,364: 364 and 100 score 1, 60 and 30: 2, the two 10s: 3, 5 and 1: 4, 0: 5.
    Means: R 2.9, F 2.4, M 2.9, so high is R >= 3, F >= 4, M >= 3."""
    async with tongcrm_db.sessions() as s, s.begin():
        ids = await _population(s)
    done = await service.recompute_full(tongcrm_db.sessions, NOW, SH, batch=4)
    got = await _scores(tongcrm_db)
    assert set(got) == {ids[i] for i in EXPECTED}
    for i, (days, f, mon, r_score, f_score, m_score, cell) in EXPECTED.items():
        row = got[ids[i]]
        assert (row.recency_days, row.frequency, row.monetary_fen, row.r, row.f, row.m, row.cell) == (
            days, f, mon, r_score, f_score, m_score, cell,
        ), i  # fmt: skip
        assert row.run_id == done.run_id and row.computed_at == NOW
    assert done.scored == 10
    async with tongcrm_db.sessions() as s:
        run = await s.get(RfmRun, done.run_id)
        assert run is not None and run.kind == "full" and run.finished_at is not None
        assert run.edges == {"r": [60, 10, 5, 0], "f": [2, 2, 2, 3], "m": [2_000, 4_000, 5_000, 10_000]}
        assert run.means == pytest.approx({"r": 2.9, "f": 2.4, "m": 2.9})
    # the Python twins agree with the SQL
    edges, means = service.Edges.of(run.edges), service.Means(**run.means)
    for days, f, mon, r_score, f_score, m_score, cell in EXPECTED.values():
        assert service.score_of(days, edges.r, lower_is_better=True) == r_score
        assert (service.score_of(f, edges.f), service.score_of(mon, edges.m)) == (f_score, m_score)
        assert service.cell_of(r_score, f_score, m_score, means) == cell

    # a second full run later: the latest order of m0 is a day older and everything is re-derived
    again = await service.recompute_full(tongcrm_db.sessions, NOW + timedelta(days=1), SH)
    got = await _scores(tongcrm_db)
    assert got[ids[0]].recency_days == 1 and got[ids[0]].run_id == again.run_id
    assert ids[9] not in got  # its orders left the window


async def test_incremental_rescores_changed_members_against_the_full_runs_edges(
    tongcrm_db: TestDatabase,
) -> None:
    async with tongcrm_db.sessions() as s, s.begin():
        ids = await _population(s)
    full = await service.recompute_full(tongcrm_db.sessions, NOW, SH)
    async with tongcrm_db.sessions() as s, s.begin():
        # m0 buys again: F 2 (score 4 by the old edges), M 7,000 (4), still today (5): important value
        await kit.order(s, ids[0], 6_000, local(0, 10, 0))
        # m2 is merged into m3: its order moves (updated_at changes), its own score row must go
        await s.execute(sa.update(Order).where(Order.member_id == ids[2]).values(member_id=ids[3]))
        await s.execute(
            sa.update(Member).where(Member.id == ids[2]).values(status="merged", merged_into_id=ids[3])
        )
        # m12 buys for the first time, 10 days ago
        await kit.order(s, ids[12], 1_000, local(10, 9, 0))
    done = await service.recompute_incremental(tongcrm_db.sessions, NOW, SH)
    assert done.kind == "incremental" and done.members == 3 and done.scored == 3
    got = await _scores(tongcrm_db)
    assert ids[2] not in got
    m0, m3, m12 = got[ids[0]], got[ids[3]], got[ids[12]]
    assert (m0.frequency, m0.monetary_fen, m0.r, m0.f, m0.m, m0.cell) == (
        2,
        7_000,
        5,
        4,
        4,
        "important_value",
    )
    assert (m3.recency_days, m3.frequency, m3.monetary_fen, m3.r, m3.f, m3.m, m3.cell) == (
        1, 2, 5_000, 4, 4, 4, "important_value",
    )  # fmt: skip
    assert (m12.r, m12.f, m12.m, m12.cell) == (3, 1, 1, "general_develop")
    assert {m0.run_id, m3.run_id, m12.run_id} == {done.run_id}
    assert got[ids[5]].run_id == full.run_id  # untouched members keep the full run's scores
    async with tongcrm_db.sessions() as s:
        run = await s.get(RfmRun, done.run_id)
        assert run is not None and run.edges_run_id == full.run_id
    # changes within MARGIN of the previous run's start are looked at again (a late commit is not missed);
    # once they are older than that and nothing else changed, the next incremental run looks at nobody
    assert (await service.recompute_incremental(tongcrm_db.sessions, NOW, SH)).members == 3
    async with tongcrm_db.sessions() as s, s.begin():
        await s.execute(sa.update(Order).values(updated_at=AN_HOUR_AGO))
        await s.execute(sa.update(RfmRun).values(started_at=datetime.now(UTC) - timedelta(minutes=30)))
    assert (await service.recompute_incremental(tongcrm_db.sessions, NOW, SH)).members == 0


async def test_incremental_without_a_full_run_or_after_a_policy_change_runs_full(
    tongcrm_db: TestDatabase,
) -> None:
    async with tongcrm_db.sessions() as s, s.begin():
        ids = await _population(s)
    first = await service.recompute_incremental(tongcrm_db.sessions, NOW, SH)
    assert first.kind == "full" and first.scored == 10
    async with tongcrm_db.sessions() as s, s.begin():
        # only orders of a channel nobody bought on: nobody is scored
        s.add(RfmPolicy(version=1, window_days=365, channels=["jd"], created_by="test"))
    again = await service.recompute_incremental(tongcrm_db.sessions, NOW, SH)
    assert again.kind == "full" and again.scored == 0
    assert await _scores(tongcrm_db) == {}
    assert ids


async def test_policy_is_checked() -> None:
    assert service.parse_policy({"window_days": 90, "channels": ["jd", "jd"]}, {"jd"}).channels == ("jd",)
    for bad, pointer in (
        ({"window_days": 0}, "/window_days"),
        ({"window_days": True}, "/window_days"),
        ({"channels": "jd"}, "/channels"),
        ({"channels": ["jd", "tmall"]}, "/channels/1"),
        ({"window": 30}, "/window"),
    ):
        with pytest.raises(Unprocessable) as caught:
            service.parse_policy(bad, {"jd"})
        assert caught.value.extra["pointer"] == pointer


async def test_api_360_view_and_segments(make_client: Any) -> None:
    async with make_client(role="admin") as api:
        assert (await api.get("/api/rfm/policy")).json() == {"version": 0, "window_days": 365, "channels": []}
        bad = await api.put("/api/rfm/policy", json={"channels": ["nowhere"]})
        assert bad.status_code == 422 and bad.json()["pointer"] == "/channels/0", bad.text
        async with api.db.sessions() as s, s.begin():
            ids = await _population(s)
        saved = await api.put("/api/rfm/policy", json={"window_days": 365, "channels": ["test"]})
        assert saved.status_code == 200, saved.text
        assert saved.json() == {"version": 1, "window_days": 365, "channels": ["test"]}
        analyst = await api.create_key("analyst")
        denied = await api.post("/api/rfm/recompute", headers={"Authorization": f"Bearer {analyst}"})
        assert denied.status_code == 403
        assert (await api.post("/api/rfm/recompute")).status_code == 202
        async with api.db.sessions() as s:
            queued = (
                (await s.execute(sa.select(Job.payload).where(Job.name == "rfm.recompute"))).scalars().all()
            )
            assert {"full": True, "policy_version": 1} in queued and {"full": True} in queued

        await service.recompute_full(api.db.sessions, NOW, SH)
        one = await api.get(f"/api/rfm/members/{ids[9]}")
        assert one.status_code == 200, one.text
        body = one.json()
        assert (body["r"], body["f"], body["m"], body["cell"], body["cell_name"]) == (
            1, 5, 5, "important_retain", "重要保持客户",
        )  # fmt: skip
        none = await api.get(f"/api/rfm/members/{ids[12]}")
        assert none.status_code == 404 and "no RFM scores" in none.json()["detail"]
        assert (await api.get("/api/rfm/members/999999")).status_code == 404
        view = (await api.get(f"/api/members/{ids[6]}")).json()
        assert view["sections"]["rfm"]["cell"] == "important_retain"
        assert "rfm" not in (await api.get(f"/api/members/{ids[12]}")).json()["sections"]
        cells = (await api.get("/api/rfm/cells")).json()
        assert {c["cell"]: c["members"] for c in cells["cells"]} == {
            "important_value": 0, "important_retain": 3, "important_develop": 2, "important_winback": 0,
            "general_value": 0, "general_retain": 1, "general_develop": 4, "general_winback": 0,
        }  # fmt: skip
        assert cells["last_run_kind"] == "full"

        async def preview(condition: dict[str, Any]) -> Any:
            return await api.post(
                "/api/segments/preview", json={"definition": {"version": 1, "condition": condition}}
            )

        found = await preview(
            {"field": "rfm.cell", "op": "in", "value": ["important_retain", "general_retain"]}
        )
        assert found.status_code == 200, found.text
        assert found.json()["count"] == 4
        found = await preview({"all": [{"field": "rfm.recency", "op": "gte", "value": 4},
                                       {"field": "rfm.monetary", "op": "eq", "value": 2}]})  # fmt: skip
        assert sorted(m["id"] for m in found.json()["sample"]) == sorted([ids[2], ids[3]])
        unscored = await preview({"field": "rfm.frequency", "op": "is_set", "value": False})
        # live members without scores: m10 is a tombstone (in no segment), m11, m12, m13
        assert unscored.json()["count"] == 3
        wrong = await preview({"field": "rfm.recency", "op": "eq", "value": 6})
        assert wrong.status_code == 422 and wrong.json()["pointer"] == "/condition/value"
        wrong = await preview({"field": "rfm.cell", "op": "eq", "value": "555"})
        assert wrong.status_code == 422 and "not one of" in wrong.json()["detail"]


def test_cli_recompute_with_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    monkeypatch.setenv("TONGCRM_DATABASE_URL", url)
    monkeypatch.setenv("TONGCRM_SECRET_KEY", "cli-test-secret-0123456789")
    host = PluginHost(autoload=False)

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(build_cli(host), list(args), obj=Context(host), catch_exceptions=False)

    assert invoke("db", "upgrade").exit_code == 0

    async def seed() -> None:
        engine = create_engine(url)
        try:
            async with session_factory(engine)() as s, s.begin():
                a, b = await kit.members(s, 2)
                await kit.order(s, a, 5_000, datetime.now(UTC) - timedelta(days=3))
                await kit.order(s, b, 9_000, datetime.now(UTC) - timedelta(days=1))
        finally:
            await engine.dispose()

    asyncio.run(seed())
    full = invoke("rfm", "recompute", "--batch", "1")
    assert full.exit_code == 0, full.output
    assert "rfm full run 1: 2 members looked at, 2 scored" in full.output
    incremental = invoke("rfm", "recompute", "--incremental")
    assert incremental.exit_code == 0 and "rfm incremental run 2" in incremental.output
    cells = invoke("rfm", "cells")
    assert "important_value" in cells.output and "重要价值客户" in cells.output


async def test_the_job_runs_full_or_incremental_by_payload(tongcrm_db: TestDatabase) -> None:
    from tongcrm.jobs.registry import load_job_modules
    from tongcrm.jobs.runner import JobContext

    async with tongcrm_db.sessions() as s, s.begin():
        await _population(s)
    handler = load_job_modules().handlers["rfm.recompute"]
    ctx = JobContext(tongcrm_db.sessions, PluginHost(autoload=False), lambda: NOW, job_id=1, attempt=1)
    await handler(ctx, {"full": False})  # no full run yet: it runs full
    await handler(ctx, {"full": False})
    await handler(ctx, {"full": True})
    async with tongcrm_db.sessions() as s:
        runs = (await s.execute(sa.select(RfmRun.kind, RfmRun.members).order_by(RfmRun.id))).all()
    assert [r.kind for r in runs] == ["full", "incremental", "full"]
    assert runs[0].members == 10 and runs[2].members == 10
