"""Entitlement HTTP API: the catalogue, a member's entitlements and grants, and recording a use — of a grant by
its id, or of a member's standing benefit by its kind (what a till or an order system knows)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import PathId
from tongcrm.api.security import READ_ROLES, WRITE_ROLES, requires
from tongcrm.auth.service import Principal
from tongcrm.config import Settings
from tongcrm.db.engine import transaction
from tongcrm.entitlements import service
from tongcrm.entitlements.models import EntitlementGrant, EntitlementUsage
from tongcrm.tiers.schemas import GrantOut, MemberEntitlementsOut, UsageIn, UsageOut
from tongcrm.tiers.service import TierContext


def _standing_out(g: EntitlementGrant, uses: service.StandingUse) -> GrantOut:
    out = _grant_out(g, [])
    out.used_at = uses.last_at
    out.uses = uses.count
    return out


def _grant_out(g: EntitlementGrant, usages: list[EntitlementUsage]) -> GrantOut:
    return GrantOut(
        g.id,
        g.grant_key,
        g.kind,
        g.tier_code,
        g.value,
        dict(g.params or {}),
        g.valid_from,
        g.valid_until,
        g.status,
        g.provider,
        g.attempts,
        g.reference,
        g.last_error,
        usages[0].used_at if usages else None,
        len(usages),
    )


async def _record_use(
    sessions: async_sessionmaker[AsyncSession],
    use: Callable[[AsyncSession], Awaitable[tuple[EntitlementUsage, bool]]],
) -> Response[UsageOut]:
    """One use in one unit of work: 201 when it was recorded now, 200 when its usage key was seen before."""
    async with transaction(sessions) as session:
        usage, created = await use(session)
        out = _usage_out(usage)
    return Response(out, status_code=201 if created else 200)


def _usage_out(u: EntitlementUsage) -> UsageOut:
    return UsageOut(u.id, u.grant_id, u.member_id, u.usage_key, u.reference, u.used_at)


class EntitlementController(Controller):
    path = "/api/entitlements"
    tags = ["entitlements"]

    @get("/catalogue", opt=requires(*READ_ROLES), summary="Entitlement kinds and how their values compare")
    async def get_catalogue(self) -> list[dict[str, Any]]:
        return service.catalogue()

    @post(
        "/grants/{grant_id:int}/usages",
        opt=requires(*WRITE_ROLES),
        summary="Record that a grant was used (idempotent by usage_key)",
    )
    async def use_grant(
        self,
        grant_id: PathId,
        data: JSONBody[UsageIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
        principal: NamedDependency[Principal],
    ) -> Response[UsageOut]:
        return await _record_use(
            sessions,
            lambda session: service.use(
                session,
                TierContext.of(settings),
                grant_id,
                usage_key=data.usage_key,
                reference=data.reference,
                actor=f"key:{principal.key_id}",
            ),
        )


class MemberEntitlementsController(Controller):
    path = "/api/members/{member_id:int}/entitlements"
    tags = ["entitlements"]

    @get(
        "/",
        opt=requires(*READ_ROLES),
        summary="Live standing grants of the member's tier and recent recurring grants",
    )
    async def get_entitlements(
        self,
        member_id: PathId,
        read_sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
    ) -> MemberEntitlementsOut:
        async with read_sessions() as session:
            found = await service.for_member(session, TierContext.of(settings), member_id)
        return MemberEntitlementsOut(
            member_id,
            found.tier.code,
            [_standing_out(g, found.standing_uses[g.id]) for g in found.standing],
            [_grant_out(g, found.usages.get(g.id, [])) for g in found.grants],
        )

    @post(
        "/{kind:str}/usages",
        opt=requires(*WRITE_ROLES),
        summary="Record a use of the member's standing benefit of this kind (idempotent by usage_key)",
    )
    async def use_standing(
        self,
        member_id: PathId,
        kind: FromPath[str],
        data: JSONBody[UsageIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
        principal: NamedDependency[Principal],
    ) -> Response[UsageOut]:
        return await _record_use(
            sessions,
            lambda session: service.use_standing(
                session,
                TierContext.of(settings),
                member_id,
                kind,
                usage_key=data.usage_key,
                reference=data.reference,
                actor=f"key:{principal.key_id}",
            ),
        )
