from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, UTCDateTime, utcnow


class ConsoleSession(Base):
    """A signed-in console operator: the cookie holds a random token, this row only its SHA-256 (a copy of the
    table is no way in), the API key it was opened with (revoking the key ends the session) and the CSRF token
    every form of the session must carry."""

    __tablename__ = "console_sessions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    key_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
