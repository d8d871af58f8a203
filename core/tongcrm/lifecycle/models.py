"""The lifecycle policy (thresholds, versioned) and the history of every stage change."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, UTCDateTime, utcnow
from tongcrm.members.references import MemberReference, register_reference


class LifecyclePolicy(Base):
    """One version of the thresholds; the highest version is in force (none: the defaults)."""

    __tablename__ = "lifecycle_policies"

    version: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    new_days: Mapped[int] = mapped_column(sa.Integer)
    dormant_days: Mapped[int] = mapped_column(sa.Integer)
    churned_days: Mapped[int] = mapped_column(sa.Integer)
    created_by: Mapped[str] = mapped_column(sa.String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LifecycleChange(Base):
    """A member moved from one stage to another, at ``at``, under a policy version (0: the defaults)."""

    __tablename__ = "lifecycle_history"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"))
    from_stage: Mapped[str] = mapped_column(sa.String(16))
    to_stage: Mapped[str] = mapped_column(sa.String(16))
    policy_version: Mapped[int] = mapped_column(sa.Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (sa.Index("ix_lifecycle_history_member_id_id", "member_id", "id"),)


# history follows the member on a merge (and back on undo); the survivor's stage is re-derived by the next pass
register_reference(MemberReference("lifecycle_history"))
