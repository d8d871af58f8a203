"""Applying what channels push (e.g. Taobao TMC messages), so payments and shipments arrive within seconds.

A push batch is applied like a sync page, forward only, in one transaction that also records the batch's
message ids; the platform is acknowledged only after that commit. A crash before the acknowledgement means the
platform redelivers, and the redelivery changes nothing. Sync remains the safety net for anything a push missed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.channels import service as accounts
from tongcrm.channels.models import PushMessage
from tongcrm.db.base import utcnow
from tongcrm.db.dialect import insert
from tongcrm.errors import Conflict
from tongcrm.ingest.apply import IngestContext, apply_orders_page
from tongcrm.jobs import leases
from tongcrm.limits.gate import DatabaseCallGate
from tongcrm.logging import get_logger
from tongcrm.plugin.errors import ChannelAuthError, ChannelError
from tongcrm.plugin.types import ChannelCapability, PushSource

log = get_logger(__name__)


@dataclass(slots=True)
class PushReport:
    account: str
    batches: int = 0
    messages: int = 0
    new_messages: int = 0
    applied: int = 0
    quarantined: int = 0
    error: str | None = None


async def poll_push(
    sessions: async_sessionmaker[AsyncSession],
    ctx: IngestContext,
    name: str,
    *,
    holder: str,
    max_batches: int = 20,
) -> PushReport:
    """Drain an account's push channel (up to ``max_batches``)."""
    report = PushReport(account=name)
    key = f"push:{name}"
    async with sessions() as session, session.begin():
        account = await accounts.get_account(session, name)
        spec = ctx.host.channel(account.channel)
        if ChannelCapability.PUSH not in spec.capabilities or account.status != "active":
            return report
        if not await leases.acquire(session, key, holder, ctx.lease_ttl, now=ctx.clock()):
            raise Conflict(f"push channel of {name!r} is being drained by another worker")
        account_id, channel = account.id, account.channel
        channel_ctx = accounts.channel_context(
            account, ctx.vault, clock=ctx.clock, call_gate=DatabaseCallGate(sessions)
        )
    adapter = spec.factory(channel_ctx)
    try:
        if not isinstance(adapter, PushSource):
            report.error = f"channel {channel!r} declares push but its adapter has no fetch_push/ack_push"
            return report
        for _ in range(max_batches):
            try:
                batch = await adapter.fetch_push()
            except ChannelAuthError as exc:
                report.error = f"authorisation failed: {exc.message}"
                async with sessions() as session, session.begin():
                    await accounts.mark_status(session, account_id, "needs_reauth", exc.message)
                break
            except ChannelError as exc:
                report.error = f"{type(exc).__name__}: {exc.message}"
                break
            if not batch.message_ids and not batch.orders and not batch.quarantined:
                break
            async with sessions() as session, session.begin():
                if not await leases.acquire(session, key, holder, ctx.lease_ttl, now=ctx.clock()):
                    raise Conflict(f"lost the push lease of {name!r}")
                new = await _record_messages(session, account_id, batch.message_ids)
                result = await apply_orders_page(
                    session, ctx, account_id, channel, batch.orders, batch.quarantined
                )
            await adapter.ack_push(batch)
            report.batches += 1
            report.messages += len(batch.message_ids)
            report.new_messages += new
            report.applied += result.applied
            report.quarantined += result.quarantined
            log.info(
                "push batch applied", account=name, messages=len(batch.message_ids), applied=result.applied
            )
    finally:
        await adapter.aclose()
        async with sessions() as session, session.begin():
            await leases.release(session, key, holder)
    return report


async def _record_messages(session: AsyncSession, account_id: int, message_ids: tuple[str, ...]) -> int:
    if not message_ids:
        return 0
    stmt = insert(session, PushMessage.__table__).values(
        [
            {"account_id": account_id, "message_id": m, "received_at": utcnow()}
            for m in dict.fromkeys(message_ids)
        ]
    )
    result = await session.execute(
        stmt.on_conflict_do_nothing(index_elements=["account_id", "message_id"]).returning(
            PushMessage.message_id
        )
    )
    return len(result.all())
