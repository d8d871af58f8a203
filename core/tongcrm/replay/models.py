"""The callback nonces (or signatures) already received, kept as long as a replay of them could pass."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, UTCDateTime


class SeenCallback(Base):
    """One signed platform call already received.

    ``scope`` is whatever the calling plugin names its verifier by (e.g. ``taobao:flagship``), so two accounts
    never share nonces; ``nonce`` is a SHA-256 of the call's nonce or signature, so the table holds no request
    data. A row outlives the platform's timestamp window (``expires_at``): after that the timestamp check
    refuses the call on its own, and the row is purged.
    """

    __tablename__ = "callback_nonces"

    scope: Mapped[str] = mapped_column(sa.String(120), primary_key=True)
    nonce: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
