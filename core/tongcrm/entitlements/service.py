"""Granting, fulfilling and using entitlements.

Standing benefits (multiplier, free shipping…) are granted and closed by tier code as members enter and leave
tiers (see :mod:`tongcrm.entitlements.standing`); this module reads them and records their use.
Recurring benefits are granted by jobs with one set-based ``INSERT … SELECT … ON CONFLICT DO NOTHING`` per
(kind, tier): the grant key names the kind, the period and the member, so a job that runs twice grants once.
A grant whose benefit lives on a platform is ``pending`` until its provider (the ``entitlement_providers`` hook)
fulfils it; failures are recorded on the grant and retried with backoff. Birthday points with no provider are
fulfilled by the core itself, as a points adjustment in the same transaction that records the fulfilment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tongcrm.db.base import JSONType, UTCDateTime
from tongcrm.db.dialect import insert
from tongcrm.db.lengths import check_fits
from tongcrm.entitlements import standing as standing_grants
from tongcrm.entitlements.catalogue import CATALOGUE, Recurrence, kind
from tongcrm.entitlements.models import EntitlementGrant, EntitlementUsage, GrantStatus
from tongcrm.errors import Conflict, NotFound, Unprocessable
from tongcrm.jobs.runner import backoff
from tongcrm.logging import get_logger
from tongcrm.members.models import Member
from tongcrm.plugin.host import PluginHost
from tongcrm.plugin.types import FulfilmentRequest, FulfilmentResult
from tongcrm.tiers.ladder import Entitlement, Tier, add_months, end_of_local_day, local_midnight
from tongcrm.tiers.models import MemberTier
from tongcrm.tiers.service import TierContext, active_ladder, effective_tiers, require_ladder

log = get_logger(__name__)

MAX_ATTEMPTS = 8
#: While one worker calls a provider, others leave the grant alone for this long.
CLAIM_SECONDS = 300
#: Fulfilled by the core itself when no provider is named or installed.
INTERNAL = "core.points"


def _t(model: type[Any]) -> sa.Table:
    return cast(sa.Table, model.__table__)


def provider_for(ent: Entitlement, host: PluginHost) -> str | None:
    """The provider that fulfils ``ent``: the one it names, else the one installed provider declaring its kind,
    else the core (birthday points) or nobody (the benefit needs no fulfilment)."""
    if ent.provider is not None:
        return ent.provider
    return provider_for_kind(ent.kind, host)


def provider_for_kind(kind_code: str, host: PluginHost) -> str | None:
    """The installed provider declaring ``kind_code`` (the first by name if several do), else the core for
    birthday points, else nobody."""
    declaring = sorted(
        name for name, spec in host.entitlement_providers().items() if kind_code in spec.entitlements
    )
    if len(declaring) == 1:
        return declaring[0]
    if len(declaring) > 1:
        log.warning("several providers declare an entitlement; name one", kind=kind_code, providers=declaring)
        return declaring[0]
    return INTERNAL if kind_code == "birthday_points" else None


@dataclass(frozen=True, slots=True)
class Period:
    key: str
    valid_from: datetime
    valid_until: datetime


def period_for(recurrence: Recurrence, ctx: TierContext, validity_days: int) -> Period:
    today = ctx.today
    if recurrence is Recurrence.MONTHLY:
        start = today.replace(day=1)
        until = local_midnight(add_months(start, 1), ctx.tz)
        return Period(f"{start:%Y-%m}", local_midnight(start, ctx.tz), until)
    start = today
    return Period(
        f"{today:%Y}",
        local_midnight(start, ctx.tz),
        end_of_local_day(start + timedelta(days=validity_days - 1), ctx.tz),
    )


async def grant_recurring(
    session: AsyncSession, ctx: TierContext, host: PluginHost, recurrence: Recurrence
) -> int:
    """Grant this period's monthly (or birthday-month) entitlements to every member whose tier carries them.

    Birthday grants go to members whose birthday falls in the current month (a 02-29 birthday is in February
    every year). Returns how many grants were created."""
    ladder = await active_ladder(session)
    if ladder is None:
        return 0
    m = _t(Member)
    mt = _t(MemberTier)
    effective = sa.case(
        (sa.and_(mt.c.override_code.is_not(None), mt.c.override_until > ctx.now), mt.c.override_code),
        else_=sa.func.coalesce(mt.c.tier_code, ladder.base.code),
    )
    created = 0
    for kind_code, spec in CATALOGUE.items():
        if spec.recurrence is not recurrence:
            continue
        for tier in ladder.tiers:
            ent = tier.entitlement(kind_code)
            if ent is None:
                continue
            validity = ent.validity_days or spec.default_validity_days
            period = period_for(recurrence, ctx, validity)
            provider = provider_for(ent, host)
            status = GrantStatus.PENDING if provider is not None else GrantStatus.ACTIVE
            key = sa.literal(f"{kind_code}:{period.key}:m") + sa.cast(m.c.id, sa.String)
            select = (
                sa.select(
                    m.c.id,
                    key,
                    sa.literal(kind_code),
                    sa.literal(tier.code),
                    sa.literal(ladder.version),
                    sa.literal(ent.value),
                    sa.literal(dict(ent.params), JSONType),
                    sa.literal(period.valid_from, UTCDateTime()),
                    sa.literal(period.valid_until, UTCDateTime()),
                    sa.literal(status),
                    sa.literal(provider, sa.String) if provider else sa.null(),
                    sa.literal(0),
                    sa.literal(ctx.now, UTCDateTime()) if provider else sa.null(),
                    sa.literal(ctx.now, UTCDateTime()),
                )
                .select_from(m)
                .outerjoin(mt, mt.c.member_id == m.c.id)
                .where(m.c.status == "active", effective == tier.code)
            )
            if recurrence is Recurrence.BIRTHDAY:
                select = select.where(
                    m.c.birthday.is_not(None),
                    sa.cast(sa.extract("month", m.c.birthday), sa.Integer) == ctx.today.month,
                )
            g = _t(EntitlementGrant)
            stmt = (
                insert(session, g)
                .from_select(
                    [
                        "member_id",
                        "grant_key",
                        "kind",
                        "tier_code",
                        "ladder_version",
                        "value",
                        "params",
                        "valid_from",
                        "valid_until",
                        "status",
                        "provider",
                        "attempts",
                        "next_attempt_at",
                        "created_at",
                    ],
                    select,
                )
                .on_conflict_do_nothing(index_elements=[g.c.grant_key])
            )
            result = cast(CursorResult[Any], await session.execute(stmt))
            created += max(0, int(result.rowcount or 0))
    return created


# -------------------------------------------------------------------------------------------------------------
# benefits of campaigns and journeys

MAX_BENEFIT_VALIDITY_DAYS = 366
_BENEFIT_FIELDS = ("kind", "value", "validity_days", "cost_fen")


def check_benefit(doc: Any, pointer: str = "/benefit_entitlement") -> dict[str, Any]:
    """An entitlement benefit, checked: a kind granted per occasion (a coupon, gift points — not a standing
    tier benefit, which its tier opens and closes), its value within the kind's bounds, the days it stays
    usable, and what one grant costs the brand in fen (counted as the campaign's cost). 422 naming the field."""
    if not isinstance(doc, Mapping):
        raise Unprocessable(
            "the entitlement benefit is an object with a 'kind' and a 'value'", extra={"pointer": pointer}
        )
    unknown = sorted(set(doc) - set(_BENEFIT_FIELDS))
    if unknown:
        raise Unprocessable(
            f"the entitlement benefit has unknown fields: {', '.join(unknown)}", extra={"pointer": pointer}
        )
    code = doc.get("kind")
    spec = CATALOGUE.get(code) if isinstance(code, str) else None
    occasional = sorted(k for k, v in CATALOGUE.items() if v.recurrence is not Recurrence.STANDING)
    if spec is None or spec.recurrence is Recurrence.STANDING:
        raise Unprocessable(
            f"entitlement kind {code!r} cannot be a campaign benefit; use one of {', '.join(occasional)}",
            extra={"pointer": f"{pointer}/kind"},
        )

    def whole(name: str, low: int, high: int | None, default: int | None = None) -> int:
        value = doc.get(name, default)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < low
            or (high is not None and value > high)
        ):
            upto = f" to {high}" if high is not None else " or more"
            raise Unprocessable(
                f"the entitlement benefit's {name} is a whole number from {low}{upto}",
                extra={"pointer": f"{pointer}/{name}"},
            )
        return value

    return {
        "kind": spec.code,
        "value": whole("value", spec.min_value, spec.max_value),
        "validity_days": whole("validity_days", 1, MAX_BENEFIT_VALIDITY_DAYS, spec.default_validity_days),
        "cost_fen": whole("cost_fen", 0, None, 0),
    }


async def grant_benefit(
    session: AsyncSession,
    host: PluginHost,
    benefit: Mapping[str, Any],
    targets: sa.Select[int, str],
    *,
    now: datetime,
    tz: ZoneInfo,
) -> int:
    """Grant a checked benefit (:func:`check_benefit`) to each ``(member_id, grant_key)`` row ``targets``
    selects, in one ``INSERT … SELECT``. The caller's grant key names the occasion (a campaign run and member,
    a journey participant), so a replay grants nothing twice. Usable from the local day's start (``tz``) for ``validity_days`` days; fulfilled by its provider
    like a tier's grant. Returns how many grants were new."""
    provider = provider_for_kind(benefit["kind"], host)
    status = GrantStatus.PENDING if provider is not None else GrantStatus.ACTIVE
    today = now.astimezone(tz).date()
    valid_from = local_midnight(today, tz)
    valid_until = end_of_local_day(today + timedelta(days=int(benefit["validity_days"]) - 1), tz)
    rows = targets.subquery("targets")
    g = _t(EntitlementGrant)
    columns = {
        "member_id": rows.c[0],
        "grant_key": rows.c[1],
        "kind": sa.literal(benefit["kind"], sa.String),
        "value": sa.literal(int(benefit["value"]), sa.BigInteger),
        "params": sa.literal({}, JSONType),
        "valid_from": sa.literal(valid_from, UTCDateTime()),
        "valid_until": sa.literal(valid_until, UTCDateTime()),
        "status": sa.literal(status, sa.String),
        "provider": sa.literal(provider, sa.String) if provider else sa.null(),
        "attempts": sa.literal(0, sa.Integer),
        "next_attempt_at": sa.literal(now, UTCDateTime()) if provider else sa.null(),
        "created_at": sa.literal(now, UTCDateTime()),
    }
    stmt = (
        insert(session, g)
        .from_select(list(columns), sa.select(*columns.values()).select_from(rows).where(sa.true()))
        .on_conflict_do_nothing(index_elements=[g.c.grant_key])
    )
    result = cast(CursorResult[Any], await session.execute(stmt))
    return max(0, int(result.rowcount or 0))


# -------------------------------------------------------------------------------------------------------------
# fulfilment


@dataclass(frozen=True, slots=True)
class Attempt:
    grant_id: int
    grant_key: str
    member_id: int
    kind: str
    value: int
    provider: str
    attempts: int
    valid_until: datetime | None
    tier_code: str | None
    params: Mapping[str, Any]


async def _claim(sessions: async_sessionmaker[AsyncSession], now: datetime, limit: int) -> list[Attempt]:
    g = _t(EntitlementGrant)
    due = sa.and_(g.c.status == GrantStatus.PENDING, g.c.next_attempt_at <= now)
    async with sessions() as session, session.begin():
        ids = list(
            (
                await session.execute(
                    sa.select(g.c.id)
                    .where(due)
                    .order_by(g.c.next_attempt_at, g.c.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).scalars()
        )
        if not ids:
            return []
        rows = (
            await session.execute(
                sa.update(g)
                .where(g.c.id.in_(ids), due)
                .values(attempts=g.c.attempts + 1, next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS))
                .returning(
                    g.c.id,
                    g.c.grant_key,
                    g.c.member_id,
                    g.c.kind,
                    g.c.value,
                    g.c.provider,
                    g.c.attempts,
                    g.c.valid_until,
                    g.c.tier_code,
                    g.c.params,
                )
            )
        ).all()
    return [Attempt(r[0], r[1], r[2], r[3], int(r[4]), r[5], r[6], r[7], r[8], r[9] or {}) for r in rows]


async def fulfil_due(
    sessions: async_sessionmaker[AsyncSession],
    host: PluginHost,
    ctx: TierContext,
    *,
    settings: Mapping[str, str] | None = None,
    limit: int = 200,
) -> int:
    """Call providers for pending grants that are due, and record each outcome; returns grants attempted."""
    attempts = await _claim(sessions, ctx.now, limit)
    providers = host.entitlement_providers()
    for attempt in attempts:
        if attempt.provider == INTERNAL:
            await _fulfil_internally(sessions, ctx, attempt)
            continue
        spec = providers.get(attempt.provider)
        if spec is None:
            result = FulfilmentResult(
                ok=False, retryable=True, detail=f"provider {attempt.provider!r} is not installed"
            )
        else:
            prefix = f"{spec.name}."
            provider_settings = {
                k[len(prefix) :]: v for k, v in (settings or {}).items() if k.startswith(prefix)
            }
            request = FulfilmentRequest(
                grant_id=attempt.grant_key,
                member_id=attempt.member_id,
                entitlement=attempt.kind,
                parameters={
                    **attempt.params,
                    "value": attempt.value,
                    "tier": attempt.tier_code,
                    # None: a standing benefit, valid while the member holds the tier
                    "valid_until": attempt.valid_until.isoformat() if attempt.valid_until else None,
                },
            )
            try:
                result = await spec.factory(provider_settings).fulfil(request)
            except Exception as exc:  # a provider bug or an outage: the grant is retried, never lost
                result = FulfilmentResult(ok=False, retryable=True, detail=f"{type(exc).__name__}: {exc}")
        await _record(sessions, ctx, attempt, result)
    return len(attempts)


async def _record(
    sessions: async_sessionmaker[AsyncSession], ctx: TierContext, attempt: Attempt, result: FulfilmentResult
) -> None:
    g = _t(EntitlementGrant)
    values: dict[str, Any]
    if result.ok:
        values = {
            "status": GrantStatus.FULFILLED,
            "reference": result.reference,
            "fulfilled_at": ctx.now,
            "next_attempt_at": None,
            "last_error": None,
        }
    elif result.retryable and attempt.attempts < MAX_ATTEMPTS:
        values = {
            "next_attempt_at": ctx.now + backoff(attempt.attempts, base=30.0, cap=6 * 3600.0),
            "last_error": result.detail[:1000],
        }
        log.warning(
            "entitlement fulfilment failed; will retry",
            grant=attempt.grant_key,
            provider=attempt.provider,
            detail=result.detail,
        )
    else:
        values = {"status": GrantStatus.FAILED, "next_attempt_at": None, "last_error": result.detail[:1000]}
        log.error(
            "entitlement fulfilment failed for good",
            grant=attempt.grant_key,
            provider=attempt.provider,
            detail=result.detail,
        )
    async with sessions() as session, session.begin():
        await session.execute(
            sa.update(g).where(g.c.id == attempt.grant_id, g.c.status == GrantStatus.PENDING).values(**values)
        )


async def _fulfil_internally(
    sessions: async_sessionmaker[AsyncSession], ctx: TierContext, attempt: Attempt
) -> None:
    from tongcrm.points.service import PointsContext, adjust

    g = _t(EntitlementGrant)
    try:
        async with sessions() as session, session.begin():
            await adjust(
                session,
                PointsContext(clock=lambda: ctx.now, tz=ctx.tz, actor="entitlements"),
                attempt.member_id,
                attempt.value,
                key=f"entitlement:{attempt.grant_key}",
                reason=f"{attempt.kind} of tier {attempt.tier_code}",
            )
            await session.execute(
                sa.update(g)
                .where(g.c.id == attempt.grant_id)
                .values(
                    status=GrantStatus.FULFILLED,
                    reference=f"points:adjust:entitlement:{attempt.grant_key}",
                    fulfilled_at=ctx.now,
                    next_attempt_at=None,
                    last_error=None,
                )
            )
    except Exception as exc:
        await _record(
            sessions,
            ctx,
            attempt,
            FulfilmentResult(ok=False, retryable=True, detail=f"{type(exc).__name__}: {exc}"),
        )


# -------------------------------------------------------------------------------------------------------------
# reading and using


@dataclass(frozen=True, slots=True)
class StandingUse:
    """How often a standing grant was used, and when last."""

    count: int
    last_at: datetime | None


@dataclass(frozen=True, slots=True)
class MemberEntitlements:
    tier: Tier
    #: The member's live standing grants (those of the effective tier), by kind.
    standing: list[EntitlementGrant]
    #: Recent recurring grants (coupons, birthday gifts), newest first.
    grants: list[EntitlementGrant]
    #: Uses of each recurring grant.
    usages: dict[int, list[EntitlementUsage]]
    #: Uses of each standing grant (they can be many: free shipping on every order).
    standing_uses: dict[int, StandingUse]


def _live(now: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(
        EntitlementGrant.valid_from <= now,
        sa.or_(EntitlementGrant.valid_until.is_(None), EntitlementGrant.valid_until > now),
    )


async def for_member(session: AsyncSession, ctx: TierContext, member_id: int) -> MemberEntitlements:
    """What a member holds now: the standing grants of their tier (with how often each was used) and their
    recent recurring grants. The stable read for the API and for tills."""
    ladder = await require_ladder(session)
    member = await session.get(Member, member_id)
    if member is None:
        raise NotFound(f"no member {member_id}", extra={"member_id": member_id})
    tier = (await effective_tiers(session, [member_id], ctx.now, ladder))[member_id]
    is_standing = standing_grants.standing_filter()
    standing = list(
        (
            await session.execute(
                sa.select(EntitlementGrant)
                .where(EntitlementGrant.member_id == member_id, is_standing, _live(ctx.now))
                .order_by(EntitlementGrant.kind, EntitlementGrant.id)
            )
        ).scalars()
    )
    grants = list(
        (
            await session.execute(
                sa.select(EntitlementGrant)
                .where(EntitlementGrant.member_id == member_id, sa.not_(is_standing))
                .order_by(EntitlementGrant.id.desc())
                .limit(200)
            )
        ).scalars()
    )
    usages: dict[int, list[EntitlementUsage]] = {g.id: [] for g in grants}
    if grants:
        for usage in (
            await session.execute(
                sa.select(EntitlementUsage)
                .where(EntitlementUsage.grant_id.in_(list(usages)))
                .order_by(EntitlementUsage.id)
            )
        ).scalars():
            usages[usage.grant_id].append(usage)
    uses: dict[int, StandingUse] = {g.id: StandingUse(0, None) for g in standing}
    if standing:
        counted = await session.execute(
            sa.select(EntitlementUsage.grant_id, sa.func.count(), sa.func.max(EntitlementUsage.used_at))
            .where(EntitlementUsage.grant_id.in_(list(uses)))
            .group_by(EntitlementUsage.grant_id)
        )
        for grant_id, n, last in counted.all():
            uses[grant_id] = StandingUse(int(n), last)
    return MemberEntitlements(tier, standing, grants, usages, uses)


async def use(
    session: AsyncSession, ctx: TierContext, grant_id: int, *, usage_key: str, reference: str, actor: str
) -> tuple[EntitlementUsage, bool]:
    """Record that a grant was used. A recurring grant is one coupon, one gift: used once. A standing grant
    (free shipping, gift packaging…) is used as often as the member likes while it is live, once per
    ``usage_key`` (the order, the receipt). The same ``usage_key`` again returns the recorded use, even after
    the grant closed; another key for a used recurring grant is a conflict. Returns (usage, created)."""
    if not usage_key.strip():
        raise Unprocessable("a usage needs a usage_key")
    check_fits(usage_key, "usage_key", EntitlementUsage.usage_key)
    check_fits(reference, "reference", EntitlementUsage.reference)
    existing = await _usage(session, usage_key)
    if existing is not None:
        if existing.grant_id != grant_id:
            raise Conflict(
                f"usage key {usage_key!r} was already used for grant {existing.grant_id}",
                extra={"reason": "usage_key_taken"},
            )
        return existing, False
    grant = await session.get(EntitlementGrant, grant_id, with_for_update=True)
    if grant is None:
        raise NotFound(f"no entitlement grant {grant_id}")
    return await _record_use(session, ctx, grant, usage_key=usage_key, reference=reference, actor=actor)


async def use_standing(
    session: AsyncSession,
    ctx: TierContext,
    member_id: int,
    kind_code: str,
    *,
    usage_key: str,
    reference: str,
    actor: str,
) -> tuple[EntitlementUsage, bool]:
    """Record a use of the member's live standing benefit ``kind_code`` (gift packaging at a till, free
    shipping on an order) without the caller knowing the grant: idempotent by ``usage_key``."""
    spec = kind(kind_code)
    if spec.recurrence is not Recurrence.STANDING:
        raise Unprocessable(
            f"{kind_code!r} is granted per {spec.recurrence.value} period: record its use on the grant",
            extra={"entitlement": kind_code, "reason": "not_standing"},
        )
    if not usage_key.strip():
        raise Unprocessable("a usage needs a usage_key")
    check_fits(usage_key, "usage_key", EntitlementUsage.usage_key)
    check_fits(reference, "reference", EntitlementUsage.reference)
    existing = await _usage(session, usage_key)
    if existing is not None:
        grant = await session.get(EntitlementGrant, existing.grant_id)
        if grant is None or grant.member_id != member_id or grant.kind != kind_code:
            raise Conflict(
                f"usage key {usage_key!r} was already used for grant {existing.grant_id}",
                extra={"reason": "usage_key_taken"},
            )
        return existing, False
    member = await session.get(Member, member_id)
    if member is None:
        raise NotFound(f"no member {member_id}", extra={"member_id": member_id})
    grant = (
        await session.execute(
            sa.select(EntitlementGrant)
            .where(
                EntitlementGrant.member_id == member_id,
                EntitlementGrant.kind == kind_code,
                _live(ctx.now),
            )
            .order_by(EntitlementGrant.id)
            .limit(1)
            .with_for_update()
        )
    ).scalar_one_or_none()
    if grant is None:
        raise Conflict(
            f"member {member_id} holds no {kind_code!r} now",
            extra={"member_id": member_id, "entitlement": kind_code, "reason": "not_held"},
        )
    return await _record_use(session, ctx, grant, usage_key=usage_key, reference=reference, actor=actor)


async def _usage(session: AsyncSession, usage_key: str) -> EntitlementUsage | None:
    return (
        await session.execute(sa.select(EntitlementUsage).where(EntitlementUsage.usage_key == usage_key))
    ).scalar_one_or_none()


async def _record_use(
    session: AsyncSession,
    ctx: TierContext,
    grant: EntitlementGrant,
    *,
    usage_key: str,
    reference: str,
    actor: str,
) -> tuple[EntitlementUsage, bool]:
    if grant.status not in (GrantStatus.ACTIVE, GrantStatus.FULFILLED):
        raise Conflict(
            f"grant {grant.id} is {grant.status}, not usable",
            extra={"status": grant.status, "reason": "grant_closed"},
        )
    if not (grant.valid_from <= ctx.now and (grant.valid_until is None or ctx.now < grant.valid_until)):
        until = grant.valid_until.isoformat() if grant.valid_until else "its tier ends"
        raise Conflict(
            f"grant {grant.id} is valid from {grant.valid_from.isoformat()} until {until}",
            extra={
                "valid_until": grant.valid_until.isoformat() if grant.valid_until else None,
                "reason": "grant_not_valid_now",
            },
        )
    if not standing_grants.is_standing(grant.kind):
        used = (
            await session.execute(sa.select(sa.func.count()).where(EntitlementUsage.grant_id == grant.id))
        ).scalar_one()
        if used:
            raise Conflict(
                f"grant {grant.id} was already used", extra={"grant_id": grant.id, "reason": "grant_used"}
            )
    usage = EntitlementUsage(
        grant_id=grant.id,
        member_id=grant.member_id,
        usage_key=usage_key,
        reference=reference,
        actor=actor,
        used_at=ctx.now,
    )
    session.add(usage)
    await session.flush()
    return usage, True


def catalogue() -> list[dict[str, Any]]:
    return [
        {
            "code": k.code,
            "name": k.name,
            "unit": k.unit,
            "better": k.direction.value,
            "recurrence": k.recurrence.value,
            "min_value": k.min_value,
            "max_value": k.max_value,
        }
        for k in CATALOGUE.values()
    ]
