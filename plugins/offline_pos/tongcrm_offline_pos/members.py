"""Members at the till: lookup (mobile or dynamic code), walk-in enrolment, and the claim that ties a receipt
to a member.

Everything goes through the core's services (identity resolution, consent, points, tiers, entitlements); this
module only decides what a cashier may see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from tongcrm.audit import service as audit
from tongcrm.audit.service import Actor
from tongcrm.consent import service as consent
from tongcrm.crypto import Vault
from tongcrm.entitlements.catalogue import CATALOGUE
from tongcrm.entitlements.models import EntitlementGrant, EntitlementUsage, GrantStatus
from tongcrm.errors import NotFound, Unprocessable
from tongcrm.identity.models import Identity
from tongcrm.identity.service import ClaimSet, ResolutionContext, resolve_many
from tongcrm.members.models import Member
from tongcrm.members.phone import MOBILE_CONTEXT, mask_mobile, normalise_mobile
from tongcrm.members.service import lookup as lookup_member
from tongcrm.members.service import resolve_live_id
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import BuyerProfile, IdentityClaim
from tongcrm.points import service as points
from tongcrm.tiers import service as tiers

from tongcrm_offline_pos import codes
from tongcrm_offline_pos.schemas import EntitlementOut, MemberAtTill, TierOut
from tongcrm_offline_pos.stores import CHANNEL, Store


@dataclass(frozen=True, slots=True)
class PosContext:
    """What POS services need from the app: plugins, the vault, a clock, the programme's zone, the actor."""

    host: PluginHost
    vault: Vault
    clock: Callable[[], datetime]
    tz: ZoneInfo
    actor: Actor

    @property
    def points(self) -> points.PointsContext:
        return points.PointsContext(clock=self.clock, tz=self.tz, actor=self.actor.name)


def mask_name(name: str | None) -> str | None:
    """``张三丰`` → ``张**``: enough for a cashier to greet, too little to copy a customer list from."""
    if not name:
        return None
    name = name.strip()
    return name[0] + "*" * max(len(name) - 1, 1) if len(name) > 1 else "*"


async def member_at_till(
    session: AsyncSession, ctx: PosContext, member_id: int, *, created: bool = False
) -> MemberAtTill:
    member = await session.get(Member, member_id)
    if member is None:
        raise NotFound(f"no member {member_id}")
    now = ctx.clock()
    mobile = None
    if member.mobile_enc:
        mobile = mask_mobile(ctx.vault.decrypt(member.mobile_enc, context=MOBILE_CONTEXT))
    tier_out: TierOut | None = None
    usable: list[EntitlementOut] = []
    ladder = await tiers.active_ladder(session)
    if ladder is not None:
        tier = (await tiers.effective_tiers(session, [member_id], now, ladder))[member_id]
        tier_out = TierOut(tier.code, tier.name)
        for ent in tier.entitlements:
            kind = CATALOGUE.get(ent.kind)
            if kind is not None and kind.recurrence.value == "standing":
                usable.append(EntitlementOut(ent.kind, kind.name, ent.value))
        used = sa.select(EntitlementUsage.id).where(EntitlementUsage.grant_id == EntitlementGrant.id)
        grants = (
            await session.execute(
                sa.select(EntitlementGrant)
                .where(
                    EntitlementGrant.member_id == member_id,
                    EntitlementGrant.status.in_([GrantStatus.ACTIVE, GrantStatus.FULFILLED]),
                    EntitlementGrant.valid_from <= now,
                    EntitlementGrant.valid_until > now,
                    ~sa.exists(used),
                )
                .order_by(EntitlementGrant.valid_until)
                .limit(50)
            )
        ).scalars()
        for g in grants:
            kind = CATALOGUE.get(g.kind)
            usable.append(EntitlementOut(g.kind, kind.name if kind else g.kind, g.value, g.id, g.valid_until))
    balance = await points.balance(session, member_id)
    return MemberAtTill(
        member_id=member_id,
        name=mask_name(member.name),
        mobile=mobile,
        tier=tier_out,
        entitlements=usable,
        points_available=max(balance.available, 0),
        created=created,
    )


async def find_by_mobile(session: AsyncSession, ctx: PosContext, mobile: str) -> int | None:
    try:
        member = await lookup_member(session, ctx.vault, ctx.host, mobile=mobile)
    except NotFound:
        return None
    return member.id


async def lookup(
    session: AsyncSession,
    ctx: PosContext,
    store: Store,
    till: str,
    *,
    mobile: str | None,
    code: str | None,
) -> MemberAtTill:
    if (mobile is None) == (code is None):
        raise Unprocessable("look a member up by exactly one of mobile or code")
    if code is not None:
        member_id = await codes.consume(
            session, ctx.vault, code, at=ctx.clock(), account_id=store.account_id, till_code=till
        )
        live = await resolve_live_id(session, member_id)
        if live is None:
            raise NotFound("this member code names no member")
        member_id = live
    else:
        assert mobile is not None
        found = await find_by_mobile(session, ctx, mobile)
        if found is None:
            raise NotFound("no member has this mobile number")
        member_id = found
    return await member_at_till(session, ctx, member_id)


async def enrol(
    session: AsyncSession,
    ctx: PosContext,
    store: Store,
    till: str,
    *,
    mobile: str,
    name: str | None,
    marketing: bool,
    service: bool,
    proof: str,
) -> MemberAtTill:
    """Enrol a walk-in customer (or find them, if the mobile is already a member) and record what they agreed
    to at the till. A new member gets the sign-up event points of the active rules."""
    e164 = normalise_mobile(mobile)
    now = ctx.clock()
    [outcome] = await resolve_many(
        session,
        ResolutionContext(ctx.host, ctx.vault, ctx.clock, actor=ctx.actor.name),
        [
            ClaimSet(
                claims=(IdentityClaim("mobile", e164, evidence=f"enrolled at till {store.code}/{till}"),),
                account_id=store.account_id,
                profile=BuyerProfile(name=name.strip() if name and name.strip() else None, mobile=e164),
                source_channel=CHANNEL,
                source_store=store.code,
            )
        ],
    )
    if outcome.error is not None or outcome.member_id is None:
        raise Unprocessable(f"cannot enrol this customer: {outcome.error}")
    member_id = outcome.member_id
    source = f"pos:{store.code}:{till}"
    for purpose, given in ((consent.Purpose.MARKETING, marketing), (consent.Purpose.SERVICE, service)):
        await consent.record_consent(
            session,
            member_id,
            purpose.value,
            consent.ConsentStatus.OPT_IN.value if given else consent.ConsentStatus.OPT_OUT.value,
            source=source,
            proof=proof,
            actor=ctx.actor,
            at=now,
        )
    if outcome.created:
        await points.award_event(session, ctx.points, member_id, "signup", str(member_id), occurred_at=now)
    audit.record(
        session,
        ctx.actor,
        "pos.enrol" if outcome.created else "pos.enrol_existing",
        "member",
        member_id,
        after={"store": store.code, "till": till, "mobile": mask_mobile(e164), "marketing": marketing},
        at=now,
    )
    return await member_at_till(session, ctx, member_id, created=outcome.created)


async def claim_for_member(session: AsyncSession, ctx: PosContext, member_id: int) -> IdentityClaim | None:
    """A strong identity claim that names the member, so a receipt attributed by member id goes through the
    same identity resolution as every other order (and follows merges). Mobile first; ``None`` when the member
    has no strong identity at all."""
    kinds = ctx.host.identity_kinds()
    rows = (
        await session.execute(
            sa.select(Identity.kind, Identity.value, Identity.value_enc)
            .where(Identity.member_id == member_id)
            .order_by(sa.case((Identity.kind == "mobile", 0), else_=1), Identity.id)
        )
    ).all()
    for kind, value, value_enc in rows:
        spec = kinds.get(kind)
        if spec is None or not spec.strong:
            continue
        if kind == "mobile":
            if not value_enc:
                continue
            return IdentityClaim(
                "mobile", ctx.vault.decrypt(value_enc, context=MOBILE_CONTEXT), "pos receipt"
            )
        return IdentityClaim(kind, value, "pos receipt")
    return None
