"""A run's messages written page by page as the dispatcher drains them: the run writes its first page only, the
report counts the rest as pending, a page that dies mid-write is written again whole (nobody twice, nobody
skipped), the feed waits while the campaign's flow still has a batch queued, and the drained run's counts are
exact."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from campaign_kit import tag, vip_world
from messaging_kit import Clock, fake_gateway
from tongcrm.audit.service import SYSTEM
from tongcrm.campaigns import control, evaluation, feed, service
from tongcrm.campaigns.models import CampaignRun
from tongcrm.messaging import feed as send_feed
from tongcrm.messaging import service as messaging
from tongcrm.testing.database import TestDatabase

SH = ZoneInfo("Asia/Shanghai")
#: 10:00 in Shanghai, inside the marketing window.
RUN_AT = datetime(2031, 3, 4, 2, 0, tzinfo=UTC)


async def _run(w: Any, session_run: int) -> CampaignRun:
    async with w.sessions() as session:
        run = await session.get(CampaignRun, session_run)
        assert run is not None
        return run


async def _report(w: Any) -> evaluation.Figures:
    async with w.sessions() as session:
        campaign = await service.get(session, "paged")
        return (await evaluation.report(session, campaign)).total.figures


@pytest.mark.asyncio
async def test_messages_are_written_in_pages_as_they_are_sent(
    tongcrm_db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed, "FIRST_PAGE", 4)
    monkeypatch.setattr(feed, "PAGE", 6)
    clock = Clock(RUN_AT)
    with fake_gateway(clock) as (fake, url):
        w, members = await vip_world(tongcrm_db, clock, 25, endpoint=url)
        await tag(w, members)
        async with w.sessions() as session, session.begin():
            draft = service.Draft(
                "paged",
                "vip",
                "promo",
                {"kind": "order", "within_days": 7},
                control_percent=20,
                control_seed="p",
            )
            campaign = await service.create(session, draft, SYSTEM)
            run = await service.execute_run(session, w.host, campaign, RUN_AT, now=RUN_AT, tz=SH)
            run_id, campaign_id = run.id, campaign.id
        held = set(control.split(campaign_id, members, 2000, "p"))
        assert held

        # the run wrote its first page only; the report counts the rest as pending, none lost
        assert (await _run(w, run_id)).enqueued == 4
        assert len(await w.messages(flow="campaign.paged")) == 4
        figures = await _report(w)
        assert (figures.audience, figures.pending, figures.sent) == (25, 25, 0)
        # the send log's status read counts the unwritten members as queued too, control members as held out
        async with w.sessions() as session:
            status = await messaging.campaign_status(session, "campaign.paged")
        assert status.statuses["queued"] == 25 and status.assigned_holdout == len(held)

        # a batch of 3 while 4 are queued: the feed waits for the flow to drain
        async with w.sessions() as session, session.begin():
            assert await feed.feed_runs(session, clock(), 3) == 0

        # a page that dies after its insert rolls back whole, cursor and all
        real = messaging.queue_selected

        async def dying(*args: Any, **kwargs: Any) -> int:
            await real(*args, **kwargs)
            raise RuntimeError("process killed")

        monkeypatch.setattr(messaging, "queue_selected", dying)
        assert await send_feed.top_up(w.sessions, clock(), 10) == 0
        monkeypatch.setattr(messaging, "queue_selected", real)
        assert (await _run(w, run_id)).enqueued == 4
        assert len(await w.messages(flow="campaign.paged")) == 4

        # the dispatcher drains in batches of 5, the feed adding a page whenever fewer than 5 are queued
        await w.dispatcher(batch=5).run()

    run = await _run(w, run_id)
    assert (run.enqueued, run.enqueued_through) == (25, max(members))
    messages = await w.messages(flow="campaign.paged")
    assert Counter(m.member_id for m in messages) == Counter(members)  # everyone once
    assert {m.member_id for m in messages if m.held_out} == held
    assert {m.status for m in messages} == {"sent", "refused"}
    assert {m.reason for m in messages if m.status == "refused"} == {"hold-out"}
    assert len(fake.accepted) == 25 - len(held)
    figures = await _report(w)
    assert figures.pending == 0 and figures.sent == 25 - len(held)
    assert (figures.treated.eligible, figures.held.eligible) == (25 - len(held), len(held))
    # a further feed finds nothing left to write
    async with w.sessions() as session, session.begin():
        assert await feed.feed_runs(session, clock(), 1000) == 0


@pytest.mark.asyncio
async def test_quiet_hours_hold_the_feed_until_the_window(
    tongcrm_db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed, "FIRST_PAGE", 4)
    monkeypatch.setattr(feed, "PAGE", 6)
    night = datetime(2031, 3, 4, 14, 0, tzinfo=UTC)  # 22:00 in Shanghai: outside the marketing window
    clock = Clock(night)
    with fake_gateway(clock) as (fake, url):
        w, members = await vip_world(tongcrm_db, clock, 25, endpoint=url)
        await tag(w, members)
        async with w.sessions() as session, session.begin():
            draft = service.Draft(
                "paged", "vip", "promo", {"kind": "order", "within_days": 7}, control_percent=0
            )
            campaign = await service.create(session, draft, SYSTEM)
            run_id = (await service.execute_run(session, w.host, campaign, night, now=night, tz=SH)).id
        # the first page waits for the window; the feed adds one page while fewer than a batch are queued, then
        # stops: the send log holds what waits to be sent, not the whole audience
        await w.dispatcher(batch=5).run()
        assert (await _run(w, run_id)).enqueued == 10
        assert {m.status for m in await w.messages(flow="campaign.paged")} == {"queued"}
        assert fake.accepted == []
        clock.now = datetime(2031, 3, 5, 1, 0, tzinfo=UTC)  # 09:00 the next morning
        await w.dispatcher(batch=5).run()
    assert (await _run(w, run_id)).enqueued == 25
    messages = await w.messages(flow="campaign.paged")
    assert sorted(m.member_id for m in messages) == sorted(members)
    assert {m.status for m in messages} == {"sent"} and len(fake.accepted) == 25
