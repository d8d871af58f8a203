"""The audit log table. Rows are only ever inserted: no code path updates or deletes them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, utcnow


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    #: ``key:<id>`` for an API key, ``system`` for the core itself.
    actor: Mapped[str] = mapped_column(sa.String(64))
    actor_key_id: Mapped[int | None] = mapped_column(BigId)
    role: Mapped[str] = mapped_column(sa.String(16))
    action: Mapped[str] = mapped_column(sa.String(64))
    object_type: Mapped[str] = mapped_column(sa.String(32))
    object_id: Mapped[str] = mapped_column(sa.String(64))
    #: Masked views (personal data never appears in the clear, not even a revealed number).
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    request_id: Mapped[str | None] = mapped_column(sa.String(128))

    __table_args__ = (sa.Index("ix_audit_log_object", "object_type", "object_id"),)
