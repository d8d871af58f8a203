"""The campaign benchmark of issue #20 on PostgreSQL, on the generated base of :mod:`audience_seed` (the audience
benchmark's 1M members / 5M orders; ``TONGCRM_BENCH_MEMBERS``, kept and reused in the database
``TONGCRM_BENCH_CAMPAIGN_POSTGRES_URL``, default ``bench_campaigns`` on the server of
``TONGCRM_TEST_POSTGRES_URL``; two people benchmarking on one server each name their own database there).

- Freeze and enqueue: one campaign run to a segment holding every member — the audience frozen and the control
  group drawn by one ``INSERT … SELECT``, the first page of messages written by another, all in one transaction
  (aim: 30 s for 1,000,000 members), next to the segment's own count in the same run (the segment query is part
  of the freeze: this one counts each member's orders). The rest of the send log is then written page by page
  by the feed the dispatcher calls (:mod:`tongcrm.campaigns.feed`), timed apart: a cost paid while sending;
- evaluation: the report over that run (the messages marked sent or held out first, as the dispatcher would)
  against 5,000,000 orders, next to a plain scan of the same tables in the same run (``count(*)`` of members
  and ``count(*), sum(paid_fen)`` of orders), in alternating turns (aim: 5 s).

The run, its audience and its messages are deleted afterwards, so the kept seed stays as generated.

Run: ``python -m pytest tests/benchmarks/test_campaign_bench.py --benchmark-enable --benchmark-only -s``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from tongcrm.audit.service import SYSTEM
from tongcrm.campaigns import evaluation, feed, service
from tongcrm.campaigns.models import Campaign, CampaignAudience, CampaignRun
from tongcrm.config import Settings
from tongcrm.db.engine import create_engine, session_factory
from tongcrm.messaging import service as messaging
from tongcrm.messaging.models import Message
from tongcrm.plugin.host import PluginHost
from tongcrm.segments import service as segments

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import audience_seed  # noqa: E402

MEMBERS = int(os.environ.get("TONGCRM_BENCH_MEMBERS", "1000000"))
ROUNDS = int(os.environ.get("TONGCRM_BENCH_ROUNDS", "3"))
TZ = ZoneInfo("Asia/Shanghai")
#: Nobody has a thousand orders: the segment holds every live member.
EVERYONE = {"version": 1, "condition": {"not": {"field": "orders.count", "op": "gte", "value": 1000}}}


def _postgres_url() -> str | None:
    return audience_seed.bench_postgres_url("TONGCRM_BENCH_CAMPAIGN_POSTGRES_URL", "bench_campaigns")


@pytest.fixture(scope="module")
def bench_db() -> str:
    url = _postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server named (TONGCRM_TEST_POSTGRES_URL)")
    asyncio.run(audience_seed.create_database(url))
    took = asyncio.run(audience_seed.seed(url, MEMBERS, progress=lambda line: print(f"  seed {line}")))
    how = "reused" if took is None else f"seeded in {took:.0f}s"
    print(f"\n{MEMBERS} members, {MEMBERS * audience_seed.ORDERS_PER_MEMBER} orders on postgresql: {how}")
    return url


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} cores"


async def _campaign(sessions: Any, host: PluginHost, name: str) -> Campaign:
    """A campaign to every member (its account, template and segment made on the first run and reused)."""
    settings = Settings(database_url="unused", secret_key="bench-secret-0123456789abcdef")
    async with sessions() as session, session.begin():
        try:
            await messaging.get_template(session, "bench_promo")
        except Exception:
            await messaging.create_account(
                session, host, settings.vault(), "aliyun_sms", "bench_sms",
                {"access_key_id": "k", "access_key_secret": "s", "endpoint": "http://127.0.0.1:9/"},
            )  # fmt: skip
            await messaging.create_template(
                session, name="bench_promo", account="bench_sms", purpose="marketing", signature="通通会员",
                template_code="SMS_1", text="双11会员专享，拒收请回复R",
            )  # fmt: skip
            context = await segments.load_context(session, host, audience_seed.NOW)
            await segments.save(session, context, "bench-everyone", EVERYONE, SYSTEM)
        draft = service.Draft(
            name, "bench-everyone", "bench_promo", {"kind": "order", "within_days": 7}, control_percent=10,
            control_seed="bench", message_cost_fen=5,
        )  # fmt: skip
        return await service.create(session, draft, SYSTEM)


async def _clean(engine: Any, campaign_id: int, flow: str) -> None:
    async with engine.begin() as conn:
        runs = sa.select(CampaignRun.id).where(CampaignRun.campaign_id == campaign_id)
        await conn.execute(sa.delete(Message).where(Message.flow == flow))
        await conn.execute(sa.delete(CampaignAudience).where(CampaignAudience.run_id.in_(runs)))
        await conn.execute(sa.delete(CampaignRun).where(CampaignRun.campaign_id == campaign_id))


def test_freeze_enqueue_and_evaluate_a_million(benchmark: Any, bench_db: str, report_figure: Any) -> None:
    host = PluginHost(autoload=True, disabled=set())

    async def measure() -> dict[str, Any]:
        engine = create_engine(bench_db)
        sessions = session_factory(engine)
        out: dict[str, Any] = {}
        try:
            campaign = await _campaign(sessions, host, f"bench-{int(time.time())}")
            flow = service.flow_of(campaign)
            # the run started a week before the seed's NOW, so the last week's orders are its responses
            started_at = audience_seed.NOW - timedelta(days=7)
            try:
                async with sessions() as session:  # what the segment's own query costs, inside the freeze
                    began = time.perf_counter()
                    out["segment_count"] = await service._count_now(session, host, campaign, started_at)
                    out["segment_s"] = time.perf_counter() - began
                began = time.perf_counter()
                async with sessions() as session, session.begin():
                    run = await service.execute_run(
                        session, host, campaign, started_at, now=started_at, tz=TZ
                    )
                out["freeze_s"] = time.perf_counter() - began
                out["audience"], out["control"], out["status"] = run.audience, run.control, run.status
                out["first_page"] = run.enqueued
                # the rest of the send log, page by page as the dispatcher's feed writes it (each page its own
                # transaction, as when draining): what the run no longer pays up front
                began, pages = time.perf_counter(), 0
                while True:
                    async with sessions() as session, session.begin():
                        paged = await session.get(CampaignRun, run.id)
                        assert paged is not None
                        if not await feed.write_page(
                            session, campaign, paged, now=started_at, limit=feed.PAGE
                        ):
                            break
                    pages += 1
                out["feed_s"], out["pages"] = time.perf_counter() - began, pages
                async with engine.begin() as conn:  # what the dispatcher would have recorded
                    await conn.execute(
                        sa.update(Message)
                        .where(Message.flow == flow)
                        .values(
                            status=sa.case((Message.held_out, "refused"), else_="sent"),
                            reason=sa.case((Message.held_out, "hold-out"), else_=""),
                        )
                    )
                    await conn.execute(sa.text("ANALYZE messages"))
                    await conn.execute(sa.text("ANALYZE campaign_audience"))
                times: dict[str, list[float]] = {"scan": [], "report": []}
                async with sessions() as session:

                    async def scan() -> None:
                        await session.execute(sa.text("SELECT count(*) FROM members"))
                        await session.execute(sa.text("SELECT count(*), sum(paid_fen) FROM orders"))

                    async def report() -> None:
                        fresh = await service.get(session, campaign.name)
                        out["outcome"] = (await evaluation.report(session, fresh)).total

                    await scan()
                    for _ in range(ROUNDS):
                        for name, step in (("scan", scan), ("report", report)):
                            began = time.perf_counter()
                            await step()
                            times[name].append(time.perf_counter() - began)
                        await session.rollback()
                out["times"] = times
            finally:
                await _clean(engine, campaign.id, flow)
        finally:
            await engine.dispose()
        return out

    results: list[dict[str, Any]] = []
    benchmark.pedantic(lambda: results.append(asyncio.run(measure())), rounds=1, iterations=1)
    r = results[0]
    scan_s, report_s = statistics.median(r["times"]["scan"]), statistics.median(r["times"]["report"])
    outcome: evaluation.Outcome = r["outcome"]
    benchmark.extra_info.update(
        {"freeze_enqueue_s": round(r["freeze_s"], 2), "report_s": round(report_s, 2), "scan_s": round(scan_s, 2), "segment_s": round(r["segment_s"], 2),
         "feed_s": round(r["feed_s"], 2), "pages": r["pages"], "audience": r["audience"], "control": r["control"],
         "cores": os.cpu_count()}
    )  # fmt: skip
    report_figure(
        f"postgresql: campaign run to {r['audience']} members (control {r['control']}): freeze + enqueue"
        f" {r['freeze_s']:.1f} s (aim 30 s; {r['first_page']} messages written with it), the segment's own query"
        f" (count alone, same run: {r['segment_s']:.1f} s); the rest of the send log in {r['pages']} feed pages"
        f" {r['feed_s']:.1f} s (paid while sending, not by the run);"
        f" report {report_s:.2f} s vs plain scan of members + orders"
        f" {scan_s:.2f} s = {report_s / scan_s:.1f}x (aim 5 s; median of {ROUNDS} alternating turns;"
        f" {outcome.figures.treated.responders} treated responders; {_load()})"
    )
    assert r["status"] == "queued" and r["audience"] == MEMBERS
    assert outcome.figures.treated.eligible + outcome.figures.held.eligible == MEMBERS
