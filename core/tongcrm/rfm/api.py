"""RFM HTTP API: the settings in force (admins change them; audited), a member's scores, members per cell and
a full recompute on demand."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import PathId
from tongcrm.api.security import READ_ROLES, requires
from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.auth.service import Principal, Role
from tongcrm.errors import NotFound
from tongcrm.jobs.queue import enqueue
from tongcrm.members.service import register_view_section
from tongcrm.plugin.host import PluginHost
from tongcrm.rfm import service

Sessions = async_sessionmaker[AsyncSession]


class PolicyOut(msgspec.Struct):
    version: int
    window_days: int
    channels: list[str]


class MemberRfmOut(msgspec.Struct):
    member_id: int
    recency_days: int
    frequency: int
    monetary_fen: int
    r: int
    f: int
    m: int
    cell: str
    cell_name: str
    computed_at: datetime


class CellOut(msgspec.Struct):
    cell: str
    name: str
    members: int


class CellsOut(msgspec.Struct):
    cells: list[CellOut]
    #: The latest run (None: never computed): its kind and moment.
    last_run_kind: str | None
    last_run_as_of: datetime | None


class RecomputeOut(msgspec.Struct):
    queued: bool


def _policy_out(p: service.Policy) -> PolicyOut:
    return PolicyOut(p.version, p.window_days, list(p.channels))


class RfmController(Controller):
    path = "/api/rfm"
    tags = ["rfm"]

    @get(
        "/policy", opt=requires(*READ_ROLES), summary="The RFM window and channel scope (version 0: defaults)"
    )
    async def get_policy(self, read_sessions: NamedDependency[Sessions]) -> PolicyOut:
        async with read_sessions() as session:
            return _policy_out(await service.current_policy(session))

    @put("/policy", opt=requires(Role.ADMIN), summary="New RFM settings (audited); a full recompute follows")
    async def set_policy(
        self,
        data: JSONBody[dict[str, Any]],
        sessions: NamedDependency[Sessions],
        host: NamedDependency[PluginHost],
        principal: NamedDependency[Principal],
    ) -> PolicyOut:
        async with sessions() as session, session.begin():
            return _policy_out(await service.set_policy(session, host, data, Actor.of(principal)))

    @get("/cells", opt=requires(*READ_ROLES), summary="Members in each of the eight RFM cells")
    async def cells(self, read_sessions: NamedDependency[Sessions]) -> CellsOut:
        async with read_sessions() as session:
            counts = await service.cell_counts(session)
            run = await service.latest_run(session)
        return CellsOut(
            [CellOut(code, service.CELL_NAMES[code], n) for code, n in counts.items()],
            run.kind if run else None,
            run.as_of if run else None,
        )

    @get("/members/{member_id:int}", opt=requires(*READ_ROLES), summary="A member's RFM scores")
    async def member(self, member_id: PathId, read_sessions: NamedDependency[Sessions]) -> MemberRfmOut:
        async with read_sessions() as session:
            await service.require_member(session, member_id)
            found = await service.member_rfm(session, member_id)
        if found is None:
            raise NotFound(
                f"member {member_id} has no RFM scores (no counted order in the window, or not computed)"
            )
        return MemberRfmOut(member_id, **{k: getattr(found, k) for k in found.__slots__})

    @post(
        "/recompute",
        opt=requires(Role.ADMIN),
        status_code=202,
        summary="Queue a full recompute (audited)",
    )
    async def recompute(
        self, sessions: NamedDependency[Sessions], principal: NamedDependency[Principal]
    ) -> RecomputeOut:
        async with sessions() as session, session.begin():
            queued = await enqueue(session, "rfm.recompute", {"full": True})
            audit.record(session, Actor.of(principal), "rfm.recompute", "rfm", 0, after={"full": True})
        return RecomputeOut(queued)


async def _rfm_section(session: AsyncSession, member_id: int) -> dict[str, Any] | None:
    found = await service.member_rfm(session, member_id)
    return found.as_dict() if found else None


register_view_section("rfm", _rfm_section)
