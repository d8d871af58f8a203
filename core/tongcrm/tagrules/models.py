"""Tag rules and the members each rule tagged (so a rule removes only the tags it put on)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, UTCDateTime, utcnow
from tongcrm.members.references import MemberReference, register_reference


class TagRule(Base):
    """Members of ``segment_id`` (its latest version) carry ``tag`` while they are in it."""

    __tablename__ = "tag_rules"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tag: Mapped[str] = mapped_column(sa.String(64), unique=True)
    segment_id: Mapped[int] = mapped_column(sa.ForeignKey("segments.id"))
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    created_by: Mapped[str] = mapped_column(sa.String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class TagRuleMember(Base):
    """A member the rule tagged; the rule untags only these (a tag the member already had stays manual)."""

    __tablename__ = "tag_rule_members"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    rule_id: Mapped[int] = mapped_column(sa.ForeignKey("tag_rules.id"))
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    tagged_at: Mapped[datetime] = mapped_column(UTCDateTime())

    # not unique: a merge moves the absorbed member's rows to the survivor, which may hold one for the rule
    __table_args__ = (sa.Index("ix_tag_rule_members_rule_id_member_id", "rule_id", "member_id"),)


register_reference(MemberReference("tag_rule_members"))
