"""Saved segments, their versions and their daily counts.

A segment is a name with a history: every save of a new definition is a new version, and the segment is always
evaluated at its latest one. Definitions refer to other segments by name, so a segment used by others keeps its
name for good (there is no rename).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.consent.models import ConsentEvent
from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, utcnow
from tongcrm.members.models import Member
from tongcrm.tiers.models import MemberTier


class Segment(Base):
    __tablename__ = "segments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    description: Mapped[str] = mapped_column(sa.String(500), default="")
    #: The latest version (the one evaluated).
    version: Mapped[int] = mapped_column(sa.Integer, default=1)
    created_by: Mapped[str] = mapped_column(sa.String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SegmentVersion(Base):
    """One definition of a segment, never changed once written."""

    __tablename__ = "segment_versions"

    segment_id: Mapped[int] = mapped_column(
        sa.ForeignKey("segments.id"), primary_key=True, autoincrement=False
    )
    version: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    definition: Mapped[dict[str, Any]] = mapped_column(JSONType)
    note: Mapped[str] = mapped_column(sa.String(500), default="")
    created_by: Mapped[str] = mapped_column(sa.String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SegmentCount(Base):
    """How many members a segment had on a day (programme time zone), at the version in force then."""

    __tablename__ = "segment_counts"

    segment_id: Mapped[int] = mapped_column(
        sa.ForeignKey("segments.id"), primary_key=True, autoincrement=False
    )
    on: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    version: Mapped[int] = mapped_column(sa.Integer)
    members: Mapped[int] = mapped_column(sa.BigInteger)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime())


#: ``profile.referral_count`` counts the members whose referrer is this one: a correlated count that needs this
#: index to stay a lookup per member instead of a scan of the member table. Partial: most members were referred
#: by nobody, and each of their NULLs was an index entry written with the member for nothing.
sa.Index(
    "ix_members_referrer_id",
    Member.referrer_id,
    sqlite_where=sa.text("referrer_id IS NOT NULL"),
    postgresql_where=sa.text("referrer_id IS NOT NULL"),
)


class MemberActivity(Base):
    """One narrow row per member with the inputs of the common segment conditions (a derived cache of the
    tier, consent and order tables, kept by :mod:`tongcrm.segments.activity`).

    Only what does not move with the clock is stored, so no daily roll is needed: the tier inputs (the effective
    tier is computed at query time, because an override ends without any write), the latest consent statement
    for every signature per purpose, and lifetime counts over the orders that count (paid, not refunded in
    full). A member without a row has none of these: base tier, no statement, no order."""

    __tablename__ = "member_activity"

    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), primary_key=True, autoincrement=False)
    tier_code: Mapped[str | None] = mapped_column(sa.String(32))
    override_code: Mapped[str | None] = mapped_column(sa.String(32))
    override_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: The status (``opt_in``/``opt_out``) of the latest statement for every signature (``*``), per purpose.
    marketing: Mapped[str | None] = mapped_column(sa.String(8))
    service: Mapped[str | None] = mapped_column(sa.String(8))
    orders: Mapped[int] = mapped_column(sa.Integer, default=0)
    spend: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    first_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: When the second-latest counted order was placed: "2 or more orders in a window" needs it inside the window.
    last2_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    store_orders: Mapped[int] = mapped_column(sa.Integer, default=0)

    __table_args__ = (
        #: The rows of a tier without an override, by consent and store buying, with what the usual order
        #: conditions read: "gold, opted in, never in a store, N orders lately" is a range of this index read
        #: alone (PostgreSQL's index-only scan, SQLite's covering index) instead of a scan of every row.
        #: ``last2_at`` before ``orders``: "2 or more orders lately" (``last2_at`` inside the window) is then a seek
        #: to the few rows wanted, where a range on ``orders`` first read every gold, opted-in buyer with 2 orders.
        sa.Index(
            "ix_member_activity_reach",
            "tier_code",
            "marketing",
            "store_orders",
            "override_code",
            "last2_at",
            "orders",
            "last_at",
            "member_id",
        ),
        #: The few rows with an override (the other arm of a tier condition), as a partial index both
        #: databases match to that arm's ``override_code IS NOT NULL``.
        sa.Index(
            "ix_member_activity_override",
            "override_code",
            sqlite_where=sa.text("override_code IS NOT NULL"),
            postgresql_where=sa.text("override_code IS NOT NULL"),
        ),
    )


class MemberChannelActivity(Base):
    """Per member and channel, what :class:`MemberActivity` holds for all orders: counted orders, net spend and
    the times of the latest two (a derived cache of the orders, kept with it by :mod:`tongcrm.segments.activity`).

    "At least one (two) counted orders on a channel within N days" holds exactly when the channel's latest
    (second-latest) counted order was placed within those days, so the common windowed channel condition is a
    probe of this row at query time: nothing stored moves with the clock and no daily roll is needed. A member
    without a row for a channel has no counted order there."""

    __tablename__ = "member_channel_activity"

    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), primary_key=True, autoincrement=False)
    channel: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    orders: Mapped[int] = mapped_column(sa.Integer, default=0)
    spend: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last2_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    #: On SQLite the row lives in its primary key's b-tree, so a segment's probe by (member, channel) is one
    #: seek rather than a seek of the key's index and another of the table.
    __table_args__ = {"sqlite_with_rowid": False}


class ActivityState(Base):
    """The one row saying how far :class:`MemberActivity` has been kept: the newest change it has seen in each
    source. A source with a newer change means the summary is not current (segments then read the orders)."""

    __tablename__ = "member_activity_state"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    refreshed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    orders_seen: Mapped[datetime | None] = mapped_column(UTCDateTime())
    tiers_seen: Mapped[datetime | None] = mapped_column(UTCDateTime())
    consent_seen: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: Merges by id and undos by how many there are: both are dated by the caller (``at``), maybe in the past.
    merges_seen: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    undone_seen: Mapped[int] = mapped_column(sa.Integer, default=0)


#: How :mod:`tongcrm.segments.activity` finds what changed since it last looked, as ranges rather than scans:
#: tier rows by ``updated_at`` and consent statements by ``recorded_at`` (orders have ``ix_orders_updated_at``).
sa.Index("ix_member_tiers_updated_at", MemberTier.updated_at)
sa.Index("ix_consent_events_recorded_at", ConsentEvent.recorded_at)
