"""Points jobs: expire lots at their expiry time and release pending lots whose return window has ended.

Both run periodically; each pass works in short transactions of a few hundred lots until nothing is due, and
both are idempotent (expiry keys are ``expire:{lot_id}``; a released lot is no longer pending).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tongcrm.jobs.registry import registry
from tongcrm.jobs.runner import JobContext
from tongcrm.logging import get_logger
from tongcrm.points.ledger import expire_due, release_due

log = get_logger(__name__)

BATCH = 500
EVERY = timedelta(minutes=5)


@registry.job("points.expire")
async def expire_job(ctx: JobContext, payload: dict[str, Any]) -> None:
    total = 0
    while True:
        async with ctx.sessions() as session, session.begin():
            done = await expire_due(session, now=ctx.clock(), limit=BATCH)
        total += done
        if done < BATCH:
            break
    if total:
        log.info("points lots expired", lots=total, job_id=ctx.job_id)


@registry.job("points.release")
async def release_job(ctx: JobContext, payload: dict[str, Any]) -> None:
    total = 0
    while True:
        async with ctx.sessions() as session, session.begin():
            done = await release_due(session, now=ctx.clock(), limit=BATCH)
        total += done
        if done < BATCH:
            break
    if total:
        log.info("pending points released", lots=total, job_id=ctx.job_id)


registry.every("points.expire", EVERY, "points.expire")
registry.every("points.release", EVERY, "points.release")
