"""Lifecycle HTTP API: the thresholds in force (admins change them; audited) and a member's stage history."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import PathId
from tongcrm.api.security import READ_ROLES, requires
from tongcrm.audit.service import Actor
from tongcrm.auth.service import Principal, Role
from tongcrm.lifecycle import service

Sessions = async_sessionmaker[AsyncSession]


class PolicyOut(msgspec.Struct):
    version: int
    new_days: int
    dormant_days: int
    churned_days: int


class ChangeOut(msgspec.Struct):
    from_stage: str
    to_stage: str
    policy_version: int
    at: datetime


def _policy_out(p: service.Policy) -> PolicyOut:
    return PolicyOut(p.version, p.new_days, p.dormant_days, p.churned_days)


class LifecycleController(Controller):
    path = "/api/lifecycle"
    tags = ["lifecycle"]

    @get(
        "/policy",
        opt=requires(*READ_ROLES),
        summary="The stage thresholds in force (version 0: the defaults)",
    )
    async def get_policy(self, read_sessions: NamedDependency[Sessions]) -> PolicyOut:
        async with read_sessions() as session:
            return _policy_out(await service.current_policy(session))

    @put("/policy", opt=requires(Role.ADMIN), summary="New thresholds (audited); every member is re-derived")
    async def set_policy(
        self,
        data: JSONBody[dict[str, Any]],
        sessions: NamedDependency[Sessions],
        principal: NamedDependency[Principal],
    ) -> PolicyOut:
        async with sessions() as session, session.begin():
            return _policy_out(await service.set_policy(session, data, Actor.of(principal)))

    @get(
        "/members/{member_id:int}/history",
        opt=requires(*READ_ROLES),
        summary="A member's stage changes, newest first",
    )
    async def member_history(
        self,
        member_id: PathId,
        read_sessions: NamedDependency[Sessions],
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> list[ChangeOut]:
        async with read_sessions() as session:
            rows = await service.history(session, member_id, limit=limit)
        return [ChangeOut(r.from_stage, r.to_stage, r.policy_version, r.at) for r in rows]
