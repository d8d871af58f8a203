"""The member row. Profile, tags, consent and identities hang off it (see the identity and consent modules).

A merged member stays as a tombstone (``status='merged'``) whose ``merged_into_id`` leads to the survivor, so
old references still resolve.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, UTCDateTime, utcnow


class Member(Base):
    __tablename__ = "members"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: active | merged
    status: Mapped[str] = mapped_column(sa.String(16), default="active")
    merged_into_id: Mapped[int | None] = mapped_column(sa.ForeignKey("members.id"), index=True)
    #: Optimistic concurrency: every update bumps it; a write based on an older version is refused.
    version: Mapped[int] = mapped_column(sa.Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __mapper_args__ = {"version_id_col": version}
