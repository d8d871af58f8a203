"""The campaign calendar: between two local dates, every campaign run (those that happened and those the
schedules will start), the care flows that run continuously, the days the brand marks (festivals, platform events
such as Double 11 and 618, member days), and clashes — two campaigns sending to the same audience (the same saved
segment) on one local day, which the fatigue budget would then ration unpredictably between them.

Journeys are on it too: each journey once, on the first day of the range it is active (``journey``: since when,
on what trigger, active or paused), and a journey on a day trigger (birthdays, points expiry, days after the last
order) once more on each day it scans — ``journey_scan`` for the days already scanned, ``planned_scan`` for the
days an active journey will scan. Event-triggered journeys act when their events arrive, which no calendar knows.

Days are local to the programme's time zone. Planned runs are expanded from each schedule as it stands, starting
at the campaign's next run; runs that happened come from the run table, with their outcome.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.campaigns import schedule as sched
from tongcrm.campaigns.journeys import DAY_TRIGGERS, first_scan_day
from tongcrm.campaigns.models import CalendarMark, Campaign, CampaignRun, Journey
from tongcrm.errors import Conflict, NotFound, Unprocessable
from tongcrm.messaging import flows

MAX_DAYS = 366
MARK_KINDS = ("festival", "platform_event", "member_day", "other")
#: At most this many planned runs per campaign in one calendar (a daily campaign over a year is 366).
_MAX_PLANNED = 400


@dataclass(frozen=True, slots=True)
class Entry:
    day: date
    at: datetime | None
    kind: str  # run | planned_run | mark | journey | journey_scan | planned_scan
    name: str
    campaign: str | None = None
    segment_id: int | None = None
    status: str | None = None
    detail: str = ""
    journey: str | None = None


@dataclass(frozen=True, slots=True)
class Clash:
    day: date
    segment_id: int
    campaigns: list[str]


@dataclass(frozen=True, slots=True)
class Calendar:
    start: date
    end: date
    timezone: str
    entries: list[Entry]
    care_flows: list[str]
    clashes: list[Clash]


def check_range(start: date, end: date) -> None:
    if end < start:
        raise Unprocessable(f"'to' ({end}) is before 'from' ({start})")
    if (end - start).days + 1 > MAX_DAYS:
        raise Unprocessable(f"a calendar spans at most {MAX_DAYS} days")


async def build(session: AsyncSession, start: date, end: date, *, tz: ZoneInfo) -> Calendar:
    check_range(start, end)
    lo = datetime.combine(start, time(0), tzinfo=tz).astimezone(UTC)
    hi = datetime.combine(end + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
    campaigns = {c.id: c for c in (await session.execute(sa.select(Campaign))).scalars()}
    entries: list[Entry] = []
    past = await session.execute(
        sa.select(CampaignRun).where(CampaignRun.scheduled_for >= lo, CampaignRun.scheduled_for < hi)
    )
    for run in past.scalars():
        c = campaigns[run.campaign_id]
        entries.append(
            Entry(run.scheduled_for.astimezone(tz).date(), run.scheduled_for, "run", c.name, c.name, c.segment_id,
                  run.status, run.reason or f"audience {run.audience}, control {run.control}")
        )  # fmt: skip
    for c in campaigns.values():
        if c.status not in ("scheduled", "running") or c.next_run_at is None or c.schedule is None:
            continue
        parsed = sched.parse(c.schedule)
        at: datetime | None = c.next_run_at
        for _ in range(_MAX_PLANNED):
            if at is None or at >= hi:
                break
            if at >= lo:
                entries.append(
                    Entry(at.astimezone(tz).date(), at, "planned_run", c.name, c.name, c.segment_id, c.status)
                )
            at = sched.next_after(parsed, at, tz)
    entries.extend(await _journey_entries(session, start, end, tz))
    marks = await session.execute(
        sa.select(CalendarMark)
        .where(CalendarMark.on >= start, CalendarMark.on <= end)
        .order_by(CalendarMark.on)
    )
    for mark in marks.scalars():
        entries.append(Entry(mark.on, None, "mark", mark.name, status=mark.kind, detail=f"mark #{mark.id}"))
    entries.sort(key=lambda e: (e.day, e.at or datetime.combine(e.day, time(0), tzinfo=tz), e.kind, e.name))
    by_day: dict[tuple[date, int], set[str]] = defaultdict(set)
    for e in entries:
        if (
            e.kind in ("run", "planned_run")
            and e.segment_id is not None
            and e.campaign
            and e.status != "refused"
        ):
            by_day[(e.day, e.segment_id)].add(e.campaign)
    clashes = [Clash(d, s, sorted(names)) for (d, s), names in sorted(by_day.items()) if len(names) > 1]
    configs = await flows.list_configs(session)
    care = sorted({cfg.flow for cfg in configs if cfg.enabled})
    return Calendar(start, end, str(tz), entries, care, clashes)


async def _journey_entries(session: AsyncSession, start: date, end: date, tz: ZoneInfo) -> list[Entry]:
    """Each journey's active period (from its creation day, open-ended) and, for day triggers, its daily scans:
    done up to the last day scanned, planned after it (from its first scan day) while the journey is active."""
    out: list[Entry] = []
    for j in (await session.execute(sa.select(Journey).order_by(Journey.name))).scalars():
        since = j.created_at.astimezone(tz).date()
        if since > end:
            continue
        kind = str(j.trigger.get("kind", ""))
        out.append(
            Entry(max(since, start), None, "journey", j.name, journey=j.name, status=j.status,
                  detail=f"trigger {kind}, active since {since.isoformat()}" if j.status == "active"
                  else f"trigger {kind}, created {since.isoformat()}, paused")
        )  # fmt: skip
        if kind not in DAY_TRIGGERS:
            continue
        day = max(since, start)
        first = first_scan_day(j, tz)
        while day <= end:
            if j.scanned_on is not None and day <= j.scanned_on:
                out.append(Entry(day, None, "journey_scan", j.name, journey=j.name, status="scanned",
                                 detail=f"{kind} scan"))  # fmt: skip
            elif j.status == "active" and day >= first:
                out.append(Entry(day, None, "planned_scan", j.name, journey=j.name, status=j.status,
                                 detail=f"{kind} scan"))  # fmt: skip
            day += timedelta(days=1)
    return out


async def add_mark(session: AsyncSession, actor: Actor, on: date, name: str, kind: str) -> CalendarMark:
    name = name.strip()
    if not name or len(name) > 100:
        raise Unprocessable("a mark's name is 1 to 100 characters", extra={"pointer": "/name"})
    if kind not in MARK_KINDS:
        raise Unprocessable(
            f"mark kind {kind!r} is unknown; use one of {', '.join(MARK_KINDS)}", extra={"pointer": "/kind"}
        )
    exists = await session.execute(
        sa.select(CalendarMark.id).where(CalendarMark.on == on, CalendarMark.name == name)
    )
    if exists.first():
        raise Conflict(f"{on} is already marked {name!r}")
    mark = CalendarMark(on=on, name=name, kind=kind, created_by=actor.name)
    session.add(mark)
    await session.flush()
    audit.record(
        session,
        actor,
        "calendar.mark",
        "calendar_mark",
        mark.id,
        after={"on": on.isoformat(), "name": name, "kind": kind},
    )
    return mark


async def remove_mark(session: AsyncSession, actor: Actor, mark_id: int) -> None:
    mark = await session.get(CalendarMark, mark_id)
    if mark is None:
        raise NotFound(f"no calendar mark {mark_id}")
    audit.record(
        session,
        actor,
        "calendar.unmark",
        "calendar_mark",
        mark.id,
        before={"on": mark.on.isoformat(), "name": mark.name},
    )
    await session.delete(mark)
    await session.flush()
