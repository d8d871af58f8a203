"""The lifecycle pass: hourly (time alone moves members between stages, and the first pass after local
midnight catches the day), and at once after a policy change."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tongcrm.config import PROGRAMME_TZ, Settings
from tongcrm.jobs.registry import registry
from tongcrm.jobs.runner import JobContext
from tongcrm.lifecycle import service
from tongcrm.logging import get_logger

log = get_logger(__name__)


@registry.job("lifecycle.recompute")
async def recompute(ctx: JobContext, payload: dict[str, Any]) -> None:
    settings = ctx.services.get("settings")
    tz = settings.tz if isinstance(settings, Settings) else ZoneInfo(PROGRAMME_TZ)
    done = await service.recompute(ctx.sessions, ctx.clock(), tz, batch=int(payload.get("batch", 50_000)))
    if done.changed:
        log.info("lifecycle stages changed", changed=done.changed)


registry.every("lifecycle.recompute", timedelta(hours=1), "lifecycle.recompute")
