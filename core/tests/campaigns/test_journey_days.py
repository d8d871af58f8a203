"""Day-based journeys with a time machine, on both databases: birthdays on the local day of Asia/Shanghai (not the
UTC one), 29 February birthdays on the 28th in other years and on the 29th in leap years, once a year; members
with points expiring on day D entering on D − N across a month end; N days after the last order."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from campaign_kit import vip_world
from messaging_kit import Clock, World
from tongcrm.audit.service import SYSTEM
from tongcrm.campaigns import journeys
from tongcrm.campaigns.models import JourneyParticipant
from tongcrm.members.models import Member
from tongcrm.points import service as points
from tongcrm.testing.database import TestDatabase

SH = ZoneInfo("Asia/Shanghai")
STEPS = {"wait_hours": 0, "condition": None, "then": {"template": "promo"}}


def at_local(y: int, mo: int, d: int, h: int, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=SH).astimezone(UTC)


async def _world(tongcrm_db: TestDatabase, clock: Clock) -> World:
    return (await vip_world(tongcrm_db, clock, 0, segment=False))[0]


async def _create(w: World, name: str, trigger: dict[str, object]) -> None:
    draft = journeys.Draft(name, trigger, STEPS, {"kind": "order", "within_days": 7}, control_percent=0)
    async with w.sessions() as session, session.begin():
        await journeys.create(session, draft, SYSTEM, now=w.clock())


async def _entered(w: World, name: str) -> set[tuple[int, str]]:
    async with w.sessions() as session:
        journey = await journeys.get(session, name)
        rows = await session.execute(
            sa.select(JourneyParticipant.member_id, JourneyParticipant.occurrence).where(
                JourneyParticipant.journey_id == journey.id
            )
        )
        return {(int(m), str(o)) for m, o in rows.all()}


async def _tick(w: World, moment: datetime) -> int:
    w.clock.now = moment
    return await journeys.scan_due(w.sessions, now=moment, tz=SH)


def test_birthday_dates_across_leap_years() -> None:
    assert journeys.birthday_dates(date(2027, 2, 28)) == [(2, 28), (2, 29)]
    assert journeys.birthday_dates(date(2028, 2, 28)) == [(2, 28)]
    assert journeys.birthday_dates(date(2028, 2, 29)) == [(2, 29)]
    assert journeys.birthday_dates(date(2100, 2, 28)) == [(2, 28), (2, 29)]  # 2100 is not a leap year
    assert journeys.birthday_dates(date(2027, 3, 1)) == [(3, 1)]


@pytest.mark.asyncio
async def test_birthdays_on_the_local_day_leap_days_and_once_a_year(tongcrm_db: TestDatabase) -> None:
    clock = Clock(at_local(2027, 2, 26, 12))
    w = await _world(tongcrm_db, clock)
    born = {
        "feb27": date(1990, 2, 27),
        "feb28": date(1991, 2, 28),
        "feb29": date(1992, 2, 29),
        "mar1": date(1993, 3, 1),
        "dec31": date(1994, 12, 31),
    }
    ids: dict[str, int] = {}
    for i, (key, birthday) in enumerate(born.items()):
        ids[key] = await w.member(i)
        async with w.sessions() as session, session.begin():
            await session.execute(sa.update(Member).where(Member.id == ids[key]).values(birthday=birthday))
    await _create(w, "bday", {"kind": "birthday"})
    await _tick(w, at_local(2027, 2, 26, 12))
    assert await _entered(w, "bday") == set()
    # 23:59 on the 27th in Shanghai is 15:59 UTC: still the 27th, whatever UTC's date
    await _tick(w, at_local(2027, 2, 27, 23, 59))
    assert await _entered(w, "bday") == {(ids["feb27"], "birthday:2027")}
    # one minute later it is the 28th locally (16:00 UTC on the 27th): the 28th's and, 2027 lacking a 29th, the
    # 29th's birthdays
    assert at_local(2027, 2, 28, 0, 0).date() == date(2027, 2, 27)
    await _tick(w, at_local(2027, 2, 28, 0, 0))
    await _tick(w, at_local(2027, 2, 28, 9, 0))  # a second tick the same day scans nothing again
    await _tick(w, at_local(2027, 3, 1, 0, 1))
    assert await _entered(w, "bday") == {
        (ids["feb27"], "birthday:2027"),
        (ids["feb28"], "birthday:2027"),
        (ids["feb29"], "birthday:2027"),
        (ids["mar1"], "birthday:2027"),
    }
    # across the year end, then a leap year: the 29th's birthday on the 29th, not the 28th
    await _tick(w, at_local(2027, 12, 31, 8))
    await _tick(w, at_local(2028, 2, 28, 8))
    assert (ids["feb29"], "birthday:2028") not in await _entered(w, "bday")
    await _tick(w, at_local(2028, 2, 29, 8))
    after = await _entered(w, "bday")
    assert {
        (ids["dec31"], "birthday:2027"),
        (ids["feb28"], "birthday:2028"),
        (ids["feb29"], "birthday:2028"),
    } <= after
    # a replayed scan of a day already done (the scan marker reset) adds nobody: one entry per year
    async with w.sessions() as session, session.begin():
        journey = await journeys.get(session, "bday")
        assert await journeys.scan_day(session, journey, date(2028, 2, 29), SH, now=w.clock()) == 0
    assert len([x for x in await _entered(w, "bday") if x[0] == ids["feb29"]]) == 2


@pytest.mark.asyncio
async def test_points_expiring_and_days_after_the_last_order(tongcrm_db: TestDatabase) -> None:
    clock = Clock(at_local(2026, 1, 20, 12))
    w = await _world(tongcrm_db, clock)
    a, b, c = await w.member(1), await w.member(2), await w.member(3)
    ctx = points.PointsContext(clock=clock, tz=SH)
    async with w.sessions() as session, session.begin():
        # a's lot expires at 00:30 on 3 February in Shanghai (16:30 UTC on 2 February): its local day is the 3rd
        await points.adjust(session, ctx, a, 100, key="a", reason="test", expires=at_local(2026, 2, 3, 0, 30))
        await points.adjust(session, ctx, b, 100, key="b", reason="test", expires=at_local(2026, 2, 4, 12))
    await _create(w, "expiry", {"kind": "points_expiring", "days_before": 3})
    clock.now = at_local(2026, 1, 27, 10)
    await w.order(c, "last", status="paid", paid_fen=100)
    clock.now = at_local(2026, 1, 20, 12)
    await _create(w, "quiet", {"kind": "days_after_last_order", "days": 4})
    await _tick(w, at_local(2026, 1, 30, 23, 59))  # D − 3 for the 2nd: nobody
    assert await _entered(w, "expiry") == set()
    await _tick(w, at_local(2026, 1, 31, 0, 5))  # 31 January = 3 February − 3, across the month end
    assert await _entered(w, "expiry") == {(a, "expiry:2026-02-03")}
    assert await _entered(w, "quiet") == {(c, "last_order:2026-01-27")}
    await _tick(w, at_local(2026, 2, 1, 0, 5))
    assert await _entered(w, "expiry") == {(a, "expiry:2026-02-03"), (b, "expiry:2026-02-04")}
    assert await _entered(w, "quiet") == {(c, "last_order:2026-01-27")}  # not again the day after


@pytest.mark.asyncio
async def test_missed_days_are_backfilled_once_and_a_journey_starts_from_its_start(
    tongcrm_db: TestDatabase,
) -> None:
    clock = Clock(at_local(2026, 6, 1, 10))
    w = await _world(tongcrm_db, clock)
    born = {d: date(1990, 6, d) for d in (1, 2, 3, 4, 5, 6, 7)} | {
        10: date(1990, 6, 10),
        31: date(1990, 7, 1),
    }
    ids: dict[int, int] = {}
    for i, (key, birthday) in enumerate(born.items()):
        ids[key] = await w.member(i)
        async with w.sessions() as session, session.begin():
            await session.execute(sa.update(Member).where(Member.id == ids[key]).values(birthday=birthday))
    expiring = await w.member(50)
    ctx = points.PointsContext(clock=clock, tz=SH)
    async with w.sessions() as session, session.begin():  # expires on local 5 June: enters on the 3rd
        await points.adjust(
            session, ctx, expiring, 100, key="x", reason="test", expires=at_local(2026, 6, 5, 12)
        )
    # created at 10:00 on 1 June: that day's birthdays happened before it (at local midnight)
    await _create(w, "bday", {"kind": "birthday"})
    await _create(w, "expiry", {"kind": "points_expiring", "days_before": 2})
    await _tick(w, at_local(2026, 6, 1, 23, 0))
    assert await _entered(w, "bday") == set()
    await _tick(w, at_local(2026, 6, 2, 0, 5))
    assert await _entered(w, "bday") == {(ids[2], "birthday:2026")}
    # the scheduler is down from the 2nd until 09:00 on the 4th: the 3rd and the 4th are scanned when it returns
    await _tick(w, at_local(2026, 6, 4, 9, 0))
    await _tick(w, at_local(2026, 6, 4, 9, 1))  # and a second tick adds nothing
    assert await _entered(w, "bday") == {(ids[d], "birthday:2026") for d in (2, 3, 4)}
    assert await _entered(w, "expiry") == {(expiring, "expiry:2026-06-05")}
    async with w.sessions() as session:
        assert (await journeys.get(session, "bday")).scanned_on == date(2026, 6, 4)
    # paused on the 4th, resumed at 10:00 on the 6th: the paused days and the 6th are not backfilled
    async with w.sessions() as session, session.begin():
        await journeys.set_status(session, SYSTEM, "bday", "paused", now=w.clock())
    await _tick(w, at_local(2026, 6, 5, 8))
    w.clock.now = at_local(2026, 6, 6, 10)
    async with w.sessions() as session, session.begin():
        await journeys.set_status(session, SYSTEM, "bday", "active", now=w.clock())
    await _tick(w, at_local(2026, 6, 6, 11))
    await _tick(w, at_local(2026, 6, 7, 0, 1))
    assert await _entered(w, "bday") == {(ids[d], "birthday:2026") for d in (2, 3, 4, 7)}
    # down for six weeks: only the last MAX_BACKFILL_DAYS days are replayed (1 July in, 10 June out)
    assert journeys.MAX_BACKFILL_DAYS == 31
    await _tick(w, at_local(2026, 7, 20, 9))
    entered = await _entered(w, "bday")
    assert (ids[31], "birthday:2026") in entered and (ids[10], "birthday:2026") not in entered
