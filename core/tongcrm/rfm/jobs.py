"""The RFM recompute: incremental every hour (members whose orders changed), full after a policy change, on
``POST /api/rfm/recompute`` or ``tongcrm rfm recompute``, and once a day so recency and the edges follow time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from tongcrm.config import PROGRAMME_TZ, Settings
from tongcrm.jobs.registry import registry
from tongcrm.jobs.runner import JobContext
from tongcrm.logging import get_logger
from tongcrm.rfm import service

log = get_logger(__name__)


@registry.job("rfm.recompute")
async def recompute(ctx: JobContext, payload: dict[str, Any]) -> None:
    settings = ctx.services.get("settings")
    tz = settings.tz if isinstance(settings, Settings) else ZoneInfo(PROGRAMME_TZ)
    run = service.recompute_full if payload.get("full") else service.recompute_incremental
    done = await run(ctx.sessions, ctx.clock(), tz)
    log.info("rfm recomputed", kind=done.kind, members=done.members, scored=done.scored)


registry.every("rfm.incremental", timedelta(hours=1), "rfm.recompute", {"full": False})
registry.every("rfm.full", timedelta(days=1), "rfm.recompute", {"full": True})
