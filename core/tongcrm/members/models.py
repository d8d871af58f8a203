"""The member row. Profile, tags, consent and identities hang off it (see the identity and consent modules).

A merged member stays as a tombstone (``status='merged'``) whose ``merged_into_id`` leads to the survivor, so
old references still resolve.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, not_null_index, unsampled, utcnow

#: ``members.status`` of a member whose personal data was erased (:mod:`tongcrm.privacy.service`): an anonymous
#: record that keeps its orders and points, and that nothing finds by identity any more
ERASED = "erased"


class Member(Base):
    __tablename__ = "members"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: active | merged | erased
    status: Mapped[str] = mapped_column(sa.String(16), default="active")
    #: Indexed only where set (``ix_members_merged_into_id``, partial): every read of it asks for given ids.
    merged_into_id: Mapped[int | None] = mapped_column(sa.ForeignKey("members.id"))
    #: Optimistic concurrency: every update bumps it; a write based on an older version is refused.
    version: Mapped[int] = mapped_column(sa.Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    # profile -------------------------------------------------------------------------------------------------
    name: Mapped[str | None] = mapped_column(sa.String(100))
    #: male | female | unknown
    gender: Mapped[str | None] = mapped_column(sa.String(8))
    birthday: Mapped[date | None] = mapped_column(sa.Date)
    province: Mapped[str | None] = mapped_column(sa.String(64))
    city: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    #: The profile's mobile number (E.164) as a Vault ciphertext (context ``member.mobile``); it is matched
    #: through the ``mobile`` identity's blind index, never through this column.
    mobile_enc: Mapped[str | None] = mapped_column(sa.Text)
    #: Blind index of the mobile's masked form (``138****8000``), for searches by what platforms show
    #: (:mod:`tongcrm.members.masked`); written with ``mobile_enc``, None when it is None.
    mobile_masked_index: Mapped[str | None] = mapped_column(sa.String(80))
    #: Provenance per profile field, ``{field: {"at": iso time, "verified": bool}}``: merge survivorship
    #: keeps the most recent verified value of each field.
    profile_meta: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, info=unsampled())

    # acquisition and lifecycle -------------------------------------------------------------------------------
    source_channel: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    source_store: Mapped[str | None] = mapped_column(sa.String(64))
    source_campaign: Mapped[str | None] = mapped_column(sa.String(100))
    referrer_id: Mapped[int | None] = mapped_column(sa.ForeignKey("members.id"))
    #: prospect | new | repeat | dormant | churned
    lifecycle_stage: Mapped[str] = mapped_column(sa.String(16), default="prospect")

    __mapper_args__ = {"version_id_col": version}
    #: Two columns most members leave NULL are indexed only where set: every read through them compares them
    #: with given values, which a NULL never matches, so no plan needs their NULLs (issue #22, ingestpg14).
    __table_args__ = (
        not_null_index("ix_members_merged_into_id", "merged_into_id"),
        not_null_index("ix_members_mobile_masked_index", "mobile_masked_index"),
    )


class MemberTag(Base):
    """A tag on a member. Rows (not a column list) so a merge can move them and an undo move exactly them back."""

    __tablename__ = "member_tags"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"))
    tag: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (sa.Index("ix_member_tags_member_tag", "member_id", "tag"), sa.Index(None, "tag"))
