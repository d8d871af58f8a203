"""Periodic sync: every few minutes, one job per active account (lock key = the account, so runs never overlap;
the sync's own lease guards against anything else that syncs it, like an operator's ``tongcrm sync``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from tongcrm.channels.models import ChannelAccount
from tongcrm.config import Settings
from tongcrm.ingest.apply import IngestContext
from tongcrm.ingest.backfill import WINDOW_JOB, work_window
from tongcrm.ingest.push import poll_push
from tongcrm.ingest.service import active_accounts, sync_account, worker_name
from tongcrm.jobs.queue import enqueue
from tongcrm.jobs.registry import registry
from tongcrm.jobs.runner import JobContext
from tongcrm.logging import get_logger
from tongcrm.plugin.types import ChannelCapability

log = get_logger(__name__)

SYNC_EVERY = timedelta(minutes=5)
PUSH_EVERY = timedelta(seconds=5)


def ingest_context(ctx: JobContext) -> IngestContext:
    settings: Settings = ctx.services["settings"]
    return IngestContext(
        host=ctx.host,
        vault=settings.vault(),
        clock=ctx.clock,
        tz=settings.tz,
        actor="sync-job",
        lease_ttl=timedelta(seconds=settings.sync_lease_seconds),
        fetch_process=settings.sync_fetch_process,
    )


@registry.job("ingest.sync_all")
async def sync_all(ctx: JobContext, payload: dict[str, Any]) -> None:
    async with ctx.sessions() as session, session.begin():
        names = await active_accounts(session)
        slot = ctx.clock().replace(second=0, microsecond=0).isoformat()
        for name in names:
            await enqueue(
                session,
                "ingest.sync_account",
                {"account": name},
                unique_key=f"sync:{name}:{slot}",
                lock_key=f"sync:{name}",
            )


@registry.job("ingest.sync_account")
async def sync_one(ctx: JobContext, payload: dict[str, Any]) -> None:
    # the lease is held per job: a worker running two jobs at once must not run two syncs of one account
    report = await sync_account(
        ctx.sessions, ingest_context(ctx), payload["account"], holder=f"{worker_name()}:job-{ctx.job_id}"
    )
    if report.error and not report.needs_reauth:
        # a platform hiccup: fail the job so it is retried with backoff
        raise RuntimeError(report.error)


@registry.job(WINDOW_JOB)
async def backfill_window(ctx: JobContext, payload: dict[str, Any]) -> None:
    """One window of a backfill (see :mod:`tongcrm.ingest.backfill`); resumes from the window's cursor."""
    report = await work_window(
        ctx.sessions, ingest_context(ctx), payload["window"], holder=f"{worker_name()}:job-{ctx.job_id}"
    )
    if report.busy:
        # another worker (or ``tongcrm sync --parallel``) has it: look again later, in case that one dies
        raise RuntimeError(f"backfill window {report.window_id} is being worked by another worker")
    if report.error:
        # unlike the periodic sync, nothing would come back for this window: retry it with backoff (an account
        # re-authorised within the attempts resumes it; after them, ``tongcrm backfills --resume`` does)
        raise RuntimeError(report.error)


@registry.job("ingest.push_all")
async def push_all(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Drain the push channel of every account whose channel pushes (e.g. Taobao TMC)."""
    push_channels = [
        name for name, spec in ctx.host.channels().items() if ChannelCapability.PUSH in spec.capabilities
    ]
    if not push_channels:
        return
    async with ctx.sessions() as session:
        names = list(
            (
                await session.execute(
                    sa.select(ChannelAccount.name).where(
                        ChannelAccount.status == "active", ChannelAccount.channel.in_(push_channels)
                    )
                )
            ).scalars()
        )
    for name in names:
        report = await poll_push(ctx.sessions, ingest_context(ctx), name, holder=f"job-{ctx.job_id}")
        if report.error:
            log.warning("push polling failed", account=name, error=report.error)


registry.every("ingest.sync", SYNC_EVERY, "ingest.sync_all")
registry.every("ingest.push", PUSH_EVERY, "ingest.push_all")
