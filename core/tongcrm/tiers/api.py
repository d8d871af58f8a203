"""Tier HTTP API: the ladder (versions, preview, apply), a member's tier with its projections, history and
overrides. Thin: roles and shapes here, logic in :mod:`tongcrm.tiers.service`."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import PathId, problems
from tongcrm.api.security import READ_ROLES, WRITE_ROLES, requires
from tongcrm.audit.service import Actor
from tongcrm.auth.service import Principal, Role
from tongcrm.config import Settings
from tongcrm.db.engine import transaction
from tongcrm.errors import NotFound
from tongcrm.members.service import register_view_section
from tongcrm.tiers import service
from tongcrm.tiers.ladder import Shortfall, Tier
from tongcrm.tiers.models import TierLadder
from tongcrm.tiers.schemas import (
    HistoryOut,
    KeepOut,
    LadderIn,
    LadderOut,
    MemberTierOut,
    MetricOut,
    MoveOut,
    NextTierOut,
    OverrideIn,
    OverrideOut,
    PreviewOut,
    ShortfallOut,
    TierCountOut,
    TierRef,
)


def _ctx(settings: Settings, principal: Principal | None = None) -> service.TierContext:
    return service.TierContext.of(settings, actor=f"key:{principal.key_id}" if principal else "system")


def _ref(tier: Tier) -> TierRef:
    return TierRef(tier.code, tier.name, tier.rank)


def _needs(ways: list[list[Shortfall]]) -> list[list[ShortfallOut]]:
    return [
        [ShortfallOut(s.metric, s.months, s.minimum, s.value, s.missing, s.describe()) for s in way]
        for way in ways
    ]


def _ladder_out(row: TierLadder) -> LadderOut:
    return LadderOut(row.version, row.definition, row.reason, row.created_by, row.created_at)


class TierController(Controller):
    path = "/api/tiers"
    tags = ["tiers"]

    @get("/ladder", opt={**requires(*READ_ROLES), **problems(404)}, summary="The ladder in force")
    async def get_ladder(self, read_sessions: NamedDependency[async_sessionmaker[AsyncSession]]) -> LadderOut:
        async with read_sessions() as session:
            versions = await service.ladder_versions(session)
        if not versions:
            raise NotFound("no tier ladder is configured yet: PUT /api/tiers/ladder first")
        return _ladder_out(versions[0])

    @get("/ladder/versions", opt=requires(*READ_ROLES), summary="Every ladder version, newest first")
    async def list_versions(
        self, read_sessions: NamedDependency[async_sessionmaker[AsyncSession]]
    ) -> list[LadderOut]:
        async with read_sessions() as session:
            return [_ladder_out(r) for r in await service.ladder_versions(session)]

    @put(
        "/ladder",
        opt=requires(Role.ADMIN),
        status_code=201,
        summary="Apply a new ladder version (audited; upgrades follow at once, drops wait for each member's review)",
    )
    async def apply(
        self,
        data: JSONBody[LadderIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
        principal: NamedDependency[Principal],
    ) -> LadderOut:
        async with transaction(sessions) as session:
            ladder = await service.apply_ladder(
                session, _ctx(settings, principal), data.ladder, reason=data.reason, actor=Actor.of(principal)
            )
            row = await session.get(TierLadder, ladder.version)
            assert row is not None
            return _ladder_out(row)

    @post(
        "/preview",
        # a preview writes nothing, so whoever may read may preview (as with points rules)
        opt=requires(*READ_ROLES),
        status_code=200,
        summary="How many members a draft ladder would move up (at once) and down (at their review), per tier",
    )
    async def preview(
        self,
        data: JSONBody[LadderIn],
        read_sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
    ) -> PreviewOut:
        async with read_sessions() as session:
            result = await service.preview(session, _ctx(settings), data.ladder)
        return PreviewOut(
            result.up,
            result.down,
            [MoveOut(m.from_code, m.to_code, m.members, m.when) for m in result.moves],
            [
                TierCountOut(t.code, *(getattr(t, f) for f in TierCountOut.__struct_fields__[1:]))
                for t in result.tiers
            ],
        )


class MemberTierController(Controller):
    path = "/api/members/{member_id:int}/tier"
    tags = ["tiers"]

    @get(
        "/",
        opt=requires(*READ_ROLES),
        summary="The member's tier, metric values, what the next tier needs and what keeping this one needs",
    )
    async def get_tier(
        self,
        member_id: PathId,
        read_sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
    ) -> MemberTierOut:
        async with read_sessions() as session:
            st = await service.status(session, _ctx(settings), member_id)
        override = None
        if st.override is not None and st.override.override_code and st.override.override_until:
            override = OverrideOut(
                st.override.override_code,
                st.override.override_until,
                st.override.override_reason or "",
                st.override.override_by or "",
            )
        return MemberTierOut(
            member_id=member_id,
            ladder_version=st.ladder.version,
            tier=_ref(st.tier),
            held_tier=_ref(st.held),
            qualified_tier=_ref(st.qualified),
            since=st.since,
            review_on=st.review_on,
            override=override,
            metrics=[MetricOut(m.metric, m.months, m.value) for m in st.metrics],
            next_tier=None
            if st.next is None
            else NextTierOut(_ref(st.next.tier), _needs(st.next.ways), st.next.message),
            keep=None
            if st.keep is None
            else KeepOut(
                st.keep.review_on,
                st.keep.safe,
                None if st.keep.drop_to is None else _ref(st.keep.drop_to),
                _needs(st.keep.ways),
                [MetricOut(m.metric, m.months, m.value) for m in st.keep.projected],
                st.keep.message,
            ),
            entitlements=[e.as_dict() for e in st.tier.entitlements],
        )

    @get("/history", opt=requires(*READ_ROLES), summary="Tier changes with their reasons, newest first")
    async def get_history(
        self,
        member_id: PathId,
        read_sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        limit: Annotated[int, Parameter(ge=1, le=500)] = 100,
    ) -> list[HistoryOut]:
        async with read_sessions() as session:
            rows = await service.history(session, member_id, limit=limit)
        return [
            HistoryOut(r.id, r.from_code, r.to_code, r.reason, r.detail, r.actor, r.ladder_version, r.at)
            for r in rows
        ]

    @put(
        "/override",
        opt=requires(*WRITE_ROLES),
        status_code=200,
        summary="Hold the member at a tier until a date, with a reason (audited)",
    )
    async def set_override(
        self,
        member_id: PathId,
        data: JSONBody[OverrideIn],
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
        principal: NamedDependency[Principal],
    ) -> OverrideOut:
        async with transaction(sessions) as session:
            row = await service.set_override(
                session,
                _ctx(settings, principal),
                member_id,
                tier=data.tier,
                until=data.until,
                reason=data.reason,
                actor=Actor.of(principal),
            )
            assert row.override_code and row.override_until
            return OverrideOut(
                row.override_code, row.override_until, row.override_reason or "", row.override_by or ""
            )

    @delete(
        "/override",
        opt={**requires(*WRITE_ROLES), **problems(409)},  # a member merged away or erased
        summary="End an override now (audited)",
    )
    async def clear_override(
        self,
        member_id: PathId,
        sessions: NamedDependency[async_sessionmaker[AsyncSession]],
        settings: NamedDependency[Settings],
        principal: NamedDependency[Principal],
        reason: Annotated[str, Parameter(min_length=1, max_length=500)],
    ) -> Response[None]:
        async with transaction(sessions) as session:
            await service.clear_override(
                session, _ctx(settings, principal), member_id, reason=reason, actor=Actor.of(principal)
            )
        return Response(None, status_code=204)


async def _tier_section(session: AsyncSession, member_id: int) -> dict[str, Any] | None:
    """The ``tier`` block of the member 360 view."""
    ladder = await service.active_ladder(session)
    if ladder is None:
        return None
    tier = (await service.effective_tiers(session, [member_id], service.TierContext.of().now, ladder))[
        member_id
    ]
    return {"code": tier.code, "name": tier.name, "rank": tier.rank, "ladder_version": ladder.version}


register_view_section("tier", _tier_section)
