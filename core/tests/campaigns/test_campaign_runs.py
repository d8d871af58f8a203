"""Recurring runs with a time machine: month ends, the leap day and the Asia/Shanghai day boundary; a scheduler
that dies mid-run (no member messaged twice, none skipped); the audience frozen per run with stable groups; a
run that would exceed the budget refused with nothing queued."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from messaging_kit import SECRET_KEY, Clock, World, sms_host
from tongcrm.audit.service import SYSTEM
from tongcrm.campaigns import control, service
from tongcrm.campaigns.models import Campaign, CampaignAudience, CampaignRun
from tongcrm.config import Settings
from tongcrm.errors import Unprocessable
from tongcrm.members.models import MemberTag
from tongcrm.messaging import service as messaging
from tongcrm.segments import service as segments
from tongcrm.testing.database import TestDatabase

SH = ZoneInfo("Asia/Shanghai")


async def audience_of(w: World, run_id: int) -> dict[int, str]:
    async with w.sessions() as session:
        rows = await session.execute(
            sa.select(CampaignAudience.member_id, CampaignAudience.grp).where(
                CampaignAudience.run_id == run_id
            )
        )
        return {m: g for m, g in rows.all()}


async def tag(w: World, members: list[int]) -> None:
    async with w.sessions() as session, session.begin():
        session.add_all(MemberTag(member_id=m, tag="vip") for m in members)


@pytest.mark.asyncio
async def test_monthly_runs_across_month_ends_leap_day_and_a_restart_mid_run(
    tongcrm_db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(datetime(2028, 1, 20, tzinfo=UTC))
    host = sms_host()
    w = World(
        tongcrm_db.sessions, Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault(), host, clock
    )
    await w.setup("http://127.0.0.1:9")  # messages are only queued here; nothing is dispatched
    first = [await w.member(i) for i in range(12)]
    await tag(w, first)
    async with w.sessions() as session, session.begin():
        context = await segments.load_context(session, host, clock())
        definition = {"version": 1, "condition": {"field": "tags", "op": "has", "value": "vip"}}
        await segments.save(session, context, "vip", definition, SYSTEM)
        draft = service.Draft(
            "month-end",
            "vip",
            "promo",
            {"kind": "order", "within_days": 3},
            control_percent=50,
            control_seed="m",
        )
        campaign = await service.create(session, draft, SYSTEM)
        campaign_id = campaign.id
        schedule = {"kind": "monthly", "time": "00:30", "day": 31}
        await service.schedule(session, host, SYSTEM, "month-end", schedule, now=clock(), tz=SH)

    async def next_run() -> datetime | None:
        async with w.sessions() as session:
            found = await session.get(Campaign, campaign_id)
            assert found is not None
            return found.next_run_at

    run_ids: list[int] = []
    for month in range(4):
        due = await next_run()
        assert due is not None
        clock.now = due
        if month == 1:  # February: the scheduler dies after queueing the run's messages, before it commits
            real = messaging.queue_selected

            async def dying(*args: Any, _real: Any = real, **kwargs: Any) -> int:
                await _real(*args, **kwargs)
                raise RuntimeError("process killed")

            monkeypatch.setattr(messaging, "queue_selected", dying)
            with pytest.raises(RuntimeError, match="killed"):
                await service.run_due(w.sessions, host, now=clock(), tz=SH)
            monkeypatch.setattr(messaging, "queue_selected", real)
            # nothing of the run survived, and it is still due
            assert await next_run() == due
            async with w.sessions() as session:
                assert (
                    await session.execute(sa.select(sa.func.count()).select_from(CampaignRun))
                ).scalar_one() == 1
            assert len(await w.messages(flow="campaign.month-end")) == 12
        if month == 2:  # a member joins the segment between runs: the next run's frozen audience has them
            late = await w.member(100)
            await tag(w, [late])
        started = await service.run_due(w.sessions, host, now=clock(), tz=SH)
        assert len(started) == 1
        assert await service.run_due(w.sessions, host, now=clock(), tz=SH) == []  # a second tick: nothing new
        run_ids.extend(started)

    async with w.sessions() as session:
        runs = list(
            (await session.execute(sa.select(CampaignRun).order_by(CampaignRun.scheduled_for))).scalars()
        )
    # 00:30 local on the 31st or the month's last day: the previous UTC day at 16:30
    assert [r.scheduled_for.astimezone(SH).date() for r in runs] == [
        date(2028, 1, 31), date(2028, 2, 29), date(2028, 3, 31), date(2028, 4, 30),
    ]  # fmt: skip
    assert [(r.scheduled_for.hour, r.scheduled_for.minute, r.scheduled_for.day) for r in runs][:2] == [
        (16, 30, 30), (16, 30, 28),
    ]  # fmt: skip
    assert [r.id for r in runs] == run_ids

    messages = await w.messages(flow="campaign.month-end")
    per_run = Counter(m.dedupe_key.rsplit(":", 1)[1] for m in messages)
    audiences = [await audience_of(w, r.id) for r in runs]
    assert [per_run[f"run{r.id}"] for r in runs] == [len(a) for a in audiences] == [12, 12, 13, 13]
    keys = [m.dedupe_key for m in messages]
    assert len(keys) == len(set(keys))  # no member twice in a run
    for r, audience in zip(runs, audiences, strict=True):
        in_run = {m.member_id: m for m in messages if m.dedupe_key.endswith(f":run{r.id}")}
        assert set(in_run) == set(audience)  # none skipped
        assert {m for m, msg in in_run.items() if msg.held_out} == {
            m for m, g in audience.items() if g == "control"
        }
    # a member is in the control group for every run of the campaign
    for member in first:
        groups = {a[member] for a in audiences}
        assert len(groups) == 1
        assert (groups == {"control"}) == control.in_control(campaign_id, member, 5000, "m")


@pytest.mark.asyncio
async def test_a_run_beyond_the_budget_is_refused_and_queues_nothing(tongcrm_db: TestDatabase) -> None:
    clock = Clock(datetime(2026, 6, 1, 2, tzinfo=UTC))
    host = sms_host()
    w = World(
        tongcrm_db.sessions, Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault(), host, clock
    )
    await w.setup("http://127.0.0.1:9")
    members = [await w.member(i) for i in range(10)]
    await tag(w, members)
    async with w.sessions() as session, session.begin():
        context = await segments.load_context(session, host, clock())
        definition = {"version": 1, "condition": {"field": "tags", "op": "has", "value": "vip"}}
        await segments.save(session, context, "vip", definition, SYSTEM)
        draft = service.Draft(
            "daily", "vip", "promo", {"kind": "redemption", "within_days": 1}, control_percent=0,
            budget_messages=15,  # room for one run of 10, not two
        )  # fmt: skip
        await service.create(session, draft, SYSTEM)
        await service.schedule(
            session, host, SYSTEM, "daily", {"kind": "daily", "time": "10:30"}, now=clock(), tz=SH
        )
    for _ in range(2):
        async with w.sessions() as session:
            campaign = await service.get(session, "daily")
        assert campaign.next_run_at is not None
        clock.now = campaign.next_run_at
        await service.run_due(w.sessions, host, now=clock(), tz=SH)
    async with w.sessions() as session:
        runs = await service.runs(session, campaign.id)
    assert [(r.status, r.audience) for r in runs] == [
        ("finished", 10),
        ("refused", 10),
    ]  # a finished run still counts
    assert runs[1].reason.startswith(
        "budget exceeded: the run would message 10 members and 5 messages are left"
    )
    # the console's Chinese page reads the code and its figures, the API the English sentence
    assert (runs[1].reason_code, runs[1].reason_params) == (
        "campaign.over_budget_messages",
        {"treated": 10, "left": 5, "budget": 15},
    )
    assert (runs[0].reason_code, runs[0].reason_params) == ("", None)
    assert len(await w.messages(flow="campaign.daily")) == 10
    assert await audience_of(w, runs[1].id) == {}


@pytest.mark.asyncio
async def test_the_periodic_job_starts_a_due_run_in_the_programme_time_zone(tongcrm_db: TestDatabase) -> None:
    clock = Clock(datetime(2026, 9, 30, 15, 0, tzinfo=UTC))  # 23:00 in Shanghai
    host = sms_host()
    w = World(
        tongcrm_db.sessions, Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault(), host, clock
    )
    await w.setup("http://127.0.0.1:9")
    await tag(w, [await w.member(i) for i in range(3)])
    async with w.sessions() as session, session.begin():
        context = await segments.load_context(session, host, clock())
        definition = {"version": 1, "condition": {"field": "tags", "op": "has", "value": "vip"}}
        await segments.save(session, context, "vip", definition, SYSTEM)
        await service.create(
            session, service.Draft("nightly", "vip", "promo", {"kind": "order", "within_days": 1}), SYSTEM
        )
        campaign = await service.schedule(
            session, host, SYSTEM, "nightly", {"kind": "daily", "time": "00:10"}, now=clock(), tz=SH
        )
        assert campaign.next_run_at == datetime(2026, 9, 30, 16, 10, tzinfo=UTC)  # 1 October, 00:10 local
    runner = w.runner()
    await w.drain(runner)
    assert await w.messages(flow="campaign.nightly") == []  # not due yet
    clock.now = datetime(2026, 9, 30, 16, 11, tzinfo=UTC)
    await w.drain(runner)
    async with w.sessions() as session:
        runs = await service.runs(session, campaign.id)
        after = await service.get(session, "nightly")
    assert [(r.scheduled_for, r.status, r.audience) for r in runs] == [
        (datetime(2026, 9, 30, 16, 10, tzinfo=UTC), "queued", 3)
    ]
    assert after.status == "running" and after.next_run_at == datetime(2026, 10, 1, 16, 10, tzinfo=UTC)
    assert len(await w.messages(flow="campaign.nightly")) == 3


@pytest.mark.asyncio
async def test_a_run_that_cannot_start_is_refused_and_other_campaigns_still_run(
    tongcrm_db: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(datetime(2026, 5, 1, 1, tzinfo=UTC))
    host = sms_host()
    w = World(
        tongcrm_db.sessions, Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault(), host, clock
    )
    await w.setup("http://127.0.0.1:9")
    await tag(w, [await w.member(i) for i in range(3)])
    async with w.sessions() as session, session.begin():
        context = await segments.load_context(session, host, clock())
        definition = {"version": 1, "condition": {"field": "tags", "op": "has", "value": "vip"}}
        await segments.save(session, context, "vip", definition, SYSTEM)
        for name in ("broken", "fine"):
            await service.create(
                session, service.Draft(name, "vip", "promo", {"kind": "order", "within_days": 1}), SYSTEM
            )
            await service.schedule(
                session, host, SYSTEM, name, {"kind": "daily", "time": "10:00"}, now=clock(), tz=SH
            )
        due = (await service.get(session, "fine")).next_run_at
    assert due is not None
    original = service._prepared

    async def prepared(session: Any, host_: Any, campaign: Campaign, now: datetime) -> Any:
        if campaign.name == "broken":
            raise Unprocessable("segment 'vip' refers to tier 'gold', which the ladder no longer has")
        return await original(session, host_, campaign, now)

    monkeypatch.setattr(service, "_prepared", prepared)
    started = await service.run_due(w.sessions, host, now=due, tz=SH)
    assert len(started) == 2
    async with w.sessions() as session:
        broken, fine = await service.get(session, "broken"), await service.get(session, "fine")
        broken_runs, fine_runs = await service.runs(session, broken.id), await service.runs(session, fine.id)
    assert [(r.status, r.reason) for r in broken_runs] == [
        (
            "refused",
            "the run could not start: segment 'vip' refers to tier 'gold', which the ladder no longer has",
        )
    ]
    assert broken_runs[0].reason_code == "campaign_run.could_not_start"
    assert broken_runs[0].reason_params == {
        "code": None,
        "params": {},
        "message": "segment 'vip' refers to tier 'gold', which the ladder no longer has",
    }
    assert [(r.status, r.audience) for r in fine_runs] == [("queued", 3)]
    assert broken.next_run_at == fine.next_run_at == due + timedelta(days=1)  # the schedule goes on
    assert await w.messages(flow="campaign.broken") == []
    assert len(await w.messages(flow="campaign.fine")) == 3


@pytest.mark.asyncio
async def test_a_run_finishes_when_its_own_response_window_closes_to_the_microsecond(
    tongcrm_db: TestDatabase,
) -> None:
    start = datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)
    clock = Clock(start)
    host = sms_host()
    w = World(
        tongcrm_db.sessions, Settings(database_url=tongcrm_db.url, secret_key=SECRET_KEY).vault(), host, clock
    )
    await w.setup("http://127.0.0.1:9")
    runs: dict[tuple[int, int], int] = {}
    async with w.sessions() as session, session.begin():
        context = await segments.load_context(session, host, clock())
        definition = {"version": 1, "condition": {"field": "tags", "op": "has", "value": "vip"}}
        await segments.save(session, context, "vip", definition, SYSTEM)
        for days in (1, 3):
            draft = service.Draft(f"in-{days}", "vip", "promo", {"kind": "order", "within_days": days})
            campaign = await service.create(session, draft, SYSTEM)
            for n, enqueued in enumerate((5, 4)):  # a run all in the send log, and one still being written
                run = CampaignRun(
                    campaign_id=campaign.id, scheduled_for=start + timedelta(minutes=n), started_at=start,
                    segment_version=1, status="queued", audience=5, control=0, enqueued=enqueued,
                )  # fmt: skip
                session.add(run)
                await session.flush()
                runs[days, enqueued] = run.id

    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    async def finished_after(moment: datetime) -> set[tuple[int, int]]:
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", seen)
        try:
            await service.finish_done(w.sessions, now=moment)
        finally:
            sa.event.remove(sa.engine.Engine, "before_cursor_execute", seen)
        async with w.sessions() as session:
            rows = await session.execute(sa.select(CampaignRun.id, CampaignRun.status))
            status = dict(rows.all())
        return {key for key, run_id in runs.items() if status[run_id] == "finished"}

    tick = timedelta(microseconds=1)
    assert await finished_after(start + timedelta(days=1) - tick) == set()
    assert await finished_after(start + timedelta(days=1)) == {(1, 5)}  # its own campaign's window
    assert await finished_after(start + timedelta(days=3) - tick) == {(1, 5)}
    assert await finished_after(start + timedelta(days=3)) == {(1, 5), (3, 5)}
    assert await finished_after(start + timedelta(days=30)) == {(1, 5), (3, 5)}  # the feed is not done
    # the windows are compared in SQL: a tick reads no run into Python to compare it there
    assert not [s for s in statements if s.lstrip().upper().startswith("SELECT") and "campaign_runs" in s]
