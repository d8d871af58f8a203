"""Points tables.

``points_entries`` is the ledger: append-only, one row per effect, each with a unique idempotency key. Every
earn (and transfer-in / positive adjustment) creates a lot whose id is the id of the entry that created it;
debits record which lots they drew on in ``points_lot_draws``. Lots and balances are the mutable, derived state:
``tongcrm verify`` recomputes both from the entries and draws.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, unsampled, utcnow
from tongcrm.members.references import (
    MemberReference,
    MergeContext,
    register_context_listener,
    register_reference,
)


class EntryKind:
    EARN = "earn"
    #: A balance carried over from a previous CRM by ``tongcrm import points`` (see docs/bulk.md): a credit
    #: that creates an available lot, expiring when the import row says (or never); it earned nothing here.
    OPENING = "opening"
    REDEEM = "redeem"
    REVERSE = "reverse"
    CLAWBACK = "clawback"
    EXPIRE = "expire"
    ADJUST = "adjust"
    TRANSFER_OUT = "transfer_out"
    TRANSFER_IN = "transfer_in"
    #: Redeemed points given back (goods paid with points were returned); references the redemption.
    REFUND = "refund"
    #: An undone merge settling between the two members: points (and owed points, as signed ``shortfall``) that
    #: one member's lots lost to the other's entries while they were merged. Always a pair that sums to zero.
    MERGE_SPLIT = "merge_split"


class PointsEntry(Base):
    """One ledger line. Never updated or deleted: a correction is a new entry naming the original."""

    __tablename__ = "points_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"))
    kind: Mapped[str] = mapped_column(sa.String(16))
    #: Signed points; earns are positive, debits negative.
    amount: Mapped[int] = mapped_column(sa.BigInteger)
    #: Clawback policy: the part of a reversal that could not be taken yet (owed from future earnings). On a
    #: ``merge_split`` entry, owed points an undone merge moved between two members (signed).
    shortfall: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    idempotency_key: Mapped[str] = mapped_column(sa.String(200), unique=True)
    account_id: Mapped[int | None] = mapped_column(BigId)
    order_id: Mapped[int | None] = mapped_column(BigId, index=True)
    line_id: Mapped[int | None] = mapped_column(BigId)
    rule_code: Mapped[str | None] = mapped_column(sa.String(64))
    rule_version: Mapped[int | None] = mapped_column(sa.Integer)
    reason: Mapped[str | None] = mapped_column(sa.String(500))
    actor: Mapped[str] = mapped_column(sa.String(100), default="system")
    #: The entry this one corrects, reverses or pairs with (a transfer's other half).
    ref_entry_id: Mapped[int | None] = mapped_column(BigId)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: When the points became spendable; NULL while that waits for a business event (see the lot).
    available_from: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: How the amount was computed (base, rate, multiplier, rounding, cap): the "explain" of this line.
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONType, info=unsampled())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        sa.Index("ix_points_entries_member_id_id", "member_id", "id"),
        # Partial: most entries (every earn, every spend) name no other entry, and an index entry for each of
        # their NULLs was B-tree work on every sale for nothing a lookup by ``ref_entry_id`` can find.
        sa.Index(
            "ix_points_entries_ref_entry_id",
            "ref_entry_id",
            sqlite_where=sa.text("ref_entry_id IS NOT NULL"),
            postgresql_where=sa.text("ref_entry_id IS NOT NULL"),
        ),
    )


class PointsLot(Base):
    """Points earned together, spent FIFO by expiry. ``id`` is the id of the entry that created the lot."""

    __tablename__ = "points_lots"

    id: Mapped[int] = mapped_column(
        BigId, sa.ForeignKey("points_entries.id"), primary_key=True, autoincrement=False
    )
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"))
    order_id: Mapped[int | None] = mapped_column(BigId)
    line_id: Mapped[int | None] = mapped_column(BigId, index=True)
    rule_code: Mapped[str | None] = mapped_column(sa.String(64))
    amount: Mapped[int] = mapped_column(sa.BigInteger)
    remaining: Mapped[int] = mapped_column(sa.BigInteger)
    #: Cumulative reversal target of this lot (refunds), including any part owed or recorded as debt.
    reversed: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: pending | available
    status: Mapped[str] = mapped_column(sa.String(16))
    #: paid | completed | return_window: the business event that makes a pending lot available.
    release_on: Mapped[str] = mapped_column(sa.String(16), default="paid")
    return_window_days: Mapped[int] = mapped_column(sa.Integer, default=0)
    available_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    earned_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        sa.CheckConstraint("remaining >= 0", name="remaining_not_negative"),
        sa.Index("ix_points_lots_member_status", "member_id", "status"),
        sa.Index("ix_points_lots_expires", "expires_at"),
        sa.Index("ix_points_lots_pending", "status", "available_at"),
    )


class PointsLotDraw(Base):
    """How much a debit (redeem, reverse, expire, transfer-out, clawback) took from one lot.

    ``kind='settle'`` draws pay a recorded debt from a lot as it becomes available; they belong to the lot's
    own earn entry and change no balance (the debt and the lot shrink together)."""

    __tablename__ = "points_lot_draws"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    lot_id: Mapped[int] = mapped_column(sa.ForeignKey("points_lots.id"), index=True)
    entry_id: Mapped[int] = mapped_column(sa.ForeignKey("points_entries.id"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    amount: Mapped[int] = mapped_column(sa.BigInteger)


class PointsBalance(Base):
    """Cached balances, changed in the same transaction as the entries. ``available`` below zero is debt."""

    __tablename__ = "points_balances"

    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), primary_key=True, autoincrement=False)
    available: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    pending: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: Clawback policy: points still to be taken back from future earnings.
    owed: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PointsLineAward(Base):
    """One row per order line whose earning was decided: lines are evaluated once, at payment, under the rule
    version active then, so later rule changes never re-award an old order."""

    __tablename__ = "points_line_awards"

    line_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    order_id: Mapped[int] = mapped_column(BigId, index=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"))
    rule_version: Mapped[int] = mapped_column(sa.Integer)
    points: Mapped[int] = mapped_column(sa.BigInteger)
    evaluated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PointsRuleUsage(Base):
    """Points a capped rule awarded to a member in one period (``day:2026-01-31``, ``month:2026-01``…)."""

    __tablename__ = "points_rule_usage"

    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), primary_key=True, autoincrement=False)
    rule_code: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    period: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    points: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class PointsRuleSet(Base):
    """A version of the earning rules (a JSON document). Exactly one version is active at a time."""

    __tablename__ = "points_rule_sets"

    version: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    document: Mapped[dict[str, Any]] = mapped_column(JSONType)
    #: draft | active | retired
    status: Mapped[str] = mapped_column(sa.String(16), default="draft")
    note: Mapped[str] = mapped_column(sa.String(500), default="")
    created_by: Mapped[str] = mapped_column(sa.String(100), default="system")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class PointsRequest(Base):
    """An API call made with an ``Idempotency-Key``: its body hash and the stored response."""

    __tablename__ = "points_requests"

    key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    member_id: Mapped[int] = mapped_column(BigId)
    body_hash: Mapped[str] = mapped_column(sa.String(64))
    response: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# -------------------------------------------------------------------------------------------------------------
# merges: entries, lots and line awards move with the member; balances are recomputed, not moved. An undo also
# settles what happened on the survivor while merged (see tongcrm.points.ledger.split_after_undo).

for _table in ("points_entries", "points_lots"):
    register_reference(MemberReference(_table))
register_reference(MemberReference("points_line_awards", key="line_id"))  # keyed by line, not by an id


async def _after_merge(
    session: AsyncSession, survivor_id: int, other_ids: tuple[int, ...], context: MergeContext
) -> None:
    from tongcrm.points.ledger import recompute_balances, split_after_undo

    if context.undo:
        # on an undo, survivor_id is the member that lives again and other_ids the merge's survivor
        for other in other_ids:
            await split_after_undo(
                session,
                survivor_id,
                other,
                merge_id=context.merge_id,
                now=context.at,
                actor=context.actor.name,
            )
        return
    await recompute_balances(session, (survivor_id, *other_ids), now=context.at)


register_context_listener(_after_merge)
