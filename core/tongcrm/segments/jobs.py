"""The daily count of every saved segment, for counts over time. Run hourly so the first run after local
midnight records the day; later runs that day find the count there and change nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tongcrm.config import PROGRAMME_TZ, Settings
from tongcrm.jobs.registry import registry
from tongcrm.jobs.runner import JobContext
from tongcrm.logging import get_logger
from tongcrm.segments import activity, service

log = get_logger(__name__)


@registry.job("segments.snapshot")
async def snapshot(ctx: JobContext, payload: dict[str, Any]) -> None:
    settings = ctx.services.get("settings")
    tz = settings.tz if isinstance(settings, Settings) else ZoneInfo(PROGRAMME_TZ)
    now = ctx.clock()
    written = await service.snapshot(ctx.sessions, ctx.host, now, now.astimezone(tz).date())
    if written:
        log.info("segment counts recorded", segments=written)


registry.every("segments.snapshot", timedelta(hours=1), "segments.snapshot")


@registry.job("segments.activity")
async def refresh_activity(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Keep the member activity summary current, so API counts seldom have to refresh it first (or, in a
    read-only transaction, read the orders instead). It refreshes even when the summary looks current: a
    transaction that was open across the last refresh and committed after it, with stamps older than what that
    refresh saw, is not visible to ``is_current`` but is inside the refresh's look-back margin."""
    async with ctx.sessions() as session, session.begin():
        await activity.refresh(session)


registry.every("segments.activity", timedelta(minutes=1), "segments.activity")
