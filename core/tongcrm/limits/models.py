"""The table behind :mod:`tongcrm.limits.gate`."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, UTCDateTime


class CallGrant(Base):
    """One call released under a limit key (``top:<app key>``, ``jos:<app key>``): the key's window.

    Rows older than the window are deleted as new ones are written, so the table stays a few rows per key."""

    __tablename__ = "call_grants"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(200))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (sa.Index("ix_call_grants_key_granted", "key", "granted_at"),)
