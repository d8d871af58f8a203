"""The quarantine: platform records that could not be applied, for an operator to look at."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
import sqlalchemy as sa
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import QueryOffset
from tongcrm.api.security import READ_ROLES, requires
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


class QuarantineController(Controller):
    path = "/api/ingest/quarantine"
    tags = ["ingest"]
    opt = requires(*READ_ROLES)

    @get("/", summary="Records quarantined by ingest, newest first")
    async def list_quarantine(
        self,
        read_sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        vault: NamedDependency[Vault],
        account: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        offset: QueryOffset = 0,
    ) -> QuarantinePage:
        base = sa.select(QuarantinedRecord, ChannelAccount.name).join(
            ChannelAccount, ChannelAccount.id == QuarantinedRecord.account_id
        )
        if account:
            base = base.where(ChannelAccount.name == account)
        async with read_sessions() as session:
            total = (
                await session.execute(sa.select(sa.func.count()).select_from(base.subquery()))
            ).scalar_one()
            rows = (
                await session.execute(base.order_by(QuarantinedRecord.id.desc()).limit(limit).offset(offset))
            ).all()
        items = [
            QuarantinedOut(r.id, name, r.external_id, r.reason, _payload(vault, r.payload), r.created_at)
            for r, name in rows
        ]
        return QuarantinePage(items=items, total=total, limit=limit, offset=offset)
