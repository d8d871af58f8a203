"""Messaging jobs: care-flow scheduling and firing, and the dispatcher (on demand and every 30 seconds)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.config import Settings
from tongcrm.jobs.queue import enqueue
from tongcrm.jobs.registry import registry
from tongcrm.jobs.runner import JobContext
from tongcrm.logging import get_logger
from tongcrm.messaging import flows
from tongcrm.messaging.dispatch import Dispatcher
from tongcrm.programme import service as programme

log = get_logger(__name__)

DISPATCH = "messaging.dispatch"
DISPATCH_EVERY = timedelta(seconds=30)
_BUCKET_SECONDS = 5


async def request_dispatch(session: AsyncSession, now: datetime) -> None:
    """Ask for a dispatch soon: one job per 5-second bucket, run at the bucket's end, so a burst of queued
    messages shares one dispatch (the periodic one catches anything later)."""
    bucket = int(now.timestamp()) // _BUCKET_SECONDS + 1
    await enqueue(
        session,
        DISPATCH,
        {},
        run_at=datetime.fromtimestamp(bucket * _BUCKET_SECONDS, UTC),
        unique_key=f"{DISPATCH}:{bucket}",
    )


@registry.job("messaging.care")
async def care_job(ctx: JobContext, payload: dict[str, Any]) -> None:
    flow = flows.get_flow(payload["flow"])
    order_id = int(payload["order_id"])
    occurred_at = datetime.fromisoformat(payload["occurred_at"])
    async with ctx.sessions() as session, session.begin():
        plan = await flows.schedule(session, flow, order_id, occurred_at)
        if plan.due is None:
            log.info("care flow not scheduled", flow=flow.name, order_id=order_id, reason=plan.reason)
            return
        occasion = payload.get("occasion")
        suffix = f":{occasion}" if occasion else ""
        await enqueue(
            session,
            "messaging.care.fire",
            {"flow": flow.name, "order_id": order_id, "occurred_at": occurred_at.isoformat()},
            run_at=max(plan.due, ctx.clock()),
            unique_key=f"care-fire:{flow.name}:{order_id}{suffix}",
        )


@registry.job("messaging.care.fire")
async def care_fire_job(ctx: JobContext, payload: dict[str, Any]) -> None:
    flow = flows.get_flow(payload["flow"])
    order_id = int(payload["order_id"])
    now = ctx.clock()
    async with ctx.sessions() as session, session.begin():
        outcome = await flows.fire(
            session, flow, order_id, datetime.fromisoformat(payload["occurred_at"]), now
        )
        if outcome == "queued":
            await request_dispatch(session, now)
    log.info("care flow fired", flow=flow.name, order_id=order_id, outcome=outcome)


@registry.job(DISPATCH)
async def dispatch_job(ctx: JobContext, payload: dict[str, Any]) -> None:
    settings: Settings = ctx.services["settings"]
    # the programme settings in force for this run (one read; a change applies from the next run)
    async with ctx.sessions() as session, session.begin():
        config = (await programme.current(session, settings)).policy()
    dispatcher = Dispatcher(ctx.sessions, ctx.host, settings.vault(), config, clock=ctx.clock)
    stats = await dispatcher.run()
    if stats.claimed:
        log.info(
            "messages dispatched",
            claimed=stats.claimed,
            sent=stats.sent,
            refused=stats.refused,
            deferred=stats.deferred,
            retrying=stats.retrying,
            failed=stats.failed,
            in_doubt=stats.in_doubt,
        )


registry.every(DISPATCH, DISPATCH_EVERY, DISPATCH)
