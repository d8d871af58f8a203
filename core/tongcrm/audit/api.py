"""``GET /api/audit``: the audit log, for admins only."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import MAX_ID, QueryId
from tongcrm.api.security import requires
from tongcrm.audit.service import AuditQuery, search
from tongcrm.auth.service import Role
from tongcrm.members.schemas import AuditOut, AuditPage


class AuditController(Controller):
    path = "/api/audit"
    tags = ["audit"]
    opt = requires(Role.ADMIN)

    @get("/", summary="Audit entries, newest first (keyset pagination)")
    async def list_entries(
        self,
        read_sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        action: FromQuery[str | None] = None,
        object_type: FromQuery[str | None] = None,
        object_id: FromQuery[str | None] = None,
        actor_key_id: QueryId = None,
        before: Annotated[
            int | None, QueryParameter(ge=1, le=MAX_ID, description="next_cursor of the previous page")
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    ) -> AuditPage:
        query = AuditQuery(action, object_type, object_id, actor_key_id, before, limit)
        async with read_sessions() as session, session.begin():
            rows = await search(session, query)
        items = [msgspec.convert(r, AuditOut, from_attributes=True) for r in rows]
        return AuditPage(items, items[-1].id if len(items) == limit else None)
