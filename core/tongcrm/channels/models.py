from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from tongcrm.db.base import Base, BigId, JSONType, UTCDateTime, utcnow


class ChannelAccount(Base):
    """A shop or store. Secret settings live only in ``secrets`` (encrypted); ``settings`` holds the rest."""

    __tablename__ = "channel_accounts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    #: The secret settings as one ciphertext of a JSON object (see :class:`tongcrm.crypto.Vault`).
    secrets: Mapped[str | None] = mapped_column(sa.Text)
    #: active | needs_reauth | disabled
    status: Mapped[str] = mapped_column(sa.String(16), default="active")
    status_detail: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
