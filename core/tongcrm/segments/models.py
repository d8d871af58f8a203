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

from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, utcnow
from tongcrm.members.models import Member


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
#: index to stay a lookup per member instead of a scan of the member table.
sa.Index("ix_members_referrer_id", Member.referrer_id)
