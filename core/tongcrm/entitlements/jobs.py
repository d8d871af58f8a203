"""Entitlement jobs: monthly and birthday grants (hourly; the grant key makes repeats no-ops) and fulfilment of
pending grants through providers, with backoff on failure."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tongcrm.config import Settings
from tongcrm.entitlements import service
from tongcrm.entitlements.catalogue import Recurrence
from tongcrm.jobs.queue import enqueue
from tongcrm.jobs.registry import registry
from tongcrm.jobs.runner import JobContext
from tongcrm.tiers.jobs import tier_context


async def _grant(ctx: JobContext, recurrence: Recurrence) -> None:
    tctx = tier_context(ctx)
    async with ctx.sessions() as session, session.begin():
        created = await service.grant_recurring(session, tctx, ctx.host, recurrence)
        if created:
            await enqueue(session, "entitlements.fulfil", {}, run_at=tctx.now)


@registry.job("entitlements.grant_monthly")
async def grant_monthly(ctx: JobContext, payload: dict[str, Any]) -> None:
    await _grant(ctx, Recurrence.MONTHLY)


@registry.job("entitlements.grant_birthdays")
async def grant_birthdays(ctx: JobContext, payload: dict[str, Any]) -> None:
    await _grant(ctx, Recurrence.BIRTHDAY)


@registry.job("entitlements.fulfil")
async def fulfil(ctx: JobContext, payload: dict[str, Any]) -> None:
    settings = ctx.services.get("settings")
    extra = settings.extra if isinstance(settings, Settings) else {}
    while await service.fulfil_due(ctx.sessions, ctx.host, tier_context(ctx), settings=extra):
        pass


registry.every("entitlements.grant_monthly", timedelta(hours=1), "entitlements.grant_monthly")
registry.every("entitlements.grant_birthdays", timedelta(hours=1), "entitlements.grant_birthdays")
registry.every("entitlements.fulfil", timedelta(minutes=1), "entitlements.fulfil")
