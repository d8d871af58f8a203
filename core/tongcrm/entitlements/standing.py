"""Standing entitlements (points multiplier, free shipping, priority service, gift packaging, member price) as
grants: a member holds one open grant per standing entitlement of their effective tier, opened when they enter
the tier and closed (``valid_until`` = the moment of the change, never deleted) when they leave it.

A grant is open while ``valid_until`` is NULL: it lasts as long as the tier, which nobody knows in advance.
Closed grants stay as the record of what the member held when, and their usages stay attached to them.

Tier code calls :func:`sync` inside the transaction that changes tiers, for the members it touched, in two
set-based statements whatever the number of members (one ``UPDATE`` closes every open grant that no longer
matches the member's effective tier, one ``INSERT … SELECT`` opens the missing ones). The same two statements
reconcile the whole member base in id batches (:func:`tongcrm.tiers.service.grant_standing`), which is how
existing members get their grants and how a ladder change re-issues changed entitlements.

A grant matches when its tier is the member's effective tier and its kind, value, params and provider are
those the ladder in force gives that tier; a changed value closes the old grant and opens a new one, so a
grant always shows the benefit as it was when it was held.

Grant keys are ``standing:{kind}:m{member}:{tier}:v{ladder version}:{moment of the change, UTC}``: the same
change replayed yields the same key (``ON CONFLICT DO NOTHING``), and re-entering a tier later yields a new
grant. A standing entitlement whose ladder entry names a ``provider`` is ``pending`` until that provider
fulfils it (e.g. syncing free shipping to a shop); otherwise it is ``active`` at once.

Grants are member rows like any other: a merge moves the absorbed member's grants to the survivor (and an undo
moves them back). A moved grant of the tier the survivor ends up with simply carries on; two open grants of
the same benefit keep the older; the rest close at the merge.

The points multiplier is still read from the tier when points are computed (the tier is the source of truth
for the rules); its grant is the member-facing record that it applies, and a use can be recorded against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from tongcrm.db.base import JSONType, UTCDateTime
from tongcrm.db.dialect import insert
from tongcrm.entitlements.catalogue import CATALOGUE, Recurrence
from tongcrm.entitlements.models import EntitlementGrant, GrantStatus
from tongcrm.members.models import Member
from tongcrm.tiers.ladder import Entitlement, Ladder, Tier
from tongcrm.tiers.models import MemberTier

#: The catalogue's standing kinds: held with the tier, used any number of times.
STANDING_KINDS: tuple[str, ...] = tuple(
    code for code, spec in CATALOGUE.items() if spec.recurrence is Recurrence.STANDING
)
PREFIX = "standing:"

#: Which members a pass touches: a condition on a member-id column (``members.id`` or ``grants.member_id``).
MemberFilter = Callable[[sa.ColumnElement[int]], sa.ColumnElement[bool]]


@dataclass(frozen=True, slots=True)
class Moved:
    """How many standing grants a pass closed and opened."""

    closed: int
    opened: int


def _t(model: type[Any]) -> sa.Table:
    return cast(sa.Table, model.__table__)


def is_standing(kind_code: str) -> bool:
    spec = CATALOGUE.get(kind_code)
    return spec is not None and spec.recurrence is Recurrence.STANDING


def standing_of(tier: Tier) -> list[Entitlement]:
    return [e for e in tier.entitlements if is_standing(e.kind)]


def stamp(moment: datetime) -> str:
    """The moment of a change as it appears in grant keys (UTC, to the microsecond)."""
    return f"{moment.astimezone(UTC):%Y%m%dT%H%M%S.%fZ}"


def effective_code_sql(ladder: Ladder, now: datetime, mt: sa.Table) -> sa.ColumnElement[str]:
    """A member's effective tier at ``now`` over ``members LEFT JOIN member_tiers``: an override in force, else
    the held tier, else (no row) the base tier."""
    return sa.case(
        (sa.and_(mt.c.override_code.is_not(None), mt.c.override_until > now), mt.c.override_code),
        else_=sa.func.coalesce(mt.c.tier_code, ladder.base.code),
    )


def _ladder_entitlements(ladder: Ladder, name: str = "ladder_ents") -> sa.Subquery | None:
    """The ladder's standing entitlements as rows (tier_code, kind, value, params, provider), or None."""
    rows = [
        sa.select(
            sa.literal(tier.code, sa.String).label("tier_code"),
            sa.literal(ent.kind, sa.String).label("kind"),
            sa.literal(ent.value, sa.BigInteger).label("value"),
            sa.literal(dict(ent.params), JSONType).label("params"),
            sa.literal(ent.provider, sa.String).label("provider"),
        )
        for tier in ladder.tiers
        for ent in standing_of(tier)
    ]
    if not rows:
        return None
    if len(rows) == 1:
        return rows[0].subquery(name)
    return sa.union_all(*rows).subquery(name)


def _same_definition(g: Any, e: sa.Subquery) -> sa.ColumnElement[bool]:
    """The grant ``g`` is the entitlement row ``e`` (tier, kind, value, params, provider): params compare as
    JSONB on PostgreSQL and as the same serialisation on SQLite."""
    return sa.and_(
        g.c.tier_code == e.c.tier_code,
        g.c.kind == e.c.kind,
        g.c.value == e.c.value,
        g.c.params == e.c.params,
        g.c.provider.is_not_distinct_from(e.c.provider),
    )


async def sync(session: AsyncSession, ladder: Ladder, now: datetime, members: MemberFilter) -> Moved:
    """Make the selected members' open standing grants exactly those of their effective tier at ``now``.

    Closes (``valid_until = now``) every open standing grant that is not kept: kept is the oldest open grant
    per member and benefit whose tier is the member's effective tier and whose definition is the one the ladder
    gives that tier. So a grant of a tier the member left, of a changed definition, of a merge tombstone, or a
    second one of the same benefit (two members' grants met in a merge) is closed. Then opens the benefits the
    member has no open grant of, from ``now``. Two statements, joins and anti-joins only; safe to repeat.

    Over large batches on PostgreSQL run it with nested loops off (as the batched tier passes do): planned
    against a grants table that is still empty, a nested-loop anti-join would rescan the table for every row
    while the statement itself fills it."""
    g = _t(EntitlementGrant)
    m = _t(Member)
    mt = _t(MemberTier)
    ents = _ladder_entitlements(ladder)
    now_lit = sa.literal(now, UTCDateTime())
    eff = effective_code_sql(ladder, now, mt)
    # -- close: the open grants EXCEPT those kept — a set difference both databases do in one pass (SQLite
    # would run a correlated NOT EXISTS, or scan a joined subquery, once per grant) ----------------------------
    open_standing = g.alias("open_standing")
    candidates = sa.and_(
        open_standing.c.kind.in_(STANDING_KINDS),
        open_standing.c.valid_until.is_(None),
        members(open_standing.c.member_id),
    )
    if ents is not None:
        k = g.alias("k")
        kept = (
            sa.select(sa.func.min(k.c.id).label("id"))
            .select_from(
                k.join(m, sa.and_(m.c.id == k.c.member_id, m.c.status == "active"))
                .outerjoin(mt, mt.c.member_id == m.c.id)
                .join(ents, sa.and_(ents.c.tier_code == eff, _same_definition(k, ents)))
            )
            .where(k.c.kind.in_(STANDING_KINDS), k.c.valid_until.is_(None), members(k.c.member_id))
            .group_by(k.c.member_id, k.c.kind)
        )
        close = g.c.id.in_(sa.except_(sa.select(open_standing.c.id).where(candidates), kept))
    else:
        close = g.c.id.in_(sa.select(open_standing.c.id).where(candidates))
    closed = cast(
        CursorResult[Any],
        await session.execute(
            sa.update(g).where(close).values(valid_until=now_lit).execution_options(synchronize_session=False)
        ),
    ).rowcount
    if ents is None:
        return Moved(int(closed or 0), 0)
    # -- open: after the close, any open grant of a selected member is one to keep --------------------------
    held = (
        sa.select(m.c.id.label("member_id"), eff.label("tier_code"))
        .select_from(m.outerjoin(mt, mt.c.member_id == m.c.id))
        .where(members(m.c.id), m.c.status == "active")
        .subquery("held")
    )
    have = g.alias("have")
    open_already = sa.exists(
        sa.select(sa.literal(1)).where(
            have.c.member_id == held.c.member_id,
            have.c.kind == ents.c.kind,
            have.c.valid_until.is_(None),
            members(have.c.member_id),
        )
    )
    key = (
        sa.literal(PREFIX)
        + ents.c.kind
        + sa.literal(":m")
        + sa.cast(held.c.member_id, sa.String)
        + sa.literal(":")
        + ents.c.tier_code
        + sa.literal(f":v{ladder.version}:{stamp(now)}")
    )
    fulfilled_by_provider = ents.c.provider.is_not(None)
    select = (
        sa.select(
            held.c.member_id,
            key,
            ents.c.kind,
            ents.c.tier_code,
            sa.literal(ladder.version),
            ents.c.value,
            ents.c.params,
            now_lit,
            sa.case((fulfilled_by_provider, GrantStatus.PENDING), else_=GrantStatus.ACTIVE),
            ents.c.provider,
            sa.literal(0),
            sa.case((fulfilled_by_provider, now_lit), else_=sa.null()),
            now_lit,
        )
        .select_from(held.join(ents, ents.c.tier_code == held.c.tier_code))
        .where(sa.not_(open_already))
    )
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
    opened = cast(CursorResult[Any], await session.execute(stmt)).rowcount
    return Moved(int(closed or 0), max(0, int(opened or 0)))


def standing_filter() -> sa.ColumnElement[bool]:
    """Grants of standing kinds (for readers that list them apart from recurring grants)."""
    return EntitlementGrant.kind.in_(STANDING_KINDS)
