"""Tier tables: versioned ladders, each member's tier state, the history of every change, and the staging rows
of a set-based review.

A member with no ``member_tiers`` row holds the base tier and has never changed tier; rows appear on the first
upgrade (or override), so a programme of a million members mostly at the base tier stays small.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, utcnow
from tongcrm.members.references import (
    MemberReference,
    MergeContext,
    register_context_listener,
    register_reference,
)
from tongcrm.points.multipliers import TierInfo, set_tier_resolver


class TierLadder(Base):
    """One version of the ladder. The highest version is the one in force; older ones stay for history."""

    __tablename__ = "tier_ladders"

    version: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    definition: Mapped[dict[str, Any]] = mapped_column(JSONType)
    reason: Mapped[str] = mapped_column(sa.String(500), default="")
    created_by: Mapped[str] = mapped_column(sa.String(100), default="system")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MemberTier(Base):
    """The tier a member holds under the rules (``tier_code``) and, while it lasts, a manual override.

    The effective tier is the override until ``override_until``, else ``tier_code``."""

    __tablename__ = "member_tiers"

    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), primary_key=True, autoincrement=False)
    tier_code: Mapped[str] = mapped_column(sa.String(32))
    #: When ``tier_code`` last changed, and that day in the programme's time zone (the anniversary anchor).
    since: Mapped[datetime] = mapped_column(UTCDateTime())
    anchor_on: Mapped[date] = mapped_column(sa.Date)
    #: The next day a downgrade may happen (programme time zone).
    review_on: Mapped[date] = mapped_column(sa.Date, index=True)
    ladder_version: Mapped[int] = mapped_column(sa.Integer)
    override_code: Mapped[str | None] = mapped_column(sa.String(32))
    override_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    override_reason: Mapped[str | None] = mapped_column(sa.String(500))
    override_by: Mapped[str | None] = mapped_column(sa.String(100))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (
        #: The members holding a tier under the rules, read from the index alone: a segment's ``tier.code``
        #: condition is a range of it (plus the few overrides in force) instead of a scan of every tier row.
        sa.Index("ix_member_tiers_tier_code", "tier_code", "member_id"),
    )


class TierHistory(Base):
    """Every change of a member's tier, with its reason: upgrade, review, override, override_expired, merge,
    ladder_change."""

    __tablename__ = "tier_history"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"))
    from_code: Mapped[str] = mapped_column(sa.String(32))
    to_code: Mapped[str] = mapped_column(sa.String(32))
    reason: Mapped[str] = mapped_column(sa.String(32))
    detail: Mapped[str] = mapped_column(sa.String(500), default="")
    actor: Mapped[str] = mapped_column(sa.String(100), default="system")
    ladder_version: Mapped[int] = mapped_column(sa.Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (sa.Index("ix_tier_history_member_id_id", "member_id", "id"),)


class TierReviewItem(Base):
    """Staging for one batch of a review: computed in the database, then applied with three set-based
    statements (history, events, update) and deleted. Never read by anything else."""

    __tablename__ = "tier_review_items"

    run_id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    member_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    old_code: Mapped[str] = mapped_column(sa.String(32))
    new_code: Mapped[str] = mapped_column(sa.String(32))
    next_review_on: Mapped[date] = mapped_column(sa.Date)
    #: The effective tier changes too (no override in force).
    visible: Mapped[bool] = mapped_column(sa.Boolean)


class TierMergeState(Base):
    """The survivor's tier row just before a merge and just after the merge listener changed it (``None``: no
    row), so undoing the merge can put back what the merge changed, exactly, and leave later changes alone.

    The absorbed member's own row is never changed by a merge (a tombstone keeps it), so it needs no copy."""

    __tablename__ = "tier_merge_states"

    merge_id: Mapped[int] = mapped_column(
        sa.ForeignKey("member_merges.id"), primary_key=True, autoincrement=False
    )
    survivor_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


# history follows the member on a merge; the tier row itself is recomputed by the merge listener (service.py)
register_reference(MemberReference("tier_history"))


async def _after_merge(
    session: AsyncSession, survivor_id: int, other_ids: tuple[int, ...], context: MergeContext
) -> None:
    from tongcrm.tiers.service import after_merge

    await after_merge(session, survivor_id, other_ids, context)


async def _tier_info(
    session: AsyncSession, member_ids: Sequence[int], at: datetime
) -> Mapping[int, TierInfo]:
    """The points seam: each member's effective tier and the multiplier it grants (100 without one)."""
    from tongcrm.tiers.service import active_ladder, member_tier_rows, points_tier

    ladder = await active_ladder(session)
    if ladder is None:
        return {}
    rows = await member_tier_rows(session, member_ids)
    return {member_id: points_tier(rows.get(member_id), ladder, at) for member_id in member_ids}


register_context_listener(_after_merge)
set_tier_resolver(_tier_info)
