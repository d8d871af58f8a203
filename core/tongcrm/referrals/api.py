"""Referral HTTP API: a member's referral code, recording a referrer from a code (once), unbinding a referrer
recorded by mistake, and whom a member referred with the state of each reward."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.api.inputs import PathId, problems
from tongcrm.api.security import READ_ROLES, WRITE_ROLES, requires
from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.auth.service import Principal
from tongcrm.config import Settings
from tongcrm.db.base import utcnow
from tongcrm.db.lengths import fits
from tongcrm.points.service import PointsContext
from tongcrm.referrals import service
from tongcrm.referrals.models import ReferralCode

Sessions = async_sessionmaker[AsyncSession]


class CodeOut(msgspec.Struct):
    member_id: int
    code: str


class ReferrerIn(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, fits(ReferralCode.code)]


class ReferrerOut(msgspec.Struct):
    member_id: int
    referrer_id: int


class UnboundOut(msgspec.Struct):
    member_id: int
    #: The referrer removed.
    referrer_id: int
    #: The member's referral reward after the unbinding: unbound (it had been awarded), reversed (its order had
    #: been refunded), None (none had fired).
    reward_status: str | None
    #: Points taken back from the member credited (never below a zero balance).
    points_taken: int


class ReferredOut(msgspec.Struct):
    member_id: int
    joined_at: datetime
    #: awarded | reversed | unbound | None (no qualifying order yet)
    reward_status: str | None
    reward_points: int
    rewarded_at: datetime | None


class ReferralsOut(msgspec.Struct):
    member_id: int
    #: Live members this member referred.
    count: int
    referred: list[ReferredOut]


class ReferralController(Controller):
    path = "/api/members/{member_id:int}"
    tags = ["referrals"]

    @post("/referral-code", opt=requires(*WRITE_ROLES), status_code=200, summary="The member's referral code")
    async def code(self, member_id: PathId, sessions: NamedDependency[Sessions]) -> CodeOut:
        async with sessions() as session, session.begin():
            return CodeOut(member_id, await service.code_for(session, member_id))

    @put(
        "/referrer",
        opt=requires(*WRITE_ROLES),
        summary="Record who referred the member, from a referral code (once; audited)",
    )
    async def referrer(
        self,
        member_id: PathId,
        data: JSONBody[ReferrerIn],
        sessions: NamedDependency[Sessions],
        principal: NamedDependency[Principal],
    ) -> ReferrerOut:
        async with sessions() as session, session.begin():
            referrer = await service.set_referrer(session, member_id, data.code)
            audit.record(
                session,
                Actor.of(principal),
                "member.referrer",
                "member",
                member_id,
                after={"referrer_id": referrer},
            )
        return ReferrerOut(member_id, referrer)

    @delete(
        "/referrer",
        # a merged member or none to unbind (409), a blank reason (422)
        opt={**requires(*WRITE_ROLES), **problems(409, 422)},
        status_code=200,
        summary="Unbind a referrer recorded by mistake; an awarded reward is taken back (audited)",
    )
    async def unbind(
        self,
        member_id: PathId,
        sessions: NamedDependency[Sessions],
        settings: NamedDependency[Settings],
        principal: NamedDependency[Principal],
        reason: Annotated[str, Parameter(min_length=1, max_length=500)],
    ) -> UnboundOut:
        ctx = PointsContext(clock=utcnow, tz=settings.tz, actor=f"apikey:{principal.key_id}")
        async with sessions() as session, session.begin():
            done = await service.unbind_referrer(session, ctx, member_id, reason=reason)
            audit.record(
                session,
                Actor.of(principal),
                "member.referrer_unbound",
                "member",
                member_id,
                before={"referrer_id": done.referrer_id},
                after={
                    "referrer_id": None, "reason": reason, "reward_status": done.reward_status,
                    "points_taken": done.points_taken,
                },
            )  # fmt: skip
        return UnboundOut(done.member_id, done.referrer_id, done.reward_status, done.points_taken)

    @get("/referrals", opt=requires(*READ_ROLES), summary="Whom the member referred, and the rewards")
    async def referrals(
        self,
        member_id: PathId,
        read_sessions: NamedDependency[Sessions],
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> ReferralsOut:
        async with read_sessions() as session:
            count, rows = await service.referred_by(session, member_id, limit=limit)
        return ReferralsOut(
            member_id,
            count,
            [
                ReferredOut(r.member_id, r.created_at, r.reward_status, r.reward_points, r.rewarded_at)
                for r in rows
            ],
        )
