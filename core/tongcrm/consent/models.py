"""Consent events. Append-only per member: the latest event for a purpose and signature is the state."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, UTCDateTime, utcnow


class ConsentEvent(Base):
    __tablename__ = "consent_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"))
    #: service | marketing
    purpose: Mapped[str] = mapped_column(sa.String(16))
    #: An SMS sender signature (签名), or ``*`` for every signature.
    signature: Mapped[str] = mapped_column(sa.String(64), default="*")
    #: opt_in | opt_out
    status: Mapped[str] = mapped_column(sa.String(8))
    #: Where the statement came from (``sms_reply``, ``pos``, ``admin``, ``merge``…) and its proof.
    source: Mapped[str] = mapped_column(sa.String(64))
    proof: Mapped[str] = mapped_column(sa.Text, default="")
    actor: Mapped[str] = mapped_column(sa.String(64), default="system")
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (sa.Index("ix_consent_events_member_purpose", "member_id", "purpose"),)
