"""Tier jobs: the daily review (run hourly so the first run after local midnight catches the day), override
expiry, the upgrade pass after a ladder change, and standing-grant reconciliation: in full when enqueued with
no payload (the backfill after upgrading to a version that grants standing benefits; also ``tongcrm tiers
grant-standing``), and hourly for members who joined recently at the base tier, the one way into a tier that
is not a tier change."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tongcrm.config import Settings
from tongcrm.entitlements.standing import standing_of
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


@registry.job("tiers.grant_standing")
async def grant_standing(ctx: JobContext, payload: dict[str, Any]) -> None:
    tctx = tier_context(ctx)
    since = None
    if payload.get("recent_hours") is not None:
        async with ctx.sessions() as session:
            ladder = await service.active_ladder(session)
        if ladder is None or not standing_of(ladder.base):
            return  # every other tier is entered by a tier change, which grants its benefits itself
        since = tctx.now - timedelta(hours=float(payload["recent_hours"]))
    moved = await service.grant_standing(
        ctx.sessions, tctx, batch=int(payload.get("batch", 50_000)), created_since=since
    )
    if moved.opened or moved.closed:
        log.info("standing grants reconciled", opened=moved.opened, closed=moved.closed)


registry.every("tiers.review", timedelta(hours=1), "tiers.review")
registry.every("tiers.expire_overrides", timedelta(minutes=10), "tiers.expire_overrides")
registry.every(
    "tiers.grant_standing.recent", timedelta(hours=1), "tiers.grant_standing", {"recent_hours": 48}
)
