"""The campaign scheduler: every minute, start the runs that are due (in the programme's time zone, read from
the programme settings each tick) and finish campaigns whose last response window has closed."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tongcrm.campaigns import journeys, service
from tongcrm.config import PROGRAMME_TZ, Settings
from tongcrm.jobs.registry import registry
from tongcrm.jobs.runner import JobContext
from tongcrm.logging import get_logger
from tongcrm.programme import service as programme

log = get_logger(__name__)

TICK = "campaigns.tick"


async def programme_tz(ctx: JobContext) -> ZoneInfo:
    settings = ctx.services.get("settings")
    if not isinstance(settings, Settings):
        return ZoneInfo(PROGRAMME_TZ)
    async with ctx.sessions() as session:
        return ZoneInfo((await programme.current(session, settings)).timezone)


@registry.job(TICK)
async def tick(ctx: JobContext, payload: dict[str, Any]) -> None:
    started = await service.run_due(ctx.sessions, ctx.host, now=ctx.clock(), tz=await programme_tz(ctx))
    if started:
        log.info("campaign runs started", runs=len(started))


registry.every(TICK, timedelta(minutes=1), TICK)


JOURNEYS_TICK = "journeys.tick"
JOURNEYS_ENTER = "journeys.enter"


@registry.job(JOURNEYS_TICK)
async def journeys_tick(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Day-based journeys scan today's local day (once), then every participant whose wait is over acts."""
    tz = await programme_tz(ctx)
    now = ctx.clock()
    entered = await journeys.scan_due(ctx.sessions, now=now, tz=tz)
    acted = await journeys.advance_due(ctx.sessions, ctx.host, now=now, tz=tz)
    if entered or acted:
        log.info("journeys advanced", entered=entered, acted=acted)


@registry.job(JOURNEYS_ENTER)
async def journeys_enter(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Members entering journeys on one domain event (enqueued once per event by the built-in hook). A journey
    without a wait acts at once rather than at the next tick."""
    now = ctx.clock()
    async with ctx.sessions() as session, session.begin():
        entered = await journeys.on_event(
            session, str(payload["event"]), int(payload["event_id"]), payload.get("payload") or {}, now=now
        )
    if entered:
        await journeys.advance_due(ctx.sessions, ctx.host, now=now, tz=await programme_tz(ctx))


registry.every(JOURNEYS_TICK, timedelta(minutes=1), JOURNEYS_TICK)
