from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, UTCDateTime, utcnow


class ApiKey(Base):
    """An API key. Only a hash of the secret part is stored; the prefix finds the row without a scan."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    prefix: Mapped[str] = mapped_column(sa.String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(sa.String(64))
    role: Mapped[str] = mapped_column(sa.String(16))
    store_code: Mapped[str | None] = mapped_column(sa.String(64))
    label: Mapped[str] = mapped_column(sa.String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ApiKeyRevocations(Base):
    """One row (id 1): how many times a key was revoked, ever.

    Every process caches good keys for a few seconds rather than reading ``api_keys`` on every request; each
    request instead reads this one integer (a point read by primary key) and drops the cache when it moved, so
    a key revoked through any process is refused by every process from the next request on. Missing until the
    first revocation (reads then see 0).
    """

    __tablename__ = "api_key_revocations"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(sa.BigInteger, default=0)
