"""Every tag put on or taken off a member, by whom: an operator (``actor``) or a tag rule (``rule_id``)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, UTCDateTime
from tongcrm.members.references import MemberReference, register_reference


class TagHistory(Base):
    __tablename__ = "member_tag_history"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"))
    tag: Mapped[str] = mapped_column(sa.String(64))
    #: tagged | untagged
    action: Mapped[str] = mapped_column(sa.String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: The tag rule that did it (None: a person or system named in ``actor``).
    rule_id: Mapped[int | None] = mapped_column(BigId)
    actor: Mapped[str | None] = mapped_column(sa.String(100))

    __table_args__ = (sa.Index("ix_member_tag_history_member_id_id", "member_id", "id"),)


# the history follows the member on a merge (and back on undo)
register_reference(MemberReference("member_tag_history"))
