"""The quarantine, read: records ingest could not apply, newest first, for ``GET /api/ingest/quarantine`` and
the console's quarantine page alike, so both show the same records to the same roles."""

from __future__ import annotations

from datetime import datetime

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.channels.models import ChannelAccount, QuarantinedRecord
from tongcrm.crypto import Vault
from tongcrm.privacy.sealed import QUARANTINE_PAYLOAD, unseal


def _payload(vault: Vault, stored: str) -> str:
    try:
        return unseal(vault, stored, context=QUARANTINE_PAYLOAD)
    except ValueError as exc:  # its key is no longer configured
        return f"(sealed record not readable: {exc})"


class QuarantinedOut(msgspec.Struct):
    id: int
    account: str
    external_id: str | None
    reason: str
    #: the platform's record as it came (kept sealed at rest)
    payload: str
    created_at: datetime


class QuarantinePage(msgspec.Struct):
    items: list[QuarantinedOut]
    total: int
    limit: int
    offset: int


async def list_quarantine(
    session: AsyncSession, vault: Vault, *, account: str | None, limit: int, offset: int
) -> QuarantinePage:
    """One page of quarantined records (of one channel account when ``account`` names it)."""
    base = sa.select(QuarantinedRecord, ChannelAccount.name).join(
        ChannelAccount, ChannelAccount.id == QuarantinedRecord.account_id
    )
    if account:
        base = base.where(ChannelAccount.name == account)
    total = (await session.execute(sa.select(sa.func.count()).select_from(base.subquery()))).scalar_one()
    rows = (
        await session.execute(base.order_by(QuarantinedRecord.id.desc()).limit(limit).offset(offset))
    ).all()
    items = [
        QuarantinedOut(r.id, name, r.external_id, r.reason, _payload(vault, r.payload), r.created_at)
        for r, name in rows
    ]
    return QuarantinePage(items=items, total=total, limit=limit, offset=offset)


async def counts_by_account(session: AsyncSession) -> list[tuple[str, int]]:
    """Every channel account with how many records it has in quarantine, by name."""
    rows = await session.execute(
        sa.select(ChannelAccount.name, sa.func.count(QuarantinedRecord.id))
        .outerjoin(QuarantinedRecord, QuarantinedRecord.account_id == ChannelAccount.id)
        .group_by(ChannelAccount.name)
        .order_by(ChannelAccount.name)
    )
    return [(str(name), int(n)) for name, n in rows]
