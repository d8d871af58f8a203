"""The quarantine: platform records that could not be applied, for an operator to look at."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import QueryOffset
from tongcrm.api.security import READ_ROLES, requires
from tongcrm.crypto import Vault
from tongcrm.ingest import quarantine
from tongcrm.ingest.quarantine import QuarantinePage


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
        async with read_sessions() as session:
            return await quarantine.list_quarantine(
                session, vault, account=account, limit=limit, offset=offset
            )
