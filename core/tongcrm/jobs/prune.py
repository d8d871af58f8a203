"""Deleting finished job rows once they are old, so the ``jobs`` table (a working table that churns) stays the
size of its recent past instead of growing for ever.

Only ``done`` and ``parked`` rows go: a ``queued`` or ``running`` row is work still to do (a running row whose
worker died is claimed again through its lock), and nothing else points at a job row — no foreign key names
``jobs.id``, leases are keyed by lock names and held only while a job runs, and backfill windows carry their
own state. What a finished row still does is keep its ``unique_key`` taken; the keys in use either name a slot
or an event that never comes again (periodic slots, event ids, window ids, versions) or guard effects that have
their own once-only keys (a care flow's message has its send-log ``dedupe_key``), so the retention only has to
outlast how long an operator wants to read ``last_error`` of parked jobs.

Rows go in batches, one short transaction each, so a first run over a table that grew for years never holds
a long lock or a long transaction; a run stops after ``max_batches`` and the next run continues.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.config import Settings
from tongcrm.jobs.models import Job
from tongcrm.jobs.registry import registry
from tongcrm.jobs.runner import JobContext
from tongcrm.logging import get_logger

log = get_logger(__name__)

#: The states a job never leaves by itself: it succeeded, or failed its last attempt.
FINISHED = ("done", "parked")
DEFAULT_RETENTION = timedelta(days=14)
BATCH = 10_000
#: Batches in one run (a million rows): the rest waits for the next run, so one run stays bounded.
MAX_BATCHES = 100


async def prune_finished(
    sessions: async_sessionmaker[AsyncSession],
    now: datetime,
    retention: timedelta = DEFAULT_RETENTION,
    *,
    batch: int = BATCH,
    max_batches: int = MAX_BATCHES,
) -> int:
    """Delete finished jobs that finished before ``now - retention``; returns how many went."""
    cutoff = now - retention
    old = (
        sa.select(Job.id)
        .where(Job.status.in_(FINISHED), Job.finished_at < cutoff)
        .limit(batch)
        .scalar_subquery()
    )
    # the status is checked again on the row itself: a row picked in the subquery cannot have changed state
    # in between (finished rows are never updated), but the condition keeps the statement safe on its own
    delete = sa.delete(Job).where(Job.id.in_(old), Job.status.in_(FINISHED), Job.finished_at < cutoff)
    total = 0
    for _ in range(max_batches):
        async with sessions() as session, session.begin():
            deleted = cast(CursorResult[Any], await session.execute(delete)).rowcount
        total += deleted
        if deleted < batch:
            break
    return total


def retention_of(settings: object) -> timedelta:
    days = settings.jobs_retention_days if isinstance(settings, Settings) else DEFAULT_RETENTION.days
    return timedelta(days=days)


@registry.job("jobs.prune")
async def prune(ctx: JobContext, payload: dict[str, Any]) -> None:
    retention = retention_of(ctx.services.get("settings"))
    if retention <= timedelta(0):
        return  # TONGCRM_JOBS_RETENTION_DAYS=0: the operator keeps every job
    deleted = await prune_finished(ctx.sessions, ctx.clock(), retention)
    if deleted:
        log.info("finished jobs pruned", jobs=deleted, retention_days=retention.days)


registry.every("jobs.prune", timedelta(hours=1), "jobs.prune")
