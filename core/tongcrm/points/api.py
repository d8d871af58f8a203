"""Points HTTP API: a member's explained statement, redemptions, adjustments and transfers (each needs an
``Idempotency-Key``), and the earning rules with their dry run. Thin: parsing and roles here, logic in the service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import MAX_INT32, BodyId, PathId, PathInt32, QueryOffset
from tongcrm.api.security import READ_ROLES, WRITE_ROLES, requires
from tongcrm.audit.service import Actor
from tongcrm.auth.service import Principal, Role
from tongcrm.config import Settings
from tongcrm.db.base import utcnow
from tongcrm.db.engine import transaction
from tongcrm.db.lengths import fits
from tongcrm.members.service import register_view_section
from tongcrm.points import service
from tongcrm.points.ledger import MAX_ENTRY_POINTS
from tongcrm.points.models import PointsEntry, PointsRuleSet
from tongcrm.points.schemas import LedgerResult, PreviewOrderIn, PreviewOut, RuleSetOut, StatementOut

IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key", description="Required: retries with the same key and body are safe."
    ),
]


#: Points one request moves, bounded as the service bounds them (its own 422s say which sign it needs).
EntryPoints = Annotated[int, msgspec.Meta(ge=-MAX_ENTRY_POINTS, le=MAX_ENTRY_POINTS)]
#: A reason or note, as long as the ledger's and the rule sets' columns hold (a longer one was a 500 on PostgreSQL
#: and stored whole on SQLite).
Reason = Annotated[str, fits(PointsEntry.reason)]
#: A rule set's note, as long as its column holds.
Note = Annotated[str, fits(PointsRuleSet.note)]
#: An earning-rules version (a 32-bit column).
RuleVersion = Annotated[int, msgspec.Meta(ge=1, le=MAX_INT32)]


class RedemptionIn(msgspec.Struct, forbid_unknown_fields=True):
    points: EntryPoints
    reason: Reason = ""


class AdjustmentIn(msgspec.Struct, forbid_unknown_fields=True):
    points: EntryPoints
    reason: Reason
    expires_at: datetime | None = None


class TransferIn(msgspec.Struct, forbid_unknown_fields=True):
    to_member_id: BodyId
    points: EntryPoints
    reason: Reason = ""


class RuleSetIn(msgspec.Struct, forbid_unknown_fields=True):
    document: dict[str, Any]
    note: Note = ""
    activate: bool = False


class PreviewIn(msgspec.Struct, forbid_unknown_fields=True):
    order: PreviewOrderIn
    #: A draft rule-set document; omitted: the active rule set (or ``version``).
    rules: dict[str, Any] | None = None
    version: RuleVersion | None = None


def _ctx(settings: Settings, principal: Principal) -> service.PointsContext:
    return service.PointsContext(
        clock=utcnow,
        tz=settings.tz,
        actor=f"apikey:{principal.key_id}",
        auditor=Actor.of(principal),
    )


async def _once(
    sessions: async_sessionmaker[AsyncSession],
    ctx: service.PointsContext,
    *,
    key: str | None,
    kind: str,
    member_id: int,
    data: msgspec.Struct,
    action: Callable[[AsyncSession], Awaitable[LedgerResult]],
) -> Response[LedgerResult]:
    """One unit of work that runs ``action`` at most once per Idempotency-Key and answers 201 either way."""
    async with transaction(sessions) as session:
        result, replayed = await service.idempotent(
            session,
            key=key,
            kind=kind,
            member_id=member_id,
            body=msgspec.to_builtins(data),
            now=ctx.clock(),
            action=lambda: action(session),
        )
    return Response(result, status_code=201, headers={"Idempotent-Replayed": "true" if replayed else "false"})


class MemberPointsController(Controller):
    path = "/api/members/{member_id:int}/points"
    tags = ["points"]

    @get(
        "/",
        opt=requires(*READ_ROLES),
        summary="Balance and explained ledger entries, newest first",
    )
    async def get_statement(
        self,
        member_id: PathId,
        read_sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        offset: QueryOffset = 0,
    ) -> StatementOut:
        async with read_sessions() as session:
            return await service.statement(session, member_id, tz=settings.tz, limit=limit, offset=offset)

    @post("/redemptions", opt=requires(*WRITE_ROLES), summary="Spend points (FIFO by expiry)")
    async def redeem(
        self,
        member_id: PathId,
        data: JSONBody[RedemptionIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
        principal: NamedDependency[Principal],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[LedgerResult]:
        ctx = _ctx(settings, principal)
        return await _once(
            sessions,
            ctx,
            key=idempotency_key,
            kind="redemption",
            member_id=member_id,
            data=data,
            action=lambda session: service.redeem(
                session, ctx, member_id, data.points, key=str(idempotency_key), reason=data.reason
            ),
        )

    @post("/adjustments", opt=requires(*WRITE_ROLES), summary="Manual correction with a reason")
    async def adjust(
        self,
        member_id: PathId,
        data: JSONBody[AdjustmentIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
        principal: NamedDependency[Principal],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[LedgerResult]:
        ctx = _ctx(settings, principal)
        return await _once(
            sessions,
            ctx,
            key=idempotency_key,
            kind="adjustment",
            member_id=member_id,
            data=data,
            action=lambda session: service.adjust(
                session,
                ctx,
                member_id,
                data.points,
                key=str(idempotency_key),
                reason=data.reason,
                expires=data.expires_at,
            ),
        )

    @post("/transfers", opt=requires(*WRITE_ROLES), summary="Move points to another member atomically")
    async def transfer(
        self,
        member_id: PathId,
        data: JSONBody[TransferIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
        principal: NamedDependency[Principal],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[LedgerResult]:
        ctx = _ctx(settings, principal)
        return await _once(
            sessions,
            ctx,
            key=idempotency_key,
            kind="transfer",
            member_id=member_id,
            data=data,
            action=lambda session: service.transfer(
                session,
                ctx,
                member_id,
                data.to_member_id,
                data.points,
                key=str(idempotency_key),
                reason=data.reason,
            ),
        )


class PointsRulesController(Controller):
    path = "/api/points/rules"
    tags = ["points"]

    @get("/", opt=requires(*READ_ROLES), summary="Rule-set versions, newest first")
    async def list_rule_sets(
        self, read_sessions: NamedDependency[async_sessionmaker[AsyncSession]]
    ) -> list[RuleSetOut]:
        async with read_sessions() as session:
            return await service.list_rule_sets(session)

    @post("/", opt=requires(Role.ADMIN), summary="Store a new rule-set version (optionally activate it)")
    async def create_rule_set(
        self,
        data: JSONBody[RuleSetIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        principal: NamedDependency[Principal],
    ) -> RuleSetOut:
        async with transaction(sessions) as session:
            return await service.create_rule_set(
                session,
                data.document,
                now=datetime.now(UTC),
                note=data.note,
                actor=f"apikey:{principal.key_id}",
                activate=data.activate,
                auditor=Actor.of(principal),
            )

    @post(
        "/{version:int}/activate", opt=requires(Role.ADMIN), summary="Make a version the active one (audited)"
    )
    async def activate_rule_set(
        self,
        version: PathInt32,
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        principal: NamedDependency[Principal],
    ) -> RuleSetOut:
        async with transaction(sessions) as session:
            return await service.activate_rule_set(
                session, version, now=datetime.now(UTC), actor=Actor.of(principal)
            )

    @post(
        "/preview",
        # a preview writes nothing, so whoever may read may preview (as with tier ladders)
        opt=requires(*READ_ROLES),
        status_code=200,
        summary="Points an order would earn under the active, a stored or a draft rule set (writes nothing)",
    )
    async def preview(
        self,
        data: JSONBody[PreviewIn],
        read_sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
        principal: NamedDependency[Principal],
    ) -> PreviewOut:
        ctx = _ctx(settings, principal)
        async with read_sessions() as session:
            if data.rules is not None:
                rules, draft = service.draft_rules(data.rules), True
            elif data.version is not None:
                rules, draft = await service.rule_set(session, data.version), False
            else:
                rules, draft = await service.active_rules(session), False
            return await service.preview(session, ctx, data.order, rules, draft=draft)


async def _points_section(session: AsyncSession, member_id: int) -> dict[str, Any] | None:
    """The ``points`` block of the member 360 view."""
    return await service.view_section(session, member_id, now=datetime.now(UTC))


register_view_section("points", _points_section)
