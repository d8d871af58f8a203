"""Tag rules over HTTP (operators create and disable them; audited) and a member's tag history."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import PathId
from tongcrm.api.security import READ_ROLES, WRITE_ROLES, requires
from tongcrm.audit.service import Actor
from tongcrm.auth.service import Principal
from tongcrm.db.base import utcnow
from tongcrm.jobs.queue import enqueue
from tongcrm.tagrules import service
from tongcrm.tagrules.models import TagRule

Sessions = async_sessionmaker[AsyncSession]


class RuleOut(msgspec.Struct):
    id: int
    tag: str
    segment_id: int
    enabled: bool
    created_by: str
    created_at: datetime
    last_run_at: datetime | None


class DisabledOut(msgspec.Struct):
    id: int
    untagged: int


class HistoryOut(msgspec.Struct):
    tag: str
    action: str
    at: datetime
    rule_id: int | None
    actor: str | None


def _out(r: TagRule) -> RuleOut:
    return RuleOut(r.id, r.tag, r.segment_id, r.enabled, r.created_by, r.created_at, r.last_run_at)


class TagRuleController(Controller):
    path = "/api/tag-rules"
    tags = ["tags"]

    @get("/", opt=requires(*READ_ROLES), summary="Tag rules")
    async def list_rules(self, read_sessions: NamedDependency[Sessions]) -> list[RuleOut]:
        async with read_sessions() as session:
            return [_out(r) for r in await service.list_rules(session)]

    @post(
        "/", opt=requires(*WRITE_ROLES), summary="A tag defined by a saved segment (applied at once by a job)"
    )
    async def create(
        self,
        data: JSONBody[dict[str, Any]],
        sessions: NamedDependency[Sessions],
        principal: NamedDependency[Principal],
    ) -> RuleOut:
        async with sessions() as session, session.begin():
            rule = await service.create_rule(session, data, Actor.of(principal))
            await enqueue(session, "tags.rules", {"rule_id": rule.id})
            return _out(rule)

    @delete("/{rule_id:int}", opt=requires(*WRITE_ROLES), status_code=200, summary="Disable a rule and untag")
    async def disable(
        self,
        rule_id: PathId,
        sessions: NamedDependency[Sessions],
        principal: NamedDependency[Principal],
    ) -> DisabledOut:
        async with sessions() as session, session.begin():
            done = await service.disable_rule(session, rule_id, Actor.of(principal), utcnow())
        return DisabledOut(done.rule_id, done.removed)


class TagHistoryController(Controller):
    path = "/api/members/{member_id:int}/tag-history"
    tags = ["tags"]

    @get("/", opt=requires(*READ_ROLES), summary="Tags put on and taken off the member, newest first")
    async def member_history(
        self,
        member_id: PathId,
        read_sessions: NamedDependency[Sessions],
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> list[HistoryOut]:
        async with read_sessions() as session:
            rows = await service.history(session, member_id, limit=limit)
        return [HistoryOut(r.tag, r.action, r.at, r.rule_id, r.actor) for r in rows]
