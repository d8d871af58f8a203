"""``GET /api/audit``: the audit log, and ``GET /api/audit/verify``: its hash chain checked; for admins only."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import MAX_ID, QueryId
from tongcrm.api.security import requires
from tongcrm.audit import chain
from tongcrm.audit.service import AuditQuery, search
from tongcrm.auth.service import Role
from tongcrm.members.schemas import AuditOut, AuditPage


class FindingOut(msgspec.Struct, frozen=True):
    kind: str
    detail: str
    seq: int | None
    record_id: int | None


class ChainOut(msgspec.Struct, frozen=True):
    """``ok`` is false when any record was edited, inserted or removed behind the application's back."""

    ok: bool
    records: int
    head_seq: int
    head_hash: str
    findings: list[FindingOut]


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

    @get(
        "/verify",
        summary="Walk the audit log's hash chain and report every edited, inserted or removed record",
    )
    async def verify_chain(
        self, read_sessions: NamedDependency[async_sessionmaker[AsyncSession]]
    ) -> ChainOut:
        async with read_sessions() as session, session.begin():
            report = await chain.verify(session)
        return ChainOut(
            report.ok,
            report.records,
            report.head_seq,
            report.head_hash,
            [FindingOut(f.kind, f.detail, f.seq, f.record_id) for f in report.findings],
        )
