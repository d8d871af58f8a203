"""Tier jobs: the daily review (run hourly so the first run after local midnight catches the day), override
expiry, and the upgrade pass after a ladder change."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tongcrm.config import Settings
from tongcrm.jobs.registry import registry
from tongcrm.jobs.runner import JobContext
from tongcrm.logging import get_logger
from tongcrm.tiers import service

log = get_logger(__name__)


def tier_context(ctx: JobContext) -> service.TierContext:
    settings = ctx.services.get("settings")
    return service.TierContext.of(settings if isinstance(settings, Settings) else None, now=ctx.clock())


@registry.job("tiers.review")
async def review(ctx: JobContext, payload: dict[str, Any]) -> None:
    changed = await service.review(ctx.sessions, tier_context(ctx), batch=int(payload.get("batch", 50_000)))
    log.info("tier review done", changed=changed)


@registry.job("tiers.expire_overrides")
async def expire_overrides(ctx: JobContext, payload: dict[str, Any]) -> None:
    async with ctx.sessions() as session, session.begin():
        ended = await service.expire_overrides(session, tier_context(ctx))
    if ended:
        log.info("tier overrides ended", count=ended)


@registry.job("tiers.upgrade_all")
async def upgrade_all(ctx: JobContext, payload: dict[str, Any]) -> None:
    changed = await service.upgrade_all(ctx.sessions, tier_context(ctx))
    log.info("ladder upgrade pass done", version=payload.get("version"), changed=changed)


registry.every("tiers.review", timedelta(hours=1), "tiers.review")
registry.every("tiers.expire_overrides", timedelta(minutes=10), "tiers.expire_overrides")
